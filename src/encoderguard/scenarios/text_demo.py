"""The text story end to end: serve all-MiniLM-L6-v2 with the serving-time watermark over HTTP (OpenAI format), steal
it with a small text student, build independent text references and an independent encoder, verify the watermarked
API, the stolen copy and the independent encoder, write ``summary.json`` and ``report.html``.

Each stage runs the public command (``encoderguard watermark|references|keys|serve|steal|verify ... --json``) in
its own process, as :mod:`encoderguard.scenarios.demo` does for images: the server is a separate process reached
only over HTTP on 127.0.0.1, the thief holds nothing but its API key. The owner serves a pretrained encoder, so it
holds neither that encoder's training data (dataset inference does not apply) nor a training-time watermark; the
decision rests on the serving-time watermark alone, calibrated on the text references
(:mod:`encoderguard.verify.text_references`; their limits are stated there and in docs/verification.md).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from encoderguard.api.launcher import ServerStartError, launch_server
from encoderguard.models.checkpoint import atomic_write_bytes
from encoderguard.scenarios.demo import (
    SERVER_START_TIMEOUT,
    StageError,
    _run_json,
    _verdict_rows,
    finish_run,
    run_environment,
    stage_clock,
)

logger = logging.getLogger(__name__)

#: What each suspect should be called: the owner's watermarked API and the copy "stolen", the independent encoder
#: not.
EXPECTED = {"victim": "stolen", "stolen": "stolen", "independent": "independent"}
INDEPENDENT_SEED = 3_000_000  # far from the references' seeds (1,000,000 + i)


@dataclass(frozen=True)
class TextDemoSettings:
    """Sizes of a text demo run. ``quick`` shrinks every stage for a smoke run (decisions may then be inconclusive).

    Attributes:
        encoder: the owner's pretrained text encoder (served; never downloaded).
        dataset: the text dataset: the thief's sentences are ``DATASET:query``, the evaluation probes its documents.
        budget: sentences the thief pays for.
        student: the thief's student (``ngram`` or ``transformer``). ``ngram`` with lr 0.01 and 2,000 steps is the
            setting that learns MiniLM from 2,000 sentences (benchmarks/results_steal.md: gain recovery 1.0, fidelity
            0.56); the transformer student at the settings tried learns nothing at these budgets.
        steal_epochs: training epochs of the copy.
        steal_batch_size: the copy's batch size.
        steal_lr: the copy's learning rate.
        steal_min_steps: the copy's minimum optimiser steps (``steal --min-steps``).
        eval_size: probe documents per probe set in the steal's owner-side evaluation (MiniLM on whole documents is
            the slow part of the evaluation).
        strength: the serving-time watermark's strength (``watermark keygen --strength``; the default 0.2, fixed
            before any text measurement, benchmarks/results_watermark.md "Serving-time watermark on text").
        probes: probe sentences of the watermark test; align: alignment candidates (about a third are used).
        references: text reference models (LSA and SimCSE students) that calibrate the test.
        reference_steps: SimCSE steps per student reference (and for the independent encoder).
        reference_sentences: training sentences per reference.
        seed: the thief's seed.
    """

    encoder: str = "st:all-MiniLM-L6-v2"
    dataset: str = "bbc-news"
    budget: int = 2000
    student: str = "ngram"
    steal_epochs: int = 1
    steal_batch_size: int = 256
    steal_lr: float = 0.01
    steal_min_steps: int = 2000
    eval_size: int = 150
    strength: float = 0.2
    probes: int = 1000
    align: int = 2000
    references: int = 6
    reference_steps: int = 60
    reference_sentences: int = 6000
    seed: int = 0

    @classmethod
    def quick(cls) -> TextDemoSettings:
        return cls(budget=400, steal_min_steps=200, eval_size=40, probes=200, align=400, references=3,
                   reference_steps=10, reference_sentences=1500)

    def __post_init__(self) -> None:
        from encoderguard.attacks.steal_run import STUDENTS

        if self.student not in STUDENTS:
            raise ValueError(f"unknown student {self.student!r}; choose one of: {', '.join(STUDENTS)}")
        if self.budget < 1:
            raise ValueError(f"budget must be >= 1, got {self.budget}")
        if self.references < 3:
            raise ValueError(f"references must be >= 3 (the calibrated test needs 3), got {self.references}")
        if not 0 < self.strength <= 1:
            raise ValueError(f"strength must be in (0, 1], got {self.strength}")


def run_text_demo(out_dir: str | Path, *, settings: TextDemoSettings | None = None, data_dir: str | None = None,
                  on_stage: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the text story into ``out_dir`` and return the summary (also written to ``out_dir/summary.json``).

    The key, the references and the independent encoder in ``out_dir`` are reused when the settings that made them
    are unchanged (``settings.json``); everything else is redone.

    Raises:
        StageError: a stage failed (the server did not start, a command exited non-zero...).
    """
    settings = settings or TextDemoSettings()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = run_environment(data_dir)
    started = time.perf_counter()
    stages: list[dict[str, Any]] = []
    summary: dict[str, Any] = {"settings": {"modality": "text", **asdict(settings)}, "stages": stages}
    stage = stage_clock(stages, on_stage)

    key_file, refs_dir, indep_pool = out / "watermark.key", out / "references", out / "independent"
    stolen_dir = out / "stolen"
    _forget_stale(out, settings, (key_file, refs_dir, indep_pool))

    done = stage(f"1/7 make the serving-time watermark key, calibrated on {settings.encoder} "
                 f"({settings.dataset}:query sentences)")
    if key_file.is_file():
        from encoderguard.defences.output_watermark import key_summary
        from encoderguard.defences.output_watermark_key import OutputWatermarkKey

        summary["watermark_key"] = {"key": str(key_file), "reused": True,
                                    **key_summary(OutputWatermarkKey.load(key_file))}
    else:
        summary["watermark_key"] = _run_json("watermark keygen", [
            "watermark", "keygen", "--encoder", settings.encoder, "--data", f"{settings.dataset}:query",
            "--probes", str(settings.probes), "--align-probes", str(settings.align), "--strength",
            str(settings.strength), "--out", str(key_file)], env=env)
    done()

    done = stage(f"2/7 build {settings.references} independent text references (LSA, SimCSE students; the null)")
    summary["references"] = _run_json("references build", [
        "references", "build", "--owner", settings.encoder, "--data", settings.dataset, "--count",
        str(settings.references), "--steps", str(settings.reference_steps), "--sentences",
        str(settings.reference_sentences), "--out", str(refs_dir)], env=env)
    done()

    done = stage("3/7 make an independent text encoder (SimCSE on other documents, its own seed)")
    built = _run_json("independent", [
        "references", "build", "--owner", settings.encoder, "--data", settings.dataset, "--count", "2", "--steps",
        str(settings.reference_steps), "--sentences", str(settings.reference_sentences), "--seed",
        str(INDEPENDENT_SEED), "--out", str(indep_pool)], env=env)
    indep = next(e for e in built["references"] if e.get("kind") == "checkpoint")
    indep_dir = indep_pool / indep["path"]
    summary["independent"] = {"out": str(indep_dir), "recipe": indep.get("recipe"), "arch": indep.get("arch"),
                              "seed": indep.get("seed"), "sentences": indep.get("sentences"),
                              "seconds": indep.get("seconds")}
    done()

    done = stage(f"4/7 serve {settings.encoder} over HTTP (OpenAI format, output watermark; separate process)")
    keys, ledger = out / "keys.json", out / "ledger.sqlite"
    for stale in (keys, ledger, out / "ledger.sqlite-wal", out / "ledger.sqlite-shm"):
        stale.unlink(missing_ok=True)
    attacker = _run_json("keys", ["keys", "add", "--keys", str(keys), "--name", "attacker", "--quota",
                                  str(settings.budget)], env=env)
    auditor = _run_json("keys", ["keys", "add", "--keys", str(keys), "--name", "owner-audit"], env=env)
    try:
        server = launch_server(settings.encoder, keys=keys, ledger=ledger, env=env, log=out / "server.log",
                               extra=["--watermark-key", str(key_file)], timeout=SERVER_START_TIMEOUT)
    except ServerStartError as exc:
        raise StageError(f"stage 'serve' failed: {exc}") from None
    done()
    verify_common = ["--owner", settings.encoder, "--references", str(refs_dir), "--watermark-key", str(key_file)]
    decisions: dict[str, dict[str, Any]] = {}
    try:
        done = stage(f"5/7 steal over HTTP ({settings.student} student, {settings.budget} sentences)")
        shutil.rmtree(stolen_dir, ignore_errors=True)
        summary["stolen"] = _run_json("steal", [
            "steal", "--api", server.url, "--key", attacker["key"], "--api-format", "openai", "--query-data",
            f"{settings.dataset}:query", "--budget", str(settings.budget), "--student", settings.student,
            "--probe-data", settings.dataset, "--victim-for-eval", settings.encoder, "--eval-size",
            str(settings.eval_size), "--epochs", str(settings.steal_epochs), "--batch-size",
            str(settings.steal_batch_size), "--lr", str(settings.steal_lr), "--min-steps",
            str(settings.steal_min_steps), "--ledger", str(ledger), "--seed", str(settings.seed + 2), "--out",
            str(stolen_dir)], env=env)
        done()
        done = stage("6/7 verify the watermarked API itself (over HTTP, the owner's audit key)")
        decisions["victim"] = _run_json("verify all victim", [
            "verify", "all", *verify_common, "--suspect-api", server.url, "--suspect-key", auditor["key"],
            "--api-format", "openai"], env=env)
    finally:
        server.stop()
    summary["server"] = {"url": server.url, "exit_code": server.proc.returncode, "log": str(server.log_path)}
    for suspect, folder in (("stolen", stolen_dir), ("independent", indep_dir)):
        decisions[suspect] = _run_json(f"verify all {suspect}", [
            "verify", "all", *verify_common, "--suspect", str(folder)], env=env)
    stolen = summary["stolen"]
    summary["victim"] = {"model": settings.encoder, "served_with": f"output-watermark (strength {settings.strength})",
                         "linear_acc": stolen.get("victim_linear_acc"), "knn_acc": stolen.get("victim_knn_acc")}
    verdicts: list[dict[str, Any]] = []
    combined: list[dict[str, Any]] = []
    for suspect in ("victim", "stolen", "independent"):
        decision = decisions[suspect]
        verdicts += _verdict_rows(suspect, decision)
        combined.append({"suspect": suspect, "verdict": decision["verdict"], "combined_p": decision["combined_p"],
                         "family": decision.get("family", []), "reason": decision.get("reason")})
    summary["verdicts"] = verdicts
    summary["combined"] = combined
    summary["test_relied_on"] = ("output-watermark (serving-time watermark, aligned, calibrated on the text "
                                 "references); dataset inference and the training-time watermark do not apply to a "
                                 "pretrained text encoder")
    done()

    done = stage("7/7 write summary.json and report.html")
    summary["expected"] = dict(EXPECTED)
    summary["decisions"] = {c["suspect"]: c["verdict"] for c in combined}
    summary["wrong_decisions"] = [c for c in combined if not (
        c["verdict"] == "stolen" if EXPECTED[c["suspect"]] == "stolen" else c["verdict"] != "stolen")]
    summary["wrong_verdicts"] = [v for v in verdicts if v["verdict"] == "stolen" and v["suspect"] == "independent"
                                 or v["verdict"] == "independent" and v["suspect"] != "independent"]
    summary["all_decisions_right"] = not summary["wrong_decisions"]
    summary["all_verdicts_right"] = not summary["wrong_verdicts"]
    summary["seconds"] = time.perf_counter() - started
    return finish_run(out, summary, started, done)


