"""The main job end to end: train a watermarked victim and its reference models, serve it over HTTP, steal it, train
an independent model, verify all three (dataset inference and the watermark, combined into one decision per
suspect), write ``summary.json`` and ``report.html``.

Each stage runs the public command (``encoderguard train|serve|steal|verify ... --json``) in its own process, the way
an owner and an attacker would: the server is a separate process reached only over HTTP on 127.0.0.1, and the
attacker holds nothing but its API key. This module only wires the commands together.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from encoderguard.api.launcher import ServerStartError, launch_server
from encoderguard.errors import EncoderGuardError
from encoderguard.models.checkpoint import atomic_write_bytes
from encoderguard.train.presets import get_preset

logger = logging.getLogger(__name__)

SERVER_START_TIMEOUT = 120.0


class StageError(EncoderGuardError):
    """A demo stage failed; the message names the stage and the command's own error."""


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of a demo run. ``quick`` shrinks every stage for a smoke run (verdicts may then be inconclusive).

    Attributes:
        dataset: the owner's dataset.
        split_seed: seed of the owner's split. 3: on split 0, which the demo used before, dataset inference missed
            2,000-query copies (mse p = 0.114, infonce 0.12-0.31) and the calibrated watermark misses copies of this
            preset, so no test could call the thief's copy stolen there (benchmarks/RESULTS.md, "Demo").
        preset: training preset of the victim and the independent model (``cpu-di``: a victim small enough to
            memorise its training images, which dataset inference needs).
        victim_epochs: SimCLR epochs of the victim (``None``: the preset's).
        independent_epochs: SimCLR epochs of the independent model (a quarter of the preset's 240, to keep the
            demo within 10 minutes on 2 cores; any model that never saw the owner's data is a fair negative).
        copy_check_epochs: training epochs of the copy that the owner's dataset-inference check steals from itself
            (same loss and budget as the thief; fewer epochs to keep the demo within 10 minutes).
        loss: the attacker's loss (also the loss of the copy the owner steals from itself for the copy check: a
            copy made the way the thief works is the fair test of whether such copies are detected). ``mse``: on
            split 3 dataset inference detected 5 of 5 mse copies at 2,000 queries and 4 of 5 infonce copies
            (benchmarks/results_validity.md).
        budget: attacker queries (``None``: max(train size / 5, 2000); a copy of a 500-image victim bought with
            100 queries is not worth stealing, see the README).
        steal_epochs: training epochs of the copy.
        watermark_queries: suspect queries of each watermark test.
        references: reference models the owner trains to calibrate the tests (``references build --count``).
        reference_epochs: cap on the SimCLR references' epochs (``references build --max-epochs``; 30 keeps the
            demo within 10 minutes).
        seed: seed of the victim (the independent model uses ``seed + 1`` on the disjoint ``query`` split).
    """

    dataset: str = "fashion-mnist"
    split_seed: int = 3
    preset: str = "cpu-di"
    victim_epochs: int | None = None
    independent_epochs: int | None = 60
    copy_check_epochs: int = 30
    loss: str = "mse"
    budget: int | None = None
    steal_epochs: int = 60
    watermark_queries: int = 2000
    references: int = 10
    reference_epochs: int = 30
    seed: int = 0

    @classmethod
    def quick(cls) -> DemoSettings:
        return cls(victim_epochs=40, independent_epochs=20, budget=1000, steal_epochs=15, watermark_queries=400,
                   copy_check_epochs=10, references=4, reference_epochs=10)

    def __post_init__(self) -> None:
        from encoderguard.attacks.losses import LOSSES

        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of: {', '.join(LOSSES)}")
        if self.budget is not None and self.budget < 1:
            raise ValueError(f"budget must be >= 1, got {self.budget}")
        if self.references < 3:
            raise ValueError(f"references must be >= 3 (the calibrated watermark test needs 3), got "
                             f"{self.references}")


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


def run_environment(data_dir: str | None) -> dict[str, str]:
    """The environment every stage's command runs in: this process's, with ``--data-dir`` passed on."""
    env = dict(os.environ)
    if data_dir:
        env["ENCODERGUARD_DATA_DIR"] = str(data_dir)
    return env


def stage_clock(stages: list[dict[str, Any]],
                on_stage: Callable[[str], None] | None) -> Callable[[str], Callable[[], None]]:
    """``stage(name)`` announces a stage and returns ``done()``, which appends ``{"stage", "seconds"}`` to
    ``stages``."""
    def stage(name: str) -> Callable[[], None]:
        (on_stage or logger.info)(f"demo: {name}")
        t0 = time.perf_counter()
        return lambda: stages.append({"stage": name, "seconds": time.perf_counter() - t0})

    return stage


def _verdict_rows(suspect: str, decision: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per method of a ``verify all`` decision (the demo's ``verdicts`` contract)."""
    keep = ("method", "verdict", "p_value", "statistic", "effect", "n", "queries_used", "warnings", "calibrated",
            "can_detect", "sees_copies", "holm_p", "in_family", "reason")
    return [{"suspect": suspect, **{k: m.get(k) for k in keep},
             "alpha": m.get("alpha", decision.get("alpha")), "details": m.get("details", {})}
            for m in decision.get("methods", [])]


