import re

import pytest
import torch

from encoderguard.models import ENCODERS, MLPEncoder, ModelCard, create_encoder, load_checkpoint, save_checkpoint


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32), (2, 9, 13)])
def test_shapes(shape):
    enc = create_encoder("mlp", input_shape=shape, embed_dim=24, hidden=16, depth=3).eval()
    assert isinstance(enc, MLPEncoder)
    assert enc(torch.rand(5, *shape)).shape == (5, 24)
    assert enc.input_shape == shape and enc.embed_dim == 24


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_depth_and_hidden_shape_the_network(depth):
    enc = MLPEncoder(input_shape=(1, 8, 8), embed_dim=10, hidden=12, depth=depth)
    linears = [m for m in enc.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == depth + 1
    assert linears[0].in_features == 64 and linears[-1].out_features == 10
    assert all(m.out_features == 12 for m in linears[:-1])
    assert enc.arch == "mlp" and enc.arch_kwargs == {"hidden": 12, "depth": depth}


def test_defaults():
    enc = MLPEncoder(input_shape=(1, 8, 8))
    assert enc.embed_dim == 128 and enc.arch_kwargs == {"hidden": 256, "depth": 2}


def test_output_of_an_image_does_not_depend_on_its_batch_in_training_mode():
    # LayerNorm, not BatchNorm: a reference encoder must embed an image the same way whatever it is batched with
    torch.manual_seed(0)
    enc = MLPEncoder(input_shape=(1, 8, 8), embed_dim=8, hidden=16).train()
    x = torch.rand(6, 1, 8, 8)
    assert torch.allclose(enc(x)[:2], enc(x[:2]), atol=1e-6)
    assert enc(x[:1]).shape == (1, 8)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"hidden": 0}, "hidden must be >= 1, got 0"),
    ({"depth": 0}, "depth must be >= 1, got 0"),
    ({"depth": -2}, "depth must be >= 1, got -2"),
    ({"embed_dim": 0}, "embed_dim must be >= 1, got 0"),
    ({"width": 4}, "bad settings for architecture 'mlp'"),
])
def test_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        create_encoder("mlp", input_shape=(1, 8, 8), **kwargs)


def test_registered_and_listed():
    assert ENCODERS["mlp"] is MLPEncoder
    with pytest.raises(ValueError, match="mlp"):
        create_encoder("transformer", input_shape=(1, 8, 8))


def test_checkpoint_roundtrip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    enc = create_encoder("mlp", input_shape=(1, 8, 8), embed_dim=16, hidden=20, depth=3)
    with torch.no_grad():  # move every parameter, LayerNorm's included, off its default initial value
        for param in enc.parameters():
            param.add_(0.1 * torch.randn_like(param))
    card = ModelCard(arch=enc.arch, arch_kwargs=enc.arch_kwargs, input_shape=enc.input_shape,
                     embed_dim=enc.embed_dim, data={"dataset": "digits", "split_seed": 0, "train_size": 10})
    save_checkpoint(tmp_path / "ck", encoder=enc, card=card)
    ck = load_checkpoint(tmp_path / "ck")
    assert isinstance(ck.encoder, MLPEncoder) and not ck.encoder.training
    assert ck.card.arch == "mlp" and ck.card.arch_kwargs == {"hidden": 20, "depth": 3} and ck.card.embed_dim == 16
    x = torch.rand(7, 1, 8, 8)
    enc.eval()
    assert torch.equal(ck.encoder(x), enc(x))
    loaded = ck.encoder.state_dict()
    for name, value in enc.state_dict().items():
        assert torch.equal(loaded[name], value), name
