"""The serving-time watermark, measured: honest cost, detection of copies stolen through the watermarked API, false
positives on independent encoders, and a robustness matrix of the thief's post-processing, side by side with the
training-time rotation watermark on the same copies.

The owner is the validity benchmark's (``runs/val/owner``, a 128-d ConvNet on Fashion-MNIST that also carries the
rotation watermark), its 10 reference models calibrate both tests (``runs/val/refs``), its 23 independent encoders
are the innocents (``runs/val/innocents``) and its copies of the clean API (``runs/val/copies``) are the clean-copy
controls. The watermark key is made here from a fixed benchmark secret (the reported rows never tuned it: the
strength was chosen on copies with seed 900 under another secret, see results_watermark.md).

Every finished cell is one JSON line in ``OUT/rows.jsonl``; a rerun skips the cells already there, so the run can be
stopped and resumed, and several processes can split the work (``--seeds 0`` beside ``--seeds 1 2``): each claims a
cell with a lock file under ``WORK/owm/locks`` before running it. ``--summary-only`` rewrites ``OUT/summary.json``
(Wilson 95 % intervals, median p-values and shares carried) from the rows. The key is also written to
``WORK/owm/benchmark.key`` for the command line.

    nice -n 10 .venv/bin/python benchmarks/output_watermark.py --work runs/val --out benchmarks/out/output_watermark
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from encoderguard.api import LocalAPI
from encoderguard.api.delegating_api import TransformedAPI
from encoderguard.attacks.output_transforms import create_transform
from encoderguard.data import SplitSpec, load_split, owner_split
from encoderguard.defences import OutputWatermark, OutputWatermarkKey
from encoderguard.models import ModelCard, load_checkpoint, save_checkpoint
from encoderguard.models.probe import encode, probe_features
from encoderguard.models.verify_key import VerifyKey
from encoderguard.verify.output_watermark import OutputWatermarkVerifier
from encoderguard.verify.references import ReferenceSet
from encoderguard.verify.watermark import WatermarkVerifier

LOSSES = ("mse", "infonce", "softnn")
BUDGETS = (500, 1000, 2000)
SEEDS = (0, 1, 2)
ROBUST_BUDGET = 1000
OUTPUT_MAPS = ("noise-0.1", "noise-0.5", "permute-scale", "truncate-pad", "affine", "orthogonal", "pca-whiten",
               "cse-top5")
MODEL_MAPS = ("finetune",)


def wilson(hits: int, n: int, z: float = 1.959964) -> list[float | None]:
    """Wilson score 95 % interval of a rate."""
    if n == 0:
        return [None, None]
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


class Rows:
    """The rows file: one JSON line per finished cell, read back to skip done cells."""

    def __init__(self, path: Path, lock_dir: Path) -> None:
        self.path = path
        self.lock_dir = lock_dir
        path.parent.mkdir(parents=True, exist_ok=True)
        self.done: set[str] = set()
        if path.exists():
            self.done = {json.loads(line)["cell"] for line in path.read_text().splitlines() if line.strip()}

    def refresh(self) -> set[str]:
        """The cells finished so far by any process sharing the file (several processes may split the work)."""
        if self.path.exists():
            self.done |= {json.loads(line)["cell"] for line in self.path.read_text().splitlines() if line.strip()}
        return self.done

    def claim(self, cell: str) -> bool:
        """Claim an unfinished cell for this process (a lock file beside the rows); False if done or taken."""
        if cell in self.refresh():
            return False
        lock = self.lock_dir / cell.replace(":", "_").replace("/", "_")
        lock.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.close(os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return False
        return True

    def add(self, row: dict[str, Any]) -> None:
        with self.path.open("a") as sink:
            sink.write(json.dumps(row) + "\n")
        self.done.add(row["cell"])
        print(json.dumps({k: row[k] for k in row if not isinstance(row[k], (dict, list))}), flush=True)


def benchmark_key(owner: Any, *, strength: float, secret_tag: str) -> OutputWatermarkKey:
    """The benchmark's key: a fixed secret (reproducible rows), calibrated on the owner's clean answers."""
    spec = SplitSpec.from_dict({**owner.card.data, "split": "test"})
    secret = hashlib.sha256(f"encoderguard-output-watermark-{secret_tag}".encode()).digest()
    key = OutputWatermarkKey(secret, strength=strength, data=spec.to_dict(), probes=1000, align=2000)
    return key.calibrate(LocalAPI(owner.encoder), load_split(spec))


def rotation_verifier(owner: Any, refs: list[Any], *, align: str, alpha: float) -> WatermarkVerifier:
    """The training-time rotation watermark test of the validity benchmark's draw 0 (its key, 2,000 queries)."""
    key = VerifyKey(hashlib.sha256(b"encoderguard-validity-draw-0").digest())
    return WatermarkVerifier(owner, references=refs, key=key, max_queries=2000, alpha=alpha, align=align)


