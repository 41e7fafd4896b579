"""ONNX models (``onnx:PATH``): exported here from a tiny torch ConvNet, they must give the torch model's vectors."""

import argparse
import json
import sys
import warnings

import pytest
import torch
from torch import nn

from encoderguard.api import LocalAPI
from encoderguard.cli.main import main
from encoderguard.errors import CheckpointError
from encoderguard.models import ModelCard, create_encoder, load_any, save_checkpoint
from encoderguard.optional import MissingDependencyError

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def _export(module: nn.Module, path, *, batch: int = 2, dynamic: dict | None = None, shape=(1, 8, 8)):
    module.eval()
    with warnings.catch_warnings():  # the TorchScript exporter announces its deprecation; it needs no onnxscript
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.rand(batch, *shape),), str(path), dynamo=False, input_names=["images"],
                          output_names=["embedding"], dynamic_axes=dynamic)
    return path


BATCH_AXIS = {"images": {0: "batch"}, "embedding": {0: "batch"}}


@pytest.fixture
def convnet():
    torch.manual_seed(0)
    return create_encoder("convnet", input_shape=(1, 8, 8), embed_dim=16, width=4, depth=2).eval()


@pytest.fixture
def onnx_path(tmp_path, convnet):
    return _export(convnet, tmp_path / "convnet.onnx", dynamic=BATCH_AXIS)


def _one_line_cli_error(capsys, argv, *fragments):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 2, err
    assert out == "" and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err


def test_same_vectors_as_the_torch_model(onnx_path, convnet):
    model = load_any(f"onnx:{onnx_path}")
    assert model.input_shape == (1, 8, 8) and model.embed_dim == 16 and model.card is None
    x = torch.rand(300, 1, 8, 8)
    with torch.no_grad():
        expected = convnet(x)
    got = model(x)
    assert got.dtype == torch.float32 and got.shape == (300, 16)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_same_vectors_through_the_local_api(onnx_path, convnet):
    api = LocalAPI(load_any(f"onnx:{onnx_path}"), batch_size=64)
    x = torch.rand(150, 1, 8, 8)
    with torch.no_grad():
        expected = convnet(x)
    torch.testing.assert_close(api.embed(x), expected, atol=1e-5, rtol=0)
    assert api.dim == 16 and api.input_shape == (1, 8, 8) and api.queries_used == 150


def test_same_vectors_through_the_http_server(tmp_path, onnx_path, convnet):
    pytest.importorskip("fastapi")
    from encoderguard.api import HTTPEmbeddingAPI, KeyStore
    from encoderguard.api.server import background_server, create_app

    store = KeyStore(tmp_path / "keys.json")
    _, key = store.add(name="user", quota=1000)
    app = create_app(load_any(f"onnx:{onnx_path}"), keys_path=store.path, ledger_path=tmp_path / "ledger.sqlite")
    x = torch.rand(40, 1, 8, 8)
    with torch.no_grad():
        expected = convnet(x)
    with background_server(app) as url, HTTPEmbeddingAPI(url, key) as api:
        got = api.embed(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_a_fixed_batch_size_runs_in_padded_chunks(tmp_path, convnet):
    model = load_any(f"onnx:{_export(convnet, tmp_path / 'fixed.onnx', batch=4)}")
    x = torch.rand(10, 1, 8, 8)  # 4 + 4 + 2 (padded to 4)
    with torch.no_grad():
        expected = convnet(x)
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=0)


def test_dynamic_image_dimensions_need_the_input_shape(tmp_path, convnet):
    path = _export(convnet, tmp_path / "dyn.onnx",
                   dynamic={"images": {0: "batch", 2: "height", 3: "width"}, "embedding": {0: "batch"}})
    with pytest.raises(CheckpointError, match=r"has dynamic dimensions \['batch', 1, 'height', 'width'\]; give the "
                                              r"image shape with --input-shape C,H,W"):
        load_any(f"onnx:{path}")
    model = load_any(f"onnx:{path}", input_shape=(1, 8, 8))
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), convnet(x), atol=1e-5, rtol=0)
    with pytest.raises(CheckpointError, match=r"the input shape given is \[3, 8, 8\] \(dimension 1 differs\)"):
        load_any(f"onnx:{path}", input_shape=(3, 8, 8))


class _Scaled(nn.Module):
    """A linear encoder whose output is multiplied by ``scale`` (NaN, inf...) or reshaped to rank 3."""

    def __init__(self, scale: float = 1.0, rank3: bool = False) -> None:
        super().__init__()
        self.lin = nn.Linear(64, 8)
        self.scale, self.rank3 = scale, rank3

    def forward(self, x):
        z = self.lin(x.flatten(1)) * self.scale
        return z.reshape(-1, 2, 4) if self.rank3 else z


class _LogOfMean(nn.Module):
    """Finite on the trial batch, -inf on black images."""

    def forward(self, x):
        return torch.log(x.flatten(1)[:, :8])


@pytest.mark.parametrize("module, message", [
    (_Scaled(float("nan")), "output 'embedding' holds NaN or infinite values"),
    (_Scaled(rank3=True), r"output 'embedding' has shape \[2, 2, 4\] for 2 images; an encoder returns \[N, D\]"),
])
def test_bad_outputs_are_refused_when_the_model_is_opened(tmp_path, module, message):
    path = _export(module, tmp_path / "bad.onnx", dynamic=BATCH_AXIS)
    with pytest.raises(CheckpointError, match=message):
        load_any(f"onnx:{path}")


