"""The serving-time watermark: its key file, its errors at start-up, and the shift it applies to answers."""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.conftest import tiny_encoder

from encoderguard.api import LocalAPI
from encoderguard.cli.main import main
from encoderguard.data import SplitSpec
from encoderguard.defences import OutputWatermark, OutputWatermarkKey, parse_defences, prepare_chain
from encoderguard.defences.output_watermark import watermark_pattern
from encoderguard.errors import CheckpointError, EncoderGuardError

SECRET = bytes(range(32))
DATA = SplitSpec("digits", "test").to_dict()


def _key(**kw: object) -> OutputWatermarkKey:
    settings: dict = {"dim": 16, "strength": 0.1, "data": DATA, "probes": 100, "align": 100, **kw}
    return OutputWatermarkKey(SECRET, **settings)


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], *needles: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


# -- the key file -------------------------------------------------------------------------------------------------
def test_keygen_writes_a_0600_json_key_and_refuses_to_overwrite(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "wm.key"
    assert main(["watermark", "keygen", "--out", str(out), "--dim", "16", "--data", "digits:test", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    body = json.loads(out.read_text())  # JSON, not pickle
    assert body["format"] == "encoderguard-output-watermark-key" and len(bytes.fromhex(body["secret"])) == 32
    assert body["dim"] == 16 and body["data"]["dataset"] == "digits" and body["data"]["split"] == "test"
    assert body["probes"] == 1000 and body["version"] == 1
    assert printed["fingerprint"] == body["fingerprint"] and body["secret"] not in json.dumps(printed)
    before = out.read_bytes()
    _one_line_error(capsys, ["watermark", "keygen", "--out", str(out)], "already exists", "refusing")
    assert out.read_bytes() == before
    with pytest.raises(FileExistsError):
        OutputWatermarkKey.generate(dim=16).save(out)
    assert out.read_bytes() == before
    loaded = OutputWatermarkKey.load(out)
    assert loaded.secret.hex() == body["secret"] and loaded.dim == 16


def test_keygen_with_an_encoder_stores_its_clean_answers(tiny_checkpoint: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "wm.key"
    assert main(["watermark", "keygen", "--out", str(out), "--encoder", str(tiny_checkpoint), "--probes", "50",
                 "--align-probes", "60", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["calibrated"] and printed["dim"] == 16 and printed["data"]["split"] == "test"
    key = OutputWatermarkKey.load(out)
    assert key.owner_probe is not None and key.owner_probe.shape == (50, 16)
    assert key.owner_align is not None and key.owner_align.shape == (60, 16)
    assert key.center is not None and np.allclose(key.center, key.owner_align.mean(0), atol=1e-5)
    assert key.spread is not None and key.spread > 0


@pytest.mark.parametrize("content, needle", [
    (None, "not found"),
    ("{not json", "not readable JSON"),
    ('{"format": "something-else"}', "not an encoderguard output-watermark key"),
    ('{"format": "encoderguard-output-watermark-key", "secret": "abcd", "strength": 0.1, "probes": 10, '
     '"align": 10}', "corrupt"),
])
def test_a_missing_or_corrupt_key_fails_at_construction_in_one_line(tmp_path: Path, content: str | None,
                                                                     needle: str,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.key"
    if content is not None:
        path.write_text(content)
    with pytest.raises(CheckpointError, match=needle):
        OutputWatermark(key=path)
    with pytest.raises(EncoderGuardError, match=needle):  # the registry (serve --defence) builds it at start-up
        parse_defences([f"output-watermark:key={path}"])
    _one_line_error(capsys, ["verify", "output-watermark", "--watermark-key", str(path), "--suspect", str(tmp_path)],
                    needle)


def test_an_edited_key_is_refused(tmp_path: Path) -> None:
    path = _key().save(tmp_path / "k.json")
    body = json.loads(path.read_text())
    body["secret"] = "00" * 32
    path.write_text(json.dumps(body))
    with pytest.raises(CheckpointError, match="fingerprint"):
        OutputWatermarkKey.load(path)


def test_a_wrong_dimension_key_fails_when_the_chain_is_prepared(tmp_path: Path) -> None:
    chain = parse_defences([f"output-watermark:key={_key(dim=32).save(tmp_path / 'k32.json')}"])
    with pytest.raises(ValueError, match="32-d answers but the encoder answers 16-d"):
        prepare_chain(chain, dim=16)
    prepare_chain(chain, dim=32)


def test_serve_refuses_a_corrupt_or_wrong_dimension_key_at_start_up(tiny_checkpoint: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from encoderguard.api.keys import KeyStore

    keys = tmp_path / "keys.json"
    KeyStore(keys).add(name="alice")
    corrupt = tmp_path / "corrupt.key"
    corrupt.write_text("{")
    base = ["serve", "--encoder", str(tiny_checkpoint), "--keys", str(keys), "--ledger", str(tmp_path / "ledger"),
            "--port", "0"]
    _one_line_error(capsys, [*base, "--defence", f"output-watermark:key={corrupt}"], "not readable JSON")
    _one_line_error(capsys, [*base, "--watermark-key", str(corrupt)], "not readable JSON")
    _one_line_error(capsys, [*base, "--watermark-key", str(tmp_path / "missing.key")], "missing.key")
    wrong = _key(dim=32).save(tmp_path / "k32.json")
    # In a child process with a timeout: were the check missing, the server would start and block.
    proc = subprocess.run([sys.executable, "-m", "encoderguard", *base, "--defence", f"output-watermark:key={wrong}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "32-d answers but the encoder answers 16-d" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# -- the shift ----------------------------------------------------------------------------------------------------
def test_the_shift_is_deterministic_per_answer_and_of_the_documented_size() -> None:
    rng = np.random.default_rng(0)
    center = rng.normal(size=16).astype(np.float32)
    key = _key(center=center, spread=0.25)
    marker = OutputWatermark(key=key)
    y = rng.normal(size=(400, 16)) + center
    marked = marker.mark(y)
    # deterministic, and row i does not depend on the other rows of the request
    assert np.array_equal(marked, marker.mark(y))
    assert np.allclose(marked[:7], marker.mark(y[:7])) and np.allclose(marked[150:], marker.mark(y[150:]))
    u1, u2, t = key.directions(16)
    assert abs(u1 @ t) < 1e-12 and abs(u2 @ t) < 1e-12 and abs(u1 @ u2) < 1e-12 and abs(np.linalg.norm(t) - 1) < 1e-12
    # by hand: x = <y - c, u1> / (||y - c|| * spread), g = sign(<y - c, u2>) * sign(x) * max(|x| - 0.5, 0)
    yc = y - center.astype(np.float64)
    sizes = np.linalg.norm(yc, axis=1)
    x = (yc @ u1) / (sizes * 0.25)
    g = np.sign(yc @ u2) * np.sign(x) * np.maximum(np.abs(x) - 0.5, 0)
    assert np.allclose(watermark_pattern(y, (u1, u2, t), center, 0.25), g)
    # y' - y = strength * ||y - c|| * g(y) * t: along t only, of exactly that length
    delta = marked - y
    assert np.allclose(delta, (0.1 * sizes * g)[:, None] * t[None, :])
    # answers in the dead zone are not moved; the others move to both sides, the mean barely moves
    dead = np.abs(x) < 0.5
    assert 0.2 < dead.mean() < 0.6 and np.allclose(delta[dead], 0) and not np.allclose(delta[~dead], 0)
    assert 0.3 < (g[~dead] > 0).mean() < 0.7
    assert np.linalg.norm(delta.mean(0)) < 0.25 * np.linalg.norm(delta, axis=1).mean()
    # the honest cost: a step of length r turns y by at most arcsin(r / ||y||)
    r = np.linalg.norm(delta, axis=1)
    cos = (marked * y).sum(1) / np.linalg.norm(marked, axis=1) / np.linalg.norm(y, axis=1)
    assert (cos >= np.sqrt(1 - np.minimum(r / np.linalg.norm(y, axis=1), 1) ** 2) - 1e-9).all()
    assert math.isclose(float(np.median(cos)), 1.0, abs_tol=0.01)


def test_local_api_applies_the_registered_defence_per_input(tmp_path: Path) -> None:
    encoder = tiny_encoder(3)
    path = _key(strength=0.2).save(tmp_path / "k.json")
    api = LocalAPI(encoder, defences=parse_defences([f"output-watermark:key={path}"]))
    clean = LocalAPI(encoder)
    images = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    marked = api.embed(images).double().numpy()
    assert np.allclose(marked, api.embed(images).double().numpy())
    assert np.allclose(marked[5:9], api.embed(images[5:9]).double().numpy(), atol=1e-6)
    y = clean.embed(images).double().numpy()
    assert np.allclose(marked, OutputWatermark(key=path).mark(y), atol=1e-5)
    assert not np.allclose(marked, y)