def verdict_fields(prefix: str, verdict: Any) -> dict[str, Any]:
    d = verdict.details
    alignment = d.get("alignment") or {}
    out = {f"{prefix}_p": verdict.p_value, f"{prefix}_verdict": verdict.verdict,
           f"{prefix}_statistic": verdict.statistic, f"{prefix}_alignment": alignment.get("kind"),
           f"{prefix}_fit_r2": alignment.get("fit_r2")}
    if prefix == "ow":
        out["ow_carried"] = d.get("carried")
    return out


def steal(owner: Any, key: OutputWatermarkKey, loss: str, budget: int, seed: int, folder: Path, epochs: int) -> Any:
    """A copy stolen through the watermarked API (in process), saved and reused."""
    if (folder / "card.json").exists():
        return load_checkpoint(folder).encoder, None
    from encoderguard.attacks import StealingAttack

    started = time.perf_counter()
    api = LocalAPI(owner.encoder, defences=[OutputWatermark(key=key)], key=f"thief-{loss}-{budget}-{seed}")
    attack = StealingAttack(api, loss=loss, budget=budget, cache_dir=folder / "query_cache", epochs=epochs,
                            seed=100 + seed, progress=False)
    encoder = attack.extract(owner_split(owner.card, "query")).encoder
    seconds = time.perf_counter() - started
    card = ModelCard(arch=encoder.arch, arch_kwargs={}, input_shape=encoder.input_shape, embed_dim=encoder.embed_dim,
                     training={"method": "steal", "through": "output-watermark", "loss": loss, "budget": budget,
                               "seed": 100 + seed, "epochs": epochs}, metrics={"seconds": seconds})
    save_checkpoint(folder, encoder=encoder, card=card)
    return encoder, seconds


def thief_map(name: str, encoder: torch.nn.Module, owner: Any, seed: int) -> Any:
    """The copy behind a thief's post-processing of its answers (an EmbeddingAPI)."""
    api = LocalAPI(encoder)
    if name in ("pca-whiten", "cse-top5"):
        # fitted by the thief on its own answers to 2,000 query images (data the thief holds)
        query = owner_split(owner.card, "query")
        pick = torch.randperm(len(query), generator=torch.Generator().manual_seed(seed))[:2000]
        y = encode(encoder, query.float(pick)).double()
        mu = y.mean(0)
        _, s, vt = torch.linalg.svd(y - mu, full_matrices=False)
        if name == "pca-whiten":
            scale = s / math.sqrt(len(y) - 1)
            keep = scale > 1e-6 * scale[0]
            w = vt[keep].T / scale[keep]

            def fn(a: torch.Tensor) -> torch.Tensor:
                return ((a.double() - mu) @ w).float()

            return TransformedAPI(api, fn, dim=int(keep.sum()), name=name)
        top = vt[:5].T  # CSE-style: the top principal directions removed, the answer re-scaled to its norm

        def fn(a: torch.Tensor) -> torch.Tensor:
            x = a.double() - mu
            kept = x - (x @ top) @ top.T
            return (kept * (x.norm(dim=1, keepdim=True) / kept.norm(dim=1, keepdim=True).clamp_min(1e-12))
                    + mu).float()

        return TransformedAPI(api, fn, dim=int(encoder.embed_dim), name=name)
    fn, dim = create_transform(name, int(encoder.embed_dim), seed=seed)
    return TransformedAPI(api, fn, dim=dim, name=name)