def test_non_finite_answers_are_errors_at_run_time(tmp_path):
    model = load_any(f"onnx:{_export(_LogOfMean(), tmp_path / 'log.onnx', dynamic=BATCH_AXIS)}")
    assert torch.isfinite(model(torch.rand(3, 1, 8, 8) + 0.1)).all()
    with pytest.raises(CheckpointError, match="holds NaN or infinite values"):
        model(torch.zeros(3, 1, 8, 8))
    with pytest.raises(CheckpointError, match=r"takes images \[1, 8, 8\], got a batch of shape \[3, 1, 4, 4\]"):
        model(torch.rand(3, 1, 4, 4))


def test_unusable_files(tmp_path):
    with pytest.raises(CheckpointError, match="ONNX model not found"):
        load_any(f"onnx:{tmp_path / 'nope.onnx'}")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07not a model")
    with pytest.raises(CheckpointError, match="not a loadable ONNX model"):
        load_any(f"onnx:{garbage}")
    with pytest.raises(CheckpointError, match=f"is an ONNX file: pass it as onnx:{garbage}"):
        load_any(garbage)


def test_missing_onnxruntime_names_the_extra(onnx_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'encoderguard\[onnx\]'"):
        load_any(f"onnx:{onnx_path}")
    _one_line_cli_error(capsys, ["probe", "--encoder", f"onnx:{onnx_path}", "--data", "digits"],
                        "encoderguard probe: error: onnxruntime is needed", "encoderguard[onnx]")


def test_probe_an_onnx_model(onnx_path, capsys):
    code = main(["probe", "--encoder", f"onnx:{onnx_path}", "--data", "digits", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out)
    assert 0 <= result["linear_acc"] <= 1 and result["random_init_linear_acc"] is None
    assert main(["probe", "--encoder", f"onnx:{onnx_path}", "--data", "digits"]) == 0
    assert "no random-init baseline" in capsys.readouterr().out


def test_cli_errors_for_onnx_models(tmp_path, convnet, onnx_path, capsys):
    dynamic = _export(convnet, tmp_path / "dyn.onnx",
                      dynamic={"images": {0: "batch", 2: "h", 3: "w"}, "embedding": {0: "batch"}})
    _one_line_cli_error(capsys, ["probe", "--encoder", f"onnx:{dynamic}", "--data", "digits"],
                        "has dynamic dimensions", "--input-shape C,H,W")
    _one_line_cli_error(capsys, ["probe", "--encoder", f"onnx:{onnx_path}"], "no card naming its dataset; pass --data")
    _one_line_cli_error(capsys, ["probe", "--encoder", f"onnx:{dynamic}", "--input-shape", "1,8"],
                        "argument --input-shape", "three positive integers")
    assert main(["probe", "--encoder", f"onnx:{dynamic}", "--input-shape", "1,8,8", "--data", "digits"]) == 0


def test_verify_takes_an_onnx_suspect_with_the_owners_image_shape(tmp_path, convnet):
    from encoderguard.cli.verify_cmd import suspect_api

    save_checkpoint(tmp_path / "owner", encoder=convnet,
                    card=ModelCard(arch="convnet", arch_kwargs=convnet.arch_kwargs, input_shape=(1, 8, 8),
                                   embed_dim=16))
    dynamic = _export(convnet, tmp_path / "dyn.onnx",
                      dynamic={"images": {0: "batch", 2: "h", 3: "w"}, "embedding": {0: "batch"}})
    args = argparse.Namespace(owner=str(tmp_path / "owner"), suspect=f"onnx:{dynamic}", suspect_api=None,
                              suspect_key=None)
    api = suspect_api(args)
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(api.embed(x), convnet(x), atol=1e-5, rtol=0)


def test_steal_an_onnx_victim(tmp_path, onnx_path, capsys):
    code = main(["steal", "--victim", f"onnx:{onnx_path}", "--query-data", "digits", "--budget", "64", "--epochs",
                 "1", "--width", "4", "--depth", "2", "--eval-size", "100", "--no-progress", "--out",
                 str(tmp_path / "copy"), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out)
    assert result["queries_paid"] == 64 and result["fidelity_cosine"] is not None
    card = json.loads((tmp_path / "copy" / "card.json").read_text())
    assert card["training"]["victim"].startswith("onnx:") and len(card["training"]["victim"]) == 5 + 64


def test_register_an_onnx_reference(tmp_path, convnet, capsys):
    from encoderguard.verify.references import ReferenceSet

    dynamic = _export(convnet, tmp_path / "dyn.onnx",
                      dynamic={"images": {0: "batch", 2: "h", 3: "w"}, "embedding": {0: "batch"}})
    refs = tmp_path / "refs"
    _one_line_cli_error(capsys, ["references", "add", "--refs", refs, "--name", "public", "--checkpoint",
                                 f"onnx:{dynamic}"], "--input-shape C,H,W")
    assert main(["references", "add", "--refs", str(refs), "--name", "public", "--checkpoint", f"onnx:{dynamic}",
                 "--input-shape", "1,8,8", "--json"]) == 0
    added = json.loads(capsys.readouterr().out)["added"]
    assert added["kind"] == "onnx" and added["input_shape"] == [1, 8, 8] and added["embed_dim"] == 16
    (reference,) = ReferenceSet.load(refs).references()
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(reference.api.embed(x), convnet(x), atol=1e-5, rtol=0)