def run_demo(out_dir: str | Path, *, settings: DemoSettings | None = None, data_dir: str | None = None,
             on_stage: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the whole story into ``out_dir`` and return the summary (also written to ``out_dir/summary.json``).

    Models already in ``out_dir`` are reused only when their cards record the settings asked for now; any other
    model is retrained (a quick run's models never stand in for a full run's).

    Raises:
        StageError: a stage failed (the server did not start, a command exited non-zero...).
    """
    settings = settings or DemoSettings()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = run_environment(data_dir)
    started = time.perf_counter()
    stages: list[dict[str, Any]] = []
    summary: dict[str, Any] = {"settings": asdict(settings), "stages": stages}
    stage = stage_clock(stages, on_stage)

    victim_dir, stolen_dir, indep_dir = out / "victim", out / "stolen", out / "independent"
    refs_dir = out / "references"
    done = stage("1/7 train a watermarked victim on the owner split")
    victim_epochs = settings.victim_epochs or int(get_preset(settings.preset)["epochs"])
    args = ["train", "--data", f"{settings.dataset}:owner-train", "--preset", settings.preset, "--seed",
            str(settings.seed), "--split-seed", str(settings.split_seed), "--watermark", "--epochs",
            str(victim_epochs), "--out", str(victim_dir)]
    expected_victim = {"preset": settings.preset, "epochs": victim_epochs, "seed": settings.seed,
                       "split": "owner-train", "watermark": True, "dataset": settings.dataset,
                       "split_seed": settings.split_seed}
    summary["victim"], retrained = _load_or_run(victim_dir, "train victim", args, env, expected_victim)
    if retrained:  # everything derived from an older victim is stale
        for stale in (refs_dir, stolen_dir):
            shutil.rmtree(stale, ignore_errors=True)
    done()
    train_size = int(summary["victim"]["train_images"])
    budget = settings.budget or max(train_size // 5, 2000)

    done = stage("2/7 start the embedding API (separate process, 127.0.0.1) with a key and a ledger")
    keys, ledger = out / "keys.json", out / "ledger.sqlite"
    for stale in (keys, ledger, out / "ledger.sqlite-wal", out / "ledger.sqlite-shm"):
        stale.unlink(missing_ok=True)
    attacker = _run_json("keys", ["keys", "add", "--keys", str(keys), "--name", "attacker", "--quota",
                                  str(budget)], env=env)
    admin_token = write_admin_token(out / "admin-token")
    try:
        server = launch_server(victim_dir, keys=keys, ledger=ledger, env=env, log=out / "server.log",
                               timeout=SERVER_START_TIMEOUT, extra=dashboard_flags(out / "admin-token"))
    except ServerStartError as exc:
        raise StageError(f"stage 'serve' failed: {exc}") from None
    announce_dashboard(server.url, out / "admin-token", on_stage)
    done()
    try:
        done = stage(f"3/7 steal the victim over HTTP ({settings.loss}, {budget} queries)")
        shutil.rmtree(stolen_dir, ignore_errors=True)
        summary["stolen"] = _run_json("steal", [
            "steal", "--api", server.url, "--key", attacker["key"], "--budget", str(budget), "--loss", settings.loss,
            "--query-data", f"{settings.dataset}:query", "--split-seed", str(settings.split_seed),
            "--epochs", str(settings.steal_epochs),
            "--victim-for-eval", str(victim_dir), "--ledger", str(ledger), "--seed", str(settings.seed + 2),
            "--out", str(stolen_dir)], env=env)
        summary["dashboard"] = snapshot_dashboard(server.url, admin_token, out / "dashboard_state.json")
        done()
    finally:
        server.stop()
    summary["server"] = {"url": server.url, "exit_code": server.proc.returncode, "log": str(server.log_path)}

    done = stage("4/7 train an independent encoder on data disjoint from the owner's")
    # as many images as the victim saw, drawn from the query split (disjoint from all of the owner's data)
    indep_epochs = settings.independent_epochs or int(get_preset(settings.preset)["epochs"])
    args = ["train", "--data", f"{settings.dataset}:query", "--preset", settings.preset, "--seed",
            str(settings.seed + 1), "--split-seed", str(settings.split_seed), "--max-images", str(train_size),
            "--epochs", str(indep_epochs), "--out", str(indep_dir)]
    expected_indep = {"preset": settings.preset, "epochs": indep_epochs, "seed": settings.seed + 1,
                      "split": "query", "watermark": False, "dataset": settings.dataset, "max_images": train_size,
                      "split_seed": settings.split_seed}
    summary["independent"], _ = _load_or_run(indep_dir, "train independent", args, env, expected_indep)
    done()

    done = stage(f"5/7 train {settings.references} reference models on data disjoint from the owner's (the null)")
    # also registered in victim/references.json, where `verify all` finds it
    summary["references"] = _run_json("references build", [
        "references", "build", "--owner", str(victim_dir), "--count", str(settings.references), "--out",
        str(refs_dir), "--max-epochs", str(settings.reference_epochs)], env=env)
    done()

    done = stage("6/7 freeze dataset inference, then verify victim, stolen copy and independent model (all tests)")
    # The owner checks once what dataset inference can protect (its own encoder on its own draw, and a copy it
    # steals from itself) and freezes the test; every suspect is then tested with those settings on another draw.
    # The copy it steals from itself is kept in victim/copy-check, where `verify all` tests every method on it: a
    # test that misses the owner's own copy leaves the decision's family.
    di_config = out / "di-config.json"
    di_config.unlink(missing_ok=True)
    shutil.rmtree(victim_dir / "copy-check", ignore_errors=True)
    summary["di_self_check"] = _run_json("verify di self-check", [
        "verify", "di", "--owner", str(victim_dir), "--self-check", "--copy-check", "--copy-loss", settings.loss,
        "--copy-budget", str(budget), "--copy-epochs", str(settings.copy_check_epochs),
        "--save-config", str(di_config), "--copy-out", str(victim_dir / "copy-check")], env=env)
    verdicts: list[dict[str, Any]] = []
    combined: list[dict[str, Any]] = []
    for suspect, folder in (("victim", victim_dir), ("stolen", stolen_dir), ("independent", indep_dir)):
        decision = _run_json(f"verify all {suspect}", [
            "verify", "all", "--owner", str(victim_dir), "--suspect", str(folder), "--di-config", str(di_config),
            "--watermark-queries", str(settings.watermark_queries)], env=env)
        verdicts += _verdict_rows(suspect, decision)
        combined.append({"suspect": suspect, "verdict": decision["verdict"], "combined_p": decision["combined_p"],
                         "family": decision.get("family", []), "reason": decision.get("reason")})
        for method in decision.get("methods", []):
            scores = (method.get("details") or {}).get("scores")
            if method.get("method") == "di" and isinstance(scores, dict):
                summary.setdefault("di_scores", {})[suspect] = scores
    summary["verdicts"] = verdicts
    summary["combined"] = combined
    done()

    done = stage("7/7 write summary.json and report.html")
    summary["seconds"] = time.perf_counter() - started
    summary["expected"] = {"victim": "stolen", "stolen": "stolen", "independent": "independent"}
    by = {c["suspect"]: c["verdict"] for c in combined}
    # The demo succeeds only when the owner would act rightly: the victim and the copy called stolen, the
    # independent model not. A per-method "inconclusive" (with its reason) is an honest answer.
    summary["wrong_decisions"] = [c for c in combined if not (
        c["verdict"] == "stolen" if c["suspect"] in ("victim", "stolen") else c["verdict"] != "stolen")]
    summary["wrong_verdicts"] = [v for v in verdicts if v["verdict"] == "stolen" and v["suspect"] == "independent"
                                 or v["verdict"] == "independent" and v["suspect"] != "independent"]
    summary["all_decisions_right"] = not summary["wrong_decisions"]
    summary["all_verdicts_right"] = all(v["verdict"] == summary["expected"][v["suspect"]] for v in verdicts)
    summary["decisions"] = by
    return finish_run(out, summary, started, done)


def finish_run(out: Path, summary: dict[str, Any], started: float, done: Callable[[], None]) -> dict[str, Any]:
    """Write ``summary.json``, render ``report.html`` from it (the verdicts stand without matplotlib, with
    ``report_error`` saying why), close the last stage and write the summary again with the total time."""
    atomic_write_bytes(out / "summary.json", (json.dumps(summary, indent=2, default=str) + "\n").encode())
    try:
        from encoderguard.scenarios.report import render_report

        summary["report"] = str(render_report(out))
    except EncoderGuardError as exc:  # the report needs matplotlib; the decisions stand without it
        summary["report_error"] = str(exc)
    done()
    summary["seconds"] = time.perf_counter() - started
    atomic_write_bytes(out / "summary.json", (json.dumps(summary, indent=2, default=str) + "\n").encode())
    return summary


def write_admin_token(path: Path) -> str:
    """A fresh owner token for the dashboard, written ``0600`` (a demo run's own; never reused across runs)."""
    import secrets

    token = secrets.token_urlsafe(24)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token


def dashboard_flags(token_file: Path) -> list[str]:
    """``serve`` flags that turn the owner's dashboard on."""
    return ["--dashboard", "--admin-token-file", str(token_file)]


def announce_dashboard(url: str, token_file: Path, on_stage: Callable[[str], None] | None) -> None:
    """Say where the owner's dashboard is while the server is up (the token stays in its file)."""
    (on_stage or logger.info)(f"demo: owner dashboard at {url}/dashboard while the server is up "
                                 f"(admin token in {token_file})")


def snapshot_dashboard(url: str, token: str, path: Path) -> dict[str, Any]:
    """Save what the dashboard shows now (its JSON state) to ``path``; the report links it.

    Returns:
        ``{"url", "snapshot"}``, or ``{"url", "error"}`` when the dashboard did not answer (the demo goes on).
    """
    import httpx

    try:
        answer = httpx.get(f"{url}/dashboard/api/state", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        answer.raise_for_status()
        atomic_write_bytes(path, (json.dumps(answer.json(), indent=2) + "\n").encode())
    except (httpx.HTTPError, ValueError) as exc:
        logger.warning("demo: the dashboard's state could not be saved: %s", exc)
        return {"url": f"{url}/dashboard", "error": str(exc)}
    return {"url": f"{url}/dashboard", "snapshot": str(path)}


def _card_mismatch(card: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """Settings a finished model's card disagrees with (empty: the model is the one asked for)."""
    training, data = card.get("training") or {}, card.get("data") or {}
    found = {"preset": training.get("preset"), "epochs": training.get("epochs"), "seed": training.get("seed"),
             "split": data.get("split"), "dataset": data.get("dataset"), "watermark": bool(card.get("watermark")),
             "max_images": data.get("max_images"), "split_seed": data.get("split_seed")}
    return [f"{k} {found.get(k)!r} (asked {v!r})" for k, v in expected.items() if found.get(k) != v]


def _load_or_run(folder: Path, stage: str, args: list[str], env: dict[str, str], expected: dict[str, Any]
                 ) -> tuple[dict[str, Any], bool]:
    """Train unless ``folder`` already holds a finished model with exactly the ``expected`` settings.

    Returns:
        ``(summary, retrained)``. A finished model with other settings is deleted and retrained (the folder belongs
        to the demo's run directory), and the log says why.
    """
    card_path = folder / "card.json"
    if card_path.is_file() and not (folder / "resume.safetensors").exists():
        card = json.loads(card_path.read_text())
        mismatch = _card_mismatch(card, expected)
        if not mismatch:
            metrics = dict(card.get("metrics") or {})
            return ({"out": str(folder), "reused": True,
                     "train_images": int((card.get("data") or {}).get("max_images")
                                         or (card.get("data") or {}).get("train_size", 0)),
                     **metrics, **({"watermark_acc": card["watermark"]["heldout_acc"]} if card.get("watermark")
                                   else {})}, False)
        logger.info(f"demo: {folder} holds a model with other settings ({', '.join(mismatch)}): retraining it")
        shutil.rmtree(folder)
    elif folder.exists() and not (folder / "resume.safetensors").exists():
        shutil.rmtree(folder)
    return _run_json(stage, args, env=env), True


def summary_table(summary: dict[str, Any]) -> str:
    """The short table the demo prints: model, probe accuracy, fidelity, queries paid, p-values, verdicts."""
    by = {(v["suspect"], v["method"]): v for v in summary.get("verdicts", [])}
    decided = {c["suspect"]: c for c in summary.get("combined", [])}

    def fmt(value: Any, spec: str) -> str:
        return format(value, spec) if isinstance(value, (int, float)) else "-"

    header = (f"{'model':<12}{'linear':>8}{'fidelity':>10}{'queries':>9}{'DI p':>9}{'WM p':>9}{'comb. p':>9}"
              f"  decision  (DI / WM)")
    lines = [header, "-" * len(header)]
    for name in ("victim", "stolen", "independent"):
        entry = summary.get(name) or {}
        di, wm, comb = by.get((name, "di"), {}), by.get((name, "watermark"), {}), decided.get(name, {})
        lines.append(f"{name:<12}{fmt(entry.get('linear_acc'), '.4f'):>8}{fmt(entry.get('fidelity_cosine'), '.4f'):>10}"
                     f"{fmt(entry.get('queries_paid'), 'd'):>9}{fmt(di.get('p_value'), '.2g'):>9}"
                     f"{fmt(wm.get('p_value'), '.2g'):>9}{fmt(comb.get('combined_p'), '.2g'):>9}"
                     f"  {comb.get('verdict', '-'):<9} ({di.get('verdict', '-')} / {wm.get('verdict', '-')})")
    return "\n".join(lines)