def finetuned(folder: Path, work: Path, owner: Any) -> torch.nn.Module:
    """The copy fine-tuned by the thief with SimCLR on other data (2,000 MNIST images, 5 epochs), cached."""
    out = work / "robust-models" / f"{folder.name}-finetune"
    if (out / "card.json").exists():
        return load_checkpoint(out).encoder
    from encoderguard.train.simclr import SimCLRConfig, train_simclr

    encoder = load_checkpoint(folder).encoder
    mnist = load_split(SplitSpec("mnist", "train", 0, 500))
    sample = mnist.subset(torch.randperm(len(mnist), generator=torch.Generator().manual_seed(7))[:2000])
    config = SimCLRConfig(epochs=5, seed=7, temperature=float(owner.card.training.get("temperature", 0.5)),
                          augmentation="simclr")
    encoder.train()
    train_simclr(encoder, sample, config, work_dir=None, progress=False)
    encoder.eval()
    save_checkpoint(out, encoder=encoder, card=ModelCard(arch=encoder.arch, arch_kwargs={},
                                                         input_shape=encoder.input_shape,
                                                         embed_dim=encoder.embed_dim,
                                                         training={"method": "finetune", "from": folder.name}))
    return encoder


def stage_cost(owner: Any, key: OutputWatermarkKey, rows: Rows) -> None:
    """Honest users' cost: cosine of watermarked vs clean answers, and the linear probe on probe-test."""
    if "cost" in rows.done:
        return
    train, test = owner_split(owner.card, "probe-train"), owner_split(owner.card, "probe-test")
    marker = OutputWatermark(key=key)
    clean_tr, clean_te = encode(owner.encoder, train).double().numpy(), encode(owner.encoder, test).double().numpy()
    mark_tr, mark_te = marker.mark(clean_tr), marker.mark(clean_te)
    cos = (mark_te * clean_te).sum(1) / np.linalg.norm(mark_te, axis=1) / np.linalg.norm(clean_te, axis=1)
    clean = probe_features(clean_tr, train.labels, clean_te, test.labels)
    marked = probe_features(mark_tr, train.labels, mark_te, test.labels)
    # a paired interval of the probe change: bootstrap over probe-test images of the two probes' correctness
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    hits = []
    for x_tr, x_te in ((clean_tr, clean_te), (mark_tr, mark_te)):
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, random_state=0))
        model.fit(x_tr, train.labels)
        hits.append(model.predict(x_te) == test.labels.numpy())
    diff = hits[1].astype(float) - hits[0].astype(float)
    rng = np.random.default_rng(0)
    boots = [diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(2000)]
    rows.add({"cell": "cost", "stage": "cost", "n_test": len(test), "cosine_mean": float(cos.mean()),
              "cosine_ci95": [float(cos.mean() - 1.96 * cos.std(ddof=1) / math.sqrt(len(cos))),
                              float(cos.mean() + 1.96 * cos.std(ddof=1) / math.sqrt(len(cos)))],
              "cosine_min": float(cos.min()), "cosine_p01": float(np.quantile(cos, 0.01)),
              "linear_clean": clean.linear_acc, "linear_marked": marked.linear_acc,
              "linear_change_points": 100 * (marked.linear_acc - clean.linear_acc),
              "linear_change_ci95_points": [100 * float(np.quantile(boots, 0.025)),
                                            100 * float(np.quantile(boots, 0.975))],
              "knn_clean": clean.knn_acc, "knn_marked": marked.knn_acc})


