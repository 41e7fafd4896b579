import json

import pytest
import torch

from encoderguard.errors import CheckpointError
from encoderguard.models import (
    ModelCard,
    create_encoder,
    load_checkpoint,
    load_encoder,
    read_card,
    save_checkpoint,
    watermark_head,
)


def _card(enc):
    return ModelCard(arch=enc.arch, arch_kwargs=enc.arch_kwargs, input_shape=enc.input_shape,
                     embed_dim=enc.embed_dim, data={"dataset": "digits", "split_seed": 0, "train_size": 10})


def _save(tmp_path, **kw):
    torch.manual_seed(0)
    enc = create_encoder("convnet", input_shape=(1, 8, 8), embed_dim=16, width=4, depth=2)
    card = save_checkpoint(tmp_path / "ck", encoder=enc, card=_card(enc), **kw)
    return enc, card


def test_roundtrip_same_outputs_and_card(tmp_path):
    enc, card = _save(tmp_path, watermark_head=watermark_head(16, hidden_dim=8))
    # the card must describe the stored head for it to be loaded
    raw = json.loads((tmp_path / "ck" / "card.json").read_text())
    raw["heads"] = {"watermark_head": {"hidden_dim": 8}}
    (tmp_path / "ck" / "card.json").write_text(json.dumps(raw))
    ck = load_checkpoint(tmp_path / "ck")
    x = torch.rand(3, 1, 8, 8)
    enc.eval()
    assert torch.allclose(ck.encoder(x), enc(x))
    assert ck.watermark_head is not None and ck.projector is None
    assert ck.card.software["torch"] == torch.__version__ and len(card.weights_sha256) == 64
    assert read_card(tmp_path / "ck").embed_dim == 16


def test_refuses_pickle_files(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"\x80\x04not really")
    with pytest.raises(CheckpointError, match="pickle"):
        load_encoder(path)


def test_missing_dir_and_missing_card(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_encoder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no card.json"):
        load_encoder(tmp_path / "empty")


def test_weights_that_do_not_match_the_card(tmp_path):
    _save(tmp_path)
    other = create_encoder("convnet", input_shape=(1, 8, 8), embed_dim=16, width=8, depth=2)
    from safetensors.torch import save_file

    save_file({f"encoder.{k}": v.contiguous() for k, v in other.state_dict().items()},
              str(tmp_path / "ck" / "model.safetensors"))
    with pytest.raises(CheckpointError, match="SHA-256 differs"):
        load_encoder(tmp_path / "ck")
    raw = json.loads((tmp_path / "ck" / "card.json").read_text())
    raw["weights_sha256"] = ""
    (tmp_path / "ck" / "card.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="do not match the card's architecture"):
        load_encoder(tmp_path / "ck")


def test_malformed_cards(tmp_path):
    _save(tmp_path)
    card_path = tmp_path / "ck" / "card.json"
    card_path.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_encoder(tmp_path / "ck")
    card_path.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="not an encoderguard model card"):
        load_encoder(tmp_path / "ck")
    card_path.write_text(json.dumps({"format": "encoderguard-card", "format_version": 1, "arch": "convnet"}))
    with pytest.raises(CheckpointError, match="malformed card"):
        load_encoder(tmp_path / "ck")


def test_garbage_safetensors(tmp_path):
    _save(tmp_path)
    (tmp_path / "ck" / "model.safetensors").write_bytes(b"\x00" * 64)
    raw = json.loads((tmp_path / "ck" / "card.json").read_text())
    raw["weights_sha256"] = ""
    (tmp_path / "ck" / "card.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_encoder(tmp_path / "ck")


def test_unknown_arch_in_card(tmp_path):
    _save(tmp_path)
    raw = json.loads((tmp_path / "ck" / "card.json").read_text())
    raw["arch"] = "vit-huge"
    (tmp_path / "ck" / "card.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="unknown architecture 'vit-huge'"):
        load_encoder(tmp_path / "ck")