#: The settings each reusable artifact of a run depends on (anything else may change between runs).
_MADE_FROM = {"watermark.key": ("encoder", "dataset", "strength", "probes", "align"),
              "references": ("dataset", "references", "reference_steps", "reference_sentences"),
              "independent": ("dataset", "reference_steps", "reference_sentences")}


def _forget_stale(out: Path, settings: TextDemoSettings, paths: tuple[Path, ...]) -> None:
    """Delete the key, references or independent encoder when the settings they were made with changed."""
    record = out / "settings.json"
    now = asdict(settings)
    try:
        previous = json.loads(record.read_text()) if record.is_file() else {}
    except json.JSONDecodeError:
        previous = {}
    for path in paths:
        fields = _MADE_FROM.get(path.name, tuple(now))
        if any(previous.get(f) != now[f] for f in fields):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    atomic_write_bytes(record, (json.dumps(now, indent=2) + "\n").encode())


def text_summary_table(summary: dict[str, Any]) -> str:
    """The short table the text demo prints: model, probe accuracy, fidelity, retrieval agreement, sentences paid,
    the output-watermark p-value and share carried, the decision."""
    by = {(v["suspect"], v["method"]): v for v in summary.get("verdicts", [])}
    decided = {c["suspect"]: c for c in summary.get("combined", [])}

    def fmt(value: Any, spec: str) -> str:
        return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"

    header = (f"{'model':<12}{'linear':>8}{'fidelity':>10}{'retrieval':>10}{'queries':>9}{'OWM p':>9}{'carried':>9}"
              f"  decision")
    lines = [header, "-" * len(header)]
    for name in ("victim", "stolen", "independent"):
        entry = summary.get(name) or {}
        owm, comb = by.get((name, "output-watermark"), {}), decided.get(name, {})
        lines.append(f"{name:<12}{fmt(entry.get('linear_acc'), '.4f'):>8}{fmt(entry.get('fidelity_cosine'), '.4f'):>10}"
                     f"{fmt(entry.get('retrieval_agreement'), '.3f'):>10}{fmt(entry.get('queries_paid'), 'd'):>9}"
                     f"{fmt(owm.get('p_value'), '.2g'):>9}{fmt(owm.get('effect'), '.3f'):>9}"
                     f"  {comb.get('verdict', '-')}")
    stolen = summary.get("stolen") or {}
    if isinstance(stolen.get("tokens_paid"), int):
        lines.append(f"the thief paid {stolen['tokens_paid']:,} tokens (~${stolen.get('estimated_cost_usd', 0):.4f} "
                     f"at ${stolen.get('price_per_million_tokens')}/M tokens)")
    return "\n".join(lines)