def run(args: argparse.Namespace) -> None:
    work = Path(args.work)
    owm = work / "owm"
    rows = Rows(Path(args.out) / "rows.jsonl", owm / "locks")
    owner = load_checkpoint(work / "owner")
    refs = ReferenceSet.load(work / "refs").references()
    key = benchmark_key(owner, strength=args.strength, secret_tag=args.secret_tag)
    owm.mkdir(parents=True, exist_ok=True)
    try:  # the same key as a file, for the CLI (the README's example)
        key.save(owm / "benchmark.key")
    except FileExistsError:
        pass
    stages = set(args.stages)
    if "cost" in stages:
        stage_cost(owner, key, rows)
    ow = OutputWatermarkVerifier(key, references=refs, alpha=args.alpha, align="auto")
    ow_none = OutputWatermarkVerifier(key, references=refs, alpha=args.alpha, align="none")
    rot = rotation_verifier(owner, refs, align="auto", alpha=args.alpha)
    rot_none = rotation_verifier(owner, refs, align="none", alpha=args.alpha)

    def verify_all_tests(api: Any, *, rotation: bool = True) -> dict[str, Any]:
        out = {**verdict_fields("ow", ow.verify(api)), **verdict_fields("ow_none", ow_none.verify(api))}
        if rotation:
            for prefix, verifier in (("rot", rot), ("rot_none", rot_none)):
                try:
                    out.update(verdict_fields(prefix, verifier.verify(api)))
                except ValueError as exc:  # another answer size: the rotation head cannot read it
                    out.update({f"{prefix}_p": None, f"{prefix}_verdict": "not applicable",
                                f"{prefix}_reason": str(exc)})
        return out

    if "innocents" in stages:
        for folder in sorted(p for p in (work / "innocents").iterdir() if (p / "card.json").exists()):
            cell = f"innocent:{folder.name}"
            if rows.claim(cell):
                rows.add({"cell": cell, "stage": "innocent", "suspect": folder.name,
                          **verify_all_tests(LocalAPI(load_checkpoint(folder).encoder), rotation=False)})
        for folder in sorted(p for p in (work / "copies").iterdir() if (p / "card.json").exists()):
            cell = f"clean-copy:{folder.name}"
            if folder.name.split("-")[2] in ("s0", "s1", "s2") and rows.claim(cell):
                rows.add({"cell": cell, "stage": "clean-copy", "suspect": folder.name,
                          "loss": folder.name.split("-")[0], "budget": int(folder.name.split("-")[1]),
                          **verify_all_tests(LocalAPI(load_checkpoint(folder).encoder), rotation=False)})
    def detect(budget: int, seed: int) -> None:
        for loss in LOSSES:
            name = f"{loss}-{budget}-s{seed}"
            if "detect" in stages and budget in args.budgets and rows.claim(f"detect:{name}"):
                encoder, seconds = steal(owner, key, loss, budget, seed, owm / "copies" / name, args.copy_epochs)
                rows.add({"cell": f"detect:{name}", "stage": "detect", "loss": loss, "budget": budget,
                          "seed": seed, "steal_seconds": seconds, **verify_all_tests(LocalAPI(encoder))})

    def robust(seed: int) -> None:
        for loss in LOSSES:
            name = f"{loss}-{ROBUST_BUDGET}-s{seed}"
            folder = owm / "copies" / name
            if "robust" not in stages or not (folder / "card.json").exists():
                continue
            for i, transform in enumerate(OUTPUT_MAPS + MODEL_MAPS):
                cell = f"robust:{transform}:{name}"
                if transform not in args.transforms or not rows.claim(cell):
                    continue
                started = time.perf_counter()
                if transform == "finetune":
                    api: Any = LocalAPI(finetuned(folder, owm, owner))
                else:
                    api = thief_map(transform, load_checkpoint(folder).encoder, owner, 1000 + 10 * seed + i)
                rows.add({"cell": cell, "stage": "robust", "transform": transform, "copy": name, "loss": loss,
                          "seed": seed, **verify_all_tests(api), "seconds": time.perf_counter() - started})

    # The order puts a complete first slice (every loss at the target budget, and its robustness) first, so that a
    # run cut short still has every kind of cell.
    for seed in args.seeds:
        detect(ROBUST_BUDGET, seed)
        robust(seed)
    for budget in (500, 2000):
        for seed in args.seeds:
            detect(budget, seed)
    summarise(args)


