"""The main job end to end: train a watermarked victim, serve it over HTTP, steal it, train an independent model,
verify all three with dataset inference and the watermark, write ``summary.json`` and ``report.html``.

Each stage runs the public command (``encoderguard train|serve|steal|verify ... --json``) in its own process, the way
an owner and an attacker would: the server is a separate process reached only over HTTP on 127.0.0.1, and the
attacker holds nothing but its API key. This module only wires the commands together.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from encoderguard.errors import EncoderGuardError
from encoderguard.models.checkpoint import atomic_write_bytes
from encoderguard.train.progress import log

SERVER_START_TIMEOUT = 120.0


class StageError(EncoderGuardError):
    """A demo stage failed; the message names the stage and the command's own error."""


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of a demo run. ``quick`` shrinks every stage for a smoke run (verdicts may then be inconclusive).

    Attributes:
        dataset: the owner's dataset.
        preset: training preset of the victim and the independent model (``cpu-di``: a victim small enough to
            memorise its training images, which dataset inference needs).
        victim_epochs: SimCLR epochs of the victim (``None``: the preset's).
        independent_epochs: SimCLR epochs of the independent model (a quarter of the preset's 240, to keep the
            demo within 10 minutes on 2 cores; any model that never saw the owner's data is a fair negative).
        copy_check_epochs: training epochs of the copy that the owner's dataset-inference check steals from itself
            (same loss and budget as the thief; fewer epochs to keep the demo within 10 minutes).
        loss: the attacker's loss (also the loss of the copy the owner's dataset-inference check steals from
            itself: a copy made the way the thief works is the fair test of whether such copies are detected).
        budget: attacker queries (``None``: max(train size / 5, 2000); a copy of a 500-image victim bought with
            100 queries is not worth stealing, see the README).
        steal_epochs: training epochs of the copy.
        watermark_queries: suspect queries of each watermark test.
        seed: seed of the victim (the independent model uses ``seed + 1`` on the disjoint ``query`` split).
    """

    dataset: str = "fashion-mnist"
    preset: str = "cpu-di"
    victim_epochs: int | None = None
    independent_epochs: int | None = 60
    copy_check_epochs: int = 30
    loss: str = "infonce"
    budget: int | None = None
    steal_epochs: int = 60
    watermark_queries: int = 1000
    seed: int = 0

    @classmethod
    def quick(cls) -> DemoSettings:
        return cls(victim_epochs=40, independent_epochs=20, budget=1000, steal_epochs=15, watermark_queries=400,
                   copy_check_epochs=10)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "encoderguard.cli.main", *args]


def _run_json(stage: str, args: list[str], *, env: dict[str, str]) -> dict[str, Any]:
    """Run an ``encoderguard ... --json`` command; stderr (progress) passes through; stdout is the JSON result."""
    proc = subprocess.run(_cli(*args, "--json"), stdout=subprocess.PIPE, stderr=None, env=env, text=True)
    if proc.returncode != 0:
        raise StageError(f"stage '{stage}' failed (exit {proc.returncode}): encoderguard {' '.join(args)}")
    try:
        result: dict[str, Any] = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise StageError(f"stage '{stage}' printed no JSON result ({exc})") from exc
    return result


class _Server:
    """``encoderguard serve`` in a child process on 127.0.0.1 with an ephemeral port."""

    def __init__(self, *, encoder: Path, keys: Path, ledger: Path, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(
            _cli("serve", "--encoder", str(encoder), "--host", "127.0.0.1", "--port", "0", "--keys", str(keys),
                 "--ledger", str(ledger)), stdout=subprocess.DEVNULL, stderr=self._log, env=env)
        self.url = self._wait_for_url()

    def _wait_for_url(self) -> str:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        pattern = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StageError(f"stage 'serve' failed: the server exited with {self.proc.returncode} "
                                 f"(see {self.log_path})")
            match = pattern.search(self.log_path.read_text())
            if match:
                return match.group(1)
            time.sleep(0.2)
        self.stop()
        raise StageError(f"stage 'serve' failed: the server did not start within {SERVER_START_TIMEOUT:.0f} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def _verdict_row(suspect: str, result: dict[str, Any]) -> dict[str, Any]:
    keep = ("method", "verdict", "p_value", "alpha", "statistic", "effect", "n", "queries_used", "warnings")
    return {"suspect": suspect, **{k: result.get(k) for k in keep}, "details": result.get("details", {})}


def run_demo(out_dir: str | Path, *, settings: DemoSettings | None = None, data_dir: str | None = None,
             on_stage: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the whole story into ``out_dir`` and return the summary (also written to ``out_dir/summary.json``).

    Raises:
        StageError: a stage failed (the server did not start, a command exited non-zero...).
    """
    settings = settings or DemoSettings()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if data_dir:
        env["ENCODERGUARD_DATA_DIR"] = str(data_dir)
    started = time.perf_counter()
    stages: list[dict[str, Any]] = []
    summary: dict[str, Any] = {"settings": asdict(settings), "stages": stages}

    def stage(name: str) -> Callable[[], None]:
        (on_stage or log)(f"[demo] {name}")
        t0 = time.perf_counter()
        return lambda: stages.append({"stage": name, "seconds": time.perf_counter() - t0})

    victim_dir, stolen_dir, indep_dir = out / "victim", out / "stolen", out / "independent"
    done = stage("1/6 train a watermarked victim on the owner split")
    args = ["train", "--data", f"{settings.dataset}:owner-train", "--preset", settings.preset, "--seed",
            str(settings.seed), "--watermark", "--out", str(victim_dir)]
    if settings.victim_epochs:
        args += ["--epochs", str(settings.victim_epochs)]
    summary["victim"] = _load_or_run(victim_dir, "train victim", args, env)
    done()
    train_size = int(summary["victim"]["train_images"])
    budget = settings.budget or max(train_size // 5, 2000)

    done = stage("2/6 start the embedding API (separate process, 127.0.0.1) with a key and a ledger")
    keys, ledger = out / "keys.json", out / "ledger.sqlite"
    for stale in (keys, ledger, out / "ledger.sqlite-wal", out / "ledger.sqlite-shm"):
        stale.unlink(missing_ok=True)
    attacker = _run_json("keys", ["keys", "add", "--keys", str(keys), "--name", "attacker", "--quota",
                                  str(budget)], env=env)
    server = _Server(encoder=victim_dir, keys=keys, ledger=ledger, env=env, log_path=out / "server.log")
    done()
    try:
        done = stage(f"3/6 steal the victim over HTTP ({settings.loss}, {budget} queries)")
        if (stolen_dir / "card.json").exists():
            import shutil

            shutil.rmtree(stolen_dir)
        summary["stolen"] = _run_json("steal", [
            "steal", "--api", server.url, "--key", attacker["key"], "--budget", str(budget), "--loss", settings.loss,
            "--query-data", f"{settings.dataset}:query", "--epochs", str(settings.steal_epochs),
            "--victim-for-eval", str(victim_dir), "--ledger", str(ledger), "--seed", str(settings.seed + 2),
            "--out", str(stolen_dir)], env=env)
        done()
    finally:
        server.stop()
    summary["server"] = {"url": server.url, "exit_code": server.proc.returncode, "log": str(server.log_path)}

    done = stage("4/6 train an independent encoder on data disjoint from the owner's")
    # as many images as the victim saw, drawn from the query split (disjoint from all of the owner's data)
    args = ["train", "--data", f"{settings.dataset}:query", "--preset", settings.preset, "--seed",
            str(settings.seed + 1), "--max-images", str(train_size), "--out", str(indep_dir)]
    if settings.independent_epochs:
        args += ["--epochs", str(settings.independent_epochs)]
    summary["independent"] = _load_or_run(indep_dir, "train independent", args, env)
    done()

    done = stage("5/6 verify victim, stolen copy and independent model (dataset inference, watermark)")
    verdicts: list[dict[str, Any]] = []
    # The owner checks once what dataset inference can protect (its own encoder, and a copy it steals from itself)
    # and freezes the test; every suspect is then tested with those settings.
    di_config = out / "di_config.json"
    summary["di_self_check"] = _run_json("verify di self-check", [
        "verify", "di", "--owner", str(victim_dir), "--self-check", "--copy-check", "--copy-loss", settings.loss,
        "--copy-budget", str(budget), "--copy-epochs", str(settings.copy_check_epochs),
        "--save-config", str(di_config)], env=env)
    for suspect, folder in (("victim", victim_dir), ("stolen", stolen_dir), ("independent", indep_dir)):
        di = _run_json(f"verify di {suspect}", ["verify", "di", "--owner", str(victim_dir), "--suspect",
                                                str(folder), "--config", str(di_config)], env=env)
        wm = _run_json(f"verify watermark {suspect}", ["verify", "watermark", "--owner", str(victim_dir),
                                                       "--suspect", str(folder), "--queries",
                                                       str(settings.watermark_queries)], env=env)
        verdicts += [_verdict_row(suspect, di), _verdict_row(suspect, wm)]
        scores = (di.get("details") or {}).get("scores")
        if isinstance(scores, dict):
            summary.setdefault("di_scores", {})[suspect] = scores
    summary["verdicts"] = verdicts
    done()

    done = stage("6/6 write summary.json and report.html")
    summary["seconds"] = time.perf_counter() - started
    summary["expected"] = {"victim": "stolen", "stolen": "stolen", "independent": "independent"}
    summary["all_verdicts_right"] = all(v["verdict"] == summary["expected"][v["suspect"]] for v in verdicts)
    # "inconclusive" (with its reason) is an honest answer; a verdict that names the wrong side is not.
    summary["wrong_verdicts"] = [v for v in verdicts
                                 if v["verdict"] not in (summary["expected"][v["suspect"]], "inconclusive")]
    atomic_write_bytes(out / "summary.json", (json.dumps(summary, indent=2, default=str) + "\n").encode())
    try:
        from encoderguard.experiments.report import render_report

        summary["report"] = str(render_report(out))
    except EncoderGuardError as exc:  # the report needs matplotlib; the verdicts stand without it
        summary["report_error"] = str(exc)
    done()
    summary["seconds"] = time.perf_counter() - started
    atomic_write_bytes(out / "summary.json", (json.dumps(summary, indent=2, default=str) + "\n").encode())
    return summary


def _load_or_run(folder: Path, stage: str, args: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Train unless ``folder`` already holds a finished model from an earlier demo run (then reuse its card)."""
    card_path = folder / "card.json"
    if card_path.is_file() and not (folder / "resume.safetensors").exists():
        card = json.loads(card_path.read_text())
        metrics = dict(card.get("metrics") or {})
        return {"out": str(folder), "reused": True, "train_images": int((card.get("data") or {}).get("train_size", 0)),
                **metrics, **({"watermark_acc": card["watermark"]["heldout_acc"]} if card.get("watermark") else {})}
    return _run_json(stage, args, env=env)


def summary_table(summary: dict[str, Any]) -> str:
    """The short table the demo prints: model, probe accuracy, fidelity, queries paid, p-values, verdicts."""
    by = {(v["suspect"], v["method"]): v for v in summary.get("verdicts", [])}

    def fmt(value: Any, spec: str) -> str:
        return format(value, spec) if isinstance(value, (int, float)) else "-"

    header = f"{'model':<12}{'linear':>8}{'fidelity':>10}{'queries':>9}{'DI p':>10}{'WM p':>10}  verdict (DI / WM)"
    lines = [header, "-" * len(header)]
    for name in ("victim", "stolen", "independent"):
        entry = summary.get(name) or {}
        di, wm = by.get((name, "di"), {}), by.get((name, "watermark"), {})
        lines.append(f"{name:<12}{fmt(entry.get('linear_acc'), '.4f'):>8}{fmt(entry.get('fidelity_cosine'), '.4f'):>10}"
                     f"{fmt(entry.get('queries_paid'), 'd'):>9}{fmt(di.get('p_value'), '.2g'):>10}"
                     f"{fmt(wm.get('p_value'), '.2g'):>10}  {di.get('verdict', '-')} / {wm.get('verdict', '-')}")
    return "\n".join(lines)
