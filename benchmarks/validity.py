"""Validity benchmark of the ownership verdicts: false positives on innocent encoders, power on stolen copies.

Every innocent encoder here was trained by this script and is NOT in the owner's reference set (other seeds,
recipes, architectures and data). For each of ``--draws`` verification draws (a fresh secret watermark key and a
fresh dataset-inference seed per draw) every innocent (and, on the first draw, every copy) is tested by the watermark
(calibrated on the reference set), by dataset inference, and by the combined decision (``verify all``'s rule). One row
per (draw, suspect) goes to ``rows.csv``; ``summary.json`` holds the false-positive rates with their 95 %
Clopper-Pearson upper bounds and the detection rate per copy loss and budget.

    .venv/bin/python benchmarks/validity.py --owner runs/val/owner --refs runs/val/refs --work runs/val \\
        --out benchmarks/out/validity

Stages (each resumable: finished models and finished draws are kept): ``innocents`` trains the innocent encoders,
``copies`` steals copies from the owner (owner-side, no HTTP), ``tests`` runs the draws, ``copycheck`` tests the owner's
own copy on every draw (``verify all --copy-check``), ``summary`` writes the table.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch

from encoderguard.api import LocalAPI
from encoderguard.data import SplitSpec, load_split, owner_spec, owner_split
from encoderguard.models import ModelCard, load_checkpoint, read_card, save_checkpoint
from encoderguard.models.random_init import null_encoders
from encoderguard.models.verify_key import VerifyKey
from encoderguard.verify.dataset_inference import DatasetInference
from encoderguard.verify.decision import MethodResult, combine
from encoderguard.verify.references import MLP_KWARGS, ReferencePlan, ReferenceSet, train_reference
from encoderguard.verify.stats import binomial_confidence_interval
from encoderguard.verify.watermark import WatermarkVerifier

LOSSES = ("mse", "infonce", "softnn")
BUDGETS = (1000, 2000)
COPY_SEEDS = (0, 1, 2, 3, 4)
INNOCENT_SEED = 2_000_000


def innocent_plans(owner: ModelCard) -> list[tuple[ReferencePlan, str, int]]:
    """(plan, data, images) of the innocent encoders: kinds an owner meets, the same-recipe ones first."""
    own = {**owner.arch_kwargs, "embed_dim": owner.embed_dim}
    mlp = {**MLP_KWARGS, "embed_dim": owner.embed_dim}
    small = {**own, "width": 16}
    avg = {**own, "pool": "avg"}
    rows: list[tuple[str, str, str, dict[str, Any], int, str, int]] = [
        # (kind, recipe, arch, kwargs, epochs, data, images)
        ("same-recipe", "simclr", owner.arch, own, 240, "query", 500),
        ("same-recipe", "simclr", owner.arch, own, 240, "query", 500),
        ("same-recipe", "simclr", owner.arch, own, 120, "query", 500),
        ("same-recipe", "simclr", owner.arch, own, 120, "query", 1000),
        ("same-recipe", "simclr", owner.arch, own, 60, "query", 500),
        ("same-recipe", "simclr", owner.arch, own, 60, "query", 2000),
        ("other-arch", "simclr", owner.arch, small, 120, "query", 500),
        ("other-arch", "simclr", owner.arch, avg, 60, "query", 2000),
        ("other-arch", "simclr", "mlp", mlp, 120, "query", 1000),
        ("supervised", "supervised", owner.arch, own, 30, "query", 2000),
        ("supervised", "supervised", owner.arch, own, 10, "query", 500),
        ("supervised", "supervised", "mlp", mlp, 30, "query", 2000),
        ("supervised", "supervised", owner.arch, small, 20, "query", 1000),
        ("autoencoder", "autoencoder", owner.arch, own, 30, "query", 2000),
        ("autoencoder", "autoencoder", owner.arch, own, 10, "query", 500),
        ("autoencoder", "autoencoder", "mlp", mlp, 30, "query", 2000),
        ("autoencoder", "autoencoder", owner.arch, small, 20, "query", 1000),
        ("other-data", "simclr", owner.arch, own, 120, "mnist", 500),
        ("other-data", "simclr", owner.arch, own, 60, "mnist", 2000),
        ("other-data", "supervised", owner.arch, own, 20, "mnist", 2000),
        ("other-data", "autoencoder", owner.arch, own, 20, "mnist", 2000),
        ("other-data", "supervised", "mlp", mlp, 30, "mnist", 2000),
        ("other-data", "simclr", "mlp", mlp, 60, "mnist", 1000),
    ]
    out = []
    for i, (kind, recipe, arch, kwargs, epochs, data, images) in enumerate(rows):
        seed = INNOCENT_SEED + i
        out.append((ReferencePlan(name=f"inn{i:02d}-{kind}-{recipe}-{arch}", recipe=recipe, arch=arch,
                                  arch_kwargs=dict(kwargs), seed=seed, sample_seed=seed + 7, epochs=epochs),
                    data, images))
    return out


def stage_innocents(args: argparse.Namespace) -> None:
    owner = read_card(args.owner)
    refs = set(ReferenceSet.load(args.refs).names())
    spec = owner_spec(owner)
    pools = {"query": (load_split(spec.with_split("query")), spec.with_split("query")),
             "mnist": (load_split(SplitSpec("mnist", "train", spec.split_seed, spec.train_size)),
                       SplitSpec("mnist", "train", spec.split_seed, spec.train_size))}
    for plan, data, images in innocent_plans(owner):
        folder = Path(args.work) / "innocents" / plan.name
        assert plan.name not in refs
        if (folder / "card.json").exists():
            continue
        pool, pool_spec = pools[data]
        entry = train_reference(plan, pool, pool_spec, folder, images=images, owner_card=owner)
        print(json.dumps({"innocent": plan.name, "seconds": entry["seconds"]}), flush=True)


def stage_copies(args: argparse.Namespace) -> None:
    from encoderguard.attacks import StealingAttack
    from encoderguard.attacks.thieves import thief_settings

    owner = load_checkpoint(args.owner)
    query = owner_split(owner.card, "query")
    # Copies per loss with today's StealingAttack, plus copies of every --thief recipe (encoderguard.attacks.thieves;
    # its loss and training settings, the same epochs): a verifier is only as good as the thief it was measured on.
    makers = [(loss, {"loss": loss}) for loss in LOSSES]
    makers += [(f"thief_{name}", {**thief_settings(name), "epochs": args.copy_epochs}) for name in args.thief]
    for label, settings in makers:
        for budget in BUDGETS:
            for seed in COPY_SEEDS:
                folder = Path(args.work) / "copies" / f"{label}-{budget}-s{seed}"
                if (folder / "card.json").exists():
                    continue
                started = time.perf_counter()
                attack = StealingAttack(LocalAPI(owner.encoder), budget=budget, cache_dir=folder / "query_cache",
                                        **{"epochs": args.copy_epochs, **settings}, seed=100 + seed, progress=False)
                loss = str(settings["loss"])
                result = attack.extract(query)
                card = ModelCard(arch=result.encoder.arch, arch_kwargs={}, input_shape=result.encoder.input_shape,
                                 embed_dim=result.encoder.embed_dim, data=None,
                                 training={"method": "steal", "loss": loss, "budget": budget, "seed": 100 + seed,
                                           "epochs": args.copy_epochs},
                                 metrics={"seconds": time.perf_counter() - started})
                save_checkpoint(folder, encoder=result.encoder, card=card)
                print(json.dumps({"copy": folder.name, "seconds": time.perf_counter() - started}), flush=True)


KINDS = ("same-recipe", "other-arch", "supervised", "autoencoder", "other-data")


def _suspects(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """(name, kind, folder) of every suspect: innocents then copies."""
    out = []
    for folder in sorted((Path(args.work) / "innocents").iterdir()):
        if not (folder / "card.json").exists():
            continue
        kind = next(k for k in KINDS if folder.name.split("-", 1)[1].startswith(k + "-"))
        out.append((folder.name, f"innocent:{kind}", str(folder)))
    for folder in sorted((Path(args.work) / "copies").iterdir()):
        if (folder / "card.json").exists():
            loss, budget, _ = folder.name.split("-")
            out.append((folder.name, f"copy:{loss}:{budget}", str(folder)))
    return out


def draw_tests(owner: Any, refs: list[Any], draw: int, *, wm_queries: int, alpha: float
               ) -> tuple[dict[str, WatermarkVerifier], DatasetInference]:
    """The tests of one draw: the watermark without and with alignment (its own secret key) and dataset inference
    (its own seed, 3 null encoders), all fitted once for every suspect of the draw."""
    key = VerifyKey(hashlib.sha256(f"encoderguard-validity-draw-{draw}".encode()).digest())
    verifiers = {align: WatermarkVerifier(owner, references=refs, key=key, max_queries=wm_queries, alpha=alpha,
                                          align=align) for align in ("none", "auto")}
    train, heldout = owner_split(owner.card, "owner-train"), owner_split(owner.card, "owner-heldout")
    di = DatasetInference(seed=1000 + draw, alpha=alpha).fit(members=train, nonmembers=heldout, owner=owner.encoder,
                                                            null_models=null_encoders(owner.encoder, 3))
    return verifiers, di


def stage_tests(args: argparse.Namespace) -> None:
    owner = load_checkpoint(args.owner)
    refs = ReferenceSet.load(args.refs).references()
    suspects = _suspects(args)
    rows_dir = Path(args.work) / "rows"
    rows_dir.mkdir(parents=True, exist_ok=True)
    for draw in range(args.first_draw, args.draws):
        path = rows_dir / f"draw{draw:02d}.jsonl"
        if path.exists():
            continue
        started = time.perf_counter()
        verifiers, di = draw_tests(owner, refs, draw, wm_queries=args.wm_queries, alpha=args.alpha)
        rows = []
        for name, kind, folder in suspects:
            if kind.startswith("copy") and draw >= args.copy_draws:
                continue
            encoder = load_checkpoint(folder).encoder
            d = di.verify(LocalAPI(encoder))
            row: dict[str, Any] = {"draw": draw, "suspect": name, "kind": kind, "di_p": d.p_value,
                                   "di_verdict": d.verdict, "di_can_detect": d.details["can_detect"]}
            for align, verifier in verifiers.items():
                w = verifier.verify(LocalAPI(encoder))
                decision = combine([MethodResult.from_verdict(w), MethodResult.from_verdict(d)], alpha=args.alpha)
                tag = "wm" if align == "none" else "wm_aligned"
                row.update({f"{tag}_accuracy": w.statistic, f"{tag}_binomial_p": w.details["binomial_p_value"],
                            f"{tag}_p": w.p_value, f"{tag}_verdict": w.verdict,
                            f"{tag}_calibration": w.details["calibration"],
                            f"{tag}_reference_mean": w.details["reference_mean"],
                            f"{tag}_reference_sd": w.details["reference_sd"],
                            f"{tag}_owner_accuracy": w.details["owner_accuracy"],
                            f"{tag}_alignment": w.details["alignment"]["kind"],
                            f"{tag}_fit_r2": w.details["alignment"]["fit_r2"],
                            ("combined" if align == "none" else "combined_aligned") + "_p": decision.combined_p,
                            ("combined" if align == "none" else "combined_aligned") + "_verdict": decision.verdict})
            rows.append(row)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        tmp.replace(path)
        print(json.dumps({"draw": draw, "rows": len(rows), "seconds": time.perf_counter() - started}), flush=True)


METHODS = (("watermark", "wm_verdict"), ("watermark_aligned", "wm_aligned_verdict"), ("di", "di_verdict"),
           ("combined", "combined_verdict"), ("combined_aligned", "combined_aligned_verdict"),
           ("combined_copycheck", "combined_copycheck_verdict"),
           ("combined_aligned_copycheck", "combined_aligned_copycheck_verdict"))


def stage_copycheck(args: argparse.Namespace) -> None:
    """The owner's own copy (infonce, 2,000 queries, 30 epochs, seed 900: none of the benchmark copies) tested by
    every method on every draw, as ``verify all --copy-check`` does before it tests a suspect."""
    from encoderguard.attacks import StealingAttack

    owner = load_checkpoint(args.owner)
    folder = Path(args.work) / "owner-copy"
    if not (folder / "card.json").exists():
        query = owner_split(owner.card, "query")
        result = StealingAttack(LocalAPI(owner.encoder), loss="infonce", budget=2000, cache_dir=folder / "query_cache",
                                epochs=args.copy_epochs, seed=900, progress=False).extract(query)
        card = ModelCard(arch=result.encoder.arch, arch_kwargs={}, input_shape=result.encoder.input_shape,
                         embed_dim=result.encoder.embed_dim, training={"method": "steal", "loss": "infonce",
                                                                       "budget": 2000, "seed": 900})
        save_checkpoint(folder, encoder=result.encoder, card=card)
    copy = load_checkpoint(folder).encoder
    refs = ReferenceSet.load(args.refs).references()
    out = {}
    for draw in range(args.draws):
        verifiers, di = draw_tests(owner, refs, draw, wm_queries=args.wm_queries, alpha=args.alpha)
        row = {"wm" if align == "none" else "wm_aligned": v.verify(LocalAPI(copy)).p_value
               for align, v in verifiers.items()}
        row["di"] = di.verify(LocalAPI(copy)).p_value
        out[str(draw)] = row
        print(json.dumps({"copycheck_draw": draw, **row}), flush=True)
    (Path(args.work) / "owner-copy.json").write_text(json.dumps(out, indent=2) + "\n")


def gated_decision(row: dict[str, Any], check: dict[str, float] | None, tag: str, alpha: float) -> str:
    """``verify all``'s decision on one row, with the owner's copy check narrowing the family."""
    def method(name: str, p: float, verdict: str, sees: bool | None) -> MethodResult:
        return MethodResult(method=name, verdict=verdict, p_value=p, calibrated=True, can_detect=True,
                            sees_copies=sees)

    methods = [method("watermark", row[f"{tag}_p"], row[f"{tag}_verdict"],
                      None if check is None else check[tag] < alpha),
               method("di", row["di_p"], row["di_verdict"], None if check is None else check["di"] < alpha)]
    return combine(methods, alpha=alpha).verdict


def _rate(hits: int, n: int) -> dict[str, Any]:
    low, high = binomial_confidence_interval(hits, n) if n else (0.0, 1.0)
    return {"hits": hits, "n": n, "rate": hits / n if n else None, "ci95": [low, high],
            "upper95_one_sided": binomial_confidence_interval(hits, n, confidence=0.90)[1] if n else None}


def stage_summary(args: argparse.Namespace) -> None:
    rows = [json.loads(line) for p in sorted((Path(args.work) / "rows").glob("draw*.jsonl"))
            for line in p.read_text().splitlines()]
    checks_path = Path(args.work) / "owner-copy.json"
    checks = json.loads(checks_path.read_text()) if checks_path.exists() else None
    for r in rows:
        check = None if checks is None else checks[str(r["draw"])]
        r["combined_copycheck_verdict"] = gated_decision(r, check, "wm", args.alpha)
        r["combined_aligned_copycheck_verdict"] = gated_decision(r, check, "wm_aligned", args.alpha)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fields = list(rows[0])
    with (out / "rows.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    innocent = [r for r in rows if r["kind"].startswith("innocent")]
    summary: dict[str, Any] = {"alpha": args.alpha, "draws": args.draws, "wm_queries": args.wm_queries,
                               "owner_copy_check": checks,
                               "innocent_tests": len(innocent), "false_positives": {}, "by_kind": {}, "power": {}}
    methods = METHODS
    for method, key in methods:
        summary["false_positives"][method] = _rate(sum(r[key] == "stolen" for r in innocent), len(innocent))
    for tag in ("wm", "wm_aligned"):
        hits = sum(r[f"{tag}_binomial_p"] < args.alpha for r in innocent)
        summary["false_positives"][f"{tag}_binomial_uncalibrated"] = _rate(hits, len(innocent))
    for kind in sorted({r["kind"] for r in innocent}):
        sub = [r for r in innocent if r["kind"] == kind]
        summary["by_kind"][kind] = {m: _rate(sum(r[k] == "stolen" for r in sub), len(sub)) for m, k in methods}
    for kind in sorted({r["kind"] for r in rows if r["kind"].startswith("copy")}):
        sub = [r for r in rows if r["kind"] == kind]
        summary["power"][kind] = {m: _rate(sum(r[k] == "stolen" for r in sub), len(sub)) for m, k in methods}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary["false_positives"], indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stages", nargs="*", default=["innocents", "copies", "tests", "copycheck", "summary"])
    p.add_argument("--owner", required=True)
    p.add_argument("--refs", required=True)
    p.add_argument("--work", required=True, help="models and per-draw rows")
    p.add_argument("--out", required=True, help="rows.csv and summary.json (committed)")
    p.add_argument("--draws", type=int, default=9)
    p.add_argument("--first-draw", type=int, default=0, help="skip the draws before this one (to split the work)")
    p.add_argument("--copy-draws", type=int, default=1, help="draws on which the copies are tested (from draw 0)")
    p.add_argument("--copy-epochs", type=int, default=30)
    p.add_argument("--thief", action="append", default=[], metavar="NAME",
                   help="also make copies with this named recipe of encoderguard.attacks.thieves (e.g. strong; "
                        "repeatable); folders thief_NAME-BUDGET-sSEED")
    p.add_argument("--wm-queries", type=int, default=2000)
    p.add_argument("--alpha", type=float, default=0.01)
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    for stage in args.stages:
        {"innocents": stage_innocents, "copies": stage_copies, "tests": stage_tests, "copycheck": stage_copycheck,
         "summary": stage_summary}[stage](args)


if __name__ == "__main__":
    main()
