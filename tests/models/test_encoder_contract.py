"""The Encoder contract is checked when a model is saved: mistakes that used to surface only on reload fail here."""

import json

import pytest
import torch
from torch import nn

from encoderguard.errors import CheckpointError
from encoderguard.models import (
    ENCODERS,
    ConvNet,
    Encoder,
    ModelCard,
    check_encoder,
    create_encoder,
    load_encoder,
    save_checkpoint,
)


class TinyNet(Encoder):
    """Flatten -> Linear(hidden) -> ReLU -> Linear(embed_dim); ``record`` decides what arch_kwargs holds."""

    arch = "tinynet"
    record = "right"

    def __init__(self, *, input_shape, embed_dim=8, hidden=16):
        kwargs = {"right": {"hidden": hidden}, "forgets-hidden": {},
                  "repeats-embed-dim": {"hidden": hidden, "embed_dim": embed_dim},
                  "not-json": {"hidden": hidden, "dtype": torch.float32}}[self.record]
        super().__init__(input_shape=input_shape, embed_dim=embed_dim, arch_kwargs=kwargs)
        c, h, w = self.input_shape
        self.net = nn.Sequential(nn.Flatten(1), nn.Linear(c * h * w, hidden), nn.ReLU(), nn.Linear(hidden, embed_dim))

    def forward(self, x):
        return self.net(x)


def _tiny(monkeypatch, record="right", **kwargs):
    cls = type(f"TinyNet_{record.replace('-', '_')}", (TinyNet,), {"record": record})
    monkeypatch.setitem(ENCODERS, "tinynet", cls)
    torch.manual_seed(0)
    return cls(input_shape=(1, 8, 8), embed_dim=8, hidden=32, **kwargs)


def _card(enc):
    return ModelCard(arch=enc.arch, arch_kwargs=dict(enc.arch_kwargs), input_shape=enc.input_shape,
                     embed_dim=enc.embed_dim)


def _save(tmp_path, enc):
    return save_checkpoint(tmp_path / "ck", encoder=enc, card=_card(enc))


@pytest.mark.parametrize("arch, kwargs", [("convnet", {"width": 4, "depth": 2}), ("mlp", {"hidden": 8}),
                                          ("resnet18", {"width": 4})])
def test_built_in_encoders_meet_the_contract(arch, kwargs):
    check_encoder(create_encoder(arch, input_shape=(1, 8, 8), embed_dim=16, **kwargs))


def test_a_correct_subclass_saves_and_reloads(tmp_path, monkeypatch):
    enc = _tiny(monkeypatch)
    _save(tmp_path, enc)
    x = torch.rand(3, 1, 8, 8)
    assert torch.allclose(load_encoder(tmp_path / "ck")(x), enc.eval()(x))


def test_arch_kwargs_that_forget_a_constructor_argument_fail_at_save(tmp_path, monkeypatch):
    enc = _tiny(monkeypatch, "forgets-hidden")
    with pytest.raises(ValueError, match=r"net\.1\.weight of shape \[16, 64\], but this encoder's is \[32, 64\]"):
        _save(tmp_path, enc)
    assert not (tmp_path / "ck").exists()  # refused before anything was written


def test_arch_kwargs_that_repeat_embed_dim_fail_at_save(tmp_path, monkeypatch):
    enc = _tiny(monkeypatch, "repeats-embed-dim")
    with pytest.raises(ValueError, match=r"arch_kwargs must not hold \['embed_dim'\]"):
        _save(tmp_path, enc)
    assert not (tmp_path / "ck").exists()


def test_a_card_that_repeats_embed_dim_is_a_checkpoint_error_not_a_type_error(tmp_path, monkeypatch):
    # A checkpoint written before the save-time check: the reload must fail with a clear one-line error.
    enc = _tiny(monkeypatch)
    _save(tmp_path, enc)
    card_path = tmp_path / "ck" / "card.json"
    raw = json.loads(card_path.read_text())
    raw["arch_kwargs"]["embed_dim"] = 8
    card_path.write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=r"must not repeat \['embed_dim'\]"):
        load_encoder(tmp_path / "ck")


def test_arch_kwargs_that_are_not_json_fail_at_save(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"arch_kwargs\['dtype'\] = torch.float32 cannot be written"):
        _save(tmp_path, _tiny(monkeypatch, "not-json"))


def test_an_unregistered_class_fails_at_save_listing_the_choices(tmp_path):
    enc = TinyNet(input_shape=(1, 8, 8))  # "tinynet" is not in ENCODERS here
    with pytest.raises(ValueError, match=r"TinyNet.arch = 'tinynet' is not registered.*built in: convnet, resnet18, "
                                         r"mlp, text-ngram, text-transformer; installed plugins "
                                         r"\(entry point group encoderguard.encoders\)"):
        _save(tmp_path, enc)


def test_a_class_without_its_own_arch_name_fails_at_save(tmp_path):
    class Nameless(Encoder):
        def __init__(self, *, input_shape, embed_dim=4):
            super().__init__(input_shape=input_shape, embed_dim=embed_dim, arch_kwargs={})
            self.lin = nn.Linear(64, embed_dim)

        def forward(self, x):
            return self.lin(x.flatten(1))

    with pytest.raises(ValueError, match="Nameless has no architecture name: set the class attribute arch"):
        _save(tmp_path, Nameless(input_shape=(1, 8, 8)))


def test_a_subclass_under_a_name_registered_for_another_class_fails_at_save(tmp_path):
    class WideConvNet(ConvNet):  # inherits arch = "convnet": a reload would build a plain ConvNet
        pass

    with pytest.raises(ValueError, match=r"WideConvNet.arch = 'convnet' but that name is registered for "
                                         r"encoderguard.models.convnet.ConvNet"):
        _save(tmp_path, WideConvNet(input_shape=(1, 8, 8), embed_dim=8, width=4, depth=2))


@pytest.mark.parametrize("output, message", [
    (lambda z: {"pooled": z}, r"forward returned a dict with keys \['pooled'\], not a tensor"),
    (lambda z: (z, z), "forward returned a tuple, not a tensor"),
    (lambda z: z[:, :4], r"forward returned shape \[2, 4\] for 2 images of shape \[1, 8, 8\], expected \[2, 8\]"),
    (lambda z: z * float("nan"), "forward returned NaN or infinite values"),
    (lambda z: (z > 0).long(), "forward returned dtype torch.int64, expected a float tensor"),
])
def test_forward_must_return_a_finite_n_by_d_float_tensor(tmp_path, monkeypatch, output, message):
    enc = _tiny(monkeypatch)
    monkeypatch.setattr(enc, "forward", lambda x: output(enc.net(x)))
    with pytest.raises(ValueError, match=message):
        _save(tmp_path, enc)


def test_the_check_leaves_the_random_stream_and_the_mode_alone(monkeypatch):
    enc = _tiny(monkeypatch).train()
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    check_encoder(enc)
    assert torch.equal(torch.rand(4), expected)
    assert enc.training
    check_encoder(enc.eval())
    assert not enc.training


def test_only_encoders_can_be_saved(tmp_path):
    with pytest.raises(ValueError, match="only an encoderguard.models.Encoder can be saved as a checkpoint, got "
                                         "Linear"):
        check_encoder(nn.Linear(2, 2))