def summarise(args: argparse.Namespace) -> None:
    path = Path(args.out) / "rows.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def rate(members: list[dict[str, Any]], field: str) -> dict[str, Any]:
        usable = [r for r in members if r.get(field) not in (None, "not applicable")]
        hits = sum(r[field] == "stolen" for r in usable)
        prefix = field[: -len("_verdict")]
        ps = [r[f"{prefix}_p"] for r in usable if r.get(f"{prefix}_p") is not None]
        out = {"hits": hits, "n": len(usable), "rate": hits / len(usable) if usable else None,
               "wilson95": wilson(hits, len(usable)), "p_median": float(np.median(ps)) if ps else None,
               "p_min": min(ps) if ps else None, "p_max": max(ps) if ps else None}
        carried = [r[f"{prefix}_carried"] for r in usable if r.get(f"{prefix}_carried") is not None]
        if carried:
            out["carried_median"] = float(np.median(carried))
        return out

    summary: dict[str, Any] = {"alpha": args.alpha, "strength": args.strength,
                               "copy_epochs": args.copy_epochs}
    summary["cost"] = next((r for r in rows if r["stage"] == "cost"), None)
    detect = [r for r in rows if r["stage"] == "detect"]
    summary["detection"] = {f"{loss}-{budget}": {m: rate([r for r in detect if r["loss"] == loss
                                                           and r["budget"] == budget], f"{m}_verdict")
                                                 for m in ("ow", "ow_none", "rot", "rot_none")}
                            for loss in LOSSES for budget in sorted({r["budget"] for r in detect})}
    summary["detection_by_budget"] = {str(b): {m: rate([r for r in detect if r["budget"] == b], f"{m}_verdict")
                                               for m in ("ow", "rot")} for b in sorted({r["budget"] for r in detect})}
    innocents = [r for r in rows if r["stage"] == "innocent"]
    clean = [r for r in rows if r["stage"] == "clean-copy"]
    summary["false_positives"] = {m: rate(innocents, f"{m}_verdict") for m in ("ow", "ow_none")}
    summary["clean_copies"] = {m: rate(clean, f"{m}_verdict") for m in ("ow", "ow_none")}
    summary["innocent_p_min"] = min((r["ow_p"] for r in innocents), default=None)
    summary["clean_copy_p_min"] = min((r["ow_p"] for r in clean), default=None)
    robust = [r for r in rows if r["stage"] == "robust"]
    summary["robustness"] = {t: {m: rate([r for r in robust if r["transform"] == t], f"{m}_verdict")
                                 for m in ("ow", "ow_none", "rot", "rot_none")}
                             for t in dict.fromkeys(r["transform"] for r in robust)}
    summary["robustness"]["none"] = {m: rate([r for r in detect if r["budget"] == ROBUST_BUDGET], f"{m}_verdict")
                                     for m in ("ow", "ow_none", "rot", "rot_none")}
    (Path(args.out) / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="runs/val")
    p.add_argument("--out", default="benchmarks/out/output_watermark")
    p.add_argument("--stages", nargs="*", default=["cost", "innocents", "detect", "robust"])
    p.add_argument("--budgets", nargs="*", type=int, default=list(BUDGETS))
    p.add_argument("--seeds", nargs="*", type=int, default=list(SEEDS),
                   help="copy seeds this process steals (two processes may split the seeds; rows are appended)")
    p.add_argument("--transforms", nargs="*", default=list(OUTPUT_MAPS + MODEL_MAPS))
    p.add_argument("--strength", type=float, default=0.2)
    p.add_argument("--secret-tag", default="benchmark")
    p.add_argument("--copy-epochs", type=int, default=15)
    p.add_argument("--alpha", type=float, default=0.01)
    p.add_argument("--summary-only", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.summary_only:
        summarise(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
