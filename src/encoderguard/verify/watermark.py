"""Ownership test by the secret rotation watermark (Dziedzic et al., ICML 2022, section 5).

The owner trained its encoder jointly with a small head that tells whether an image was rotated by an angle in
``[0, 180)`` or in ``[180, 360)`` degrees (:mod:`encoderguard.train.watermark_task`). The head and the task stay
secret. To test a suspect, the owner rotates images the head never saw (its ``owner-heldout`` split, with the
card's secret verification seed), asks the suspect for their representations and reads them with its own head. An
encoder that did not inherit the watermark gives predictions unrelated to the rotation, so on a balanced set its
accuracy would be ``Binomial(n, 0.5) / n`` if every independent encoder were a coin flip to the head.

It is not: the head reads the generic orientation features that any encoder of upright images has, so every
independent encoder has its own chance level (between-encoder sd about 0.01-0.02, against a binomial sd of 0.016 at
n = 1000), and the binomial test's real false-positive rate is several times alpha. The verdict therefore comes from
reference models (:mod:`encoderguard.verify.references`: independent encoders that cannot descend from the owner)
read by the same head on the same secret verification set: an exact rank test when there are at least ``1 / alpha``
of them, otherwise a random-effects prediction test
(:func:`~encoderguard.verify.stats.prediction_p_value`). Without references the binomial p-value is reported under
``details["binomial_p_value"]`` but never yields "stolen".

The verification set (images, angles, order) is drawn with the owner's secret key
(:class:`~encoderguard.models.verify_key.VerifyKey`), never with a public seed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from encoderguard.api.protocol import EmbeddingAPI
from encoderguard.data.data_set import images_only
from encoderguard.data.image_set import ImageSet
from encoderguard.data.splits import load_split, owner_spec, owner_split
from encoderguard.errors import CheckpointError, DataError
from encoderguard.models.card import ModelCard
from encoderguard.models.checkpoint import Checkpoint, load_checkpoint
from encoderguard.models.verify_key import VERIFY_KEY_FILE, VerifyKey
from encoderguard.train.watermark_task import VerificationSeeds, verification_rotations
from encoderguard.verify.alignment import ALIGNMENTS, fit_alignment
from encoderguard.verify.answers import check_answers
from encoderguard.verify.stats import (
    binomial_confidence_interval,
    binomial_test_greater,
    binomial_test_less,
    calibrated_accuracy_p_value,
    min_successes_greater,
)
from encoderguard.verify.verdict import Verdict, decide

VERIFY_SPLIT = "owner-heldout"
# Training splits that never overlap owner-heldout (owner-heldout is carved from the owner half after owner-train;
# query is the other half; the probe splits come from the test part).
_DISJOINT_TRAINING_SPLITS = ("owner-train", "query", "probe-train", "probe-test")
# Head predicting one class this often: the suspect's representations sit outside the head's working range.
_ONE_CLASS_SHARE = 0.9
# Fewest reference models for the prediction test, and the count below which its normal model is flagged as weak.
MIN_REFERENCES = 3
FEW_REFERENCES = 8


class NamedAPI(Protocol):
    """A reference model as the verifiers see it: a name and an EmbeddingAPI."""

    @property
    def name(self) -> str: ...

    @property
    def api(self) -> EmbeddingAPI: ...


class WatermarkVerifier:
    """Test whether a suspect encoder carries the owner's rotation watermark.

    Args:
        owner: the owner's checkpoint (a directory or a loaded :class:`~encoderguard.models.Checkpoint`) holding a
            ``watermark_head``, or its :class:`~encoderguard.models.ModelCard` together with ``head``.
        head: the watermark head ``[N, D] -> [N, 2]``, needed only when ``owner`` is a card.
        references: independent reference models (objects with ``.name`` and ``.api``, e.g.
            :class:`~encoderguard.verify.references.Reference`) read by the same head on the same images; they
            calibrate the test. Models with another representation size or input shape are left out (listed in
            ``details["references_skipped"]``). Without at least ``MIN_REFERENCES`` usable ones the test is
            uncalibrated and never answers "stolen".
        key: the owner's secret verification key; ``None`` reads ``watermark-verify-key.json`` from the owner's
            checkpoint directory when ``owner`` is a directory.
        max_queries: most images sent to the suspect (verification images plus decoys). The verification set is
            the largest even number of images that fits, so its two classes are exactly balanced.
        alpha: significance level; ``p < alpha`` gives ``"stolen"``.
        seed: draws the verification set from this integer instead of the key (benchmarks; a seed is not secret).
            With neither key nor seed, an old card's public ``watermark.verify_seed`` is used, with a warning.
        decoys: fraction of the budget spent on un-rotated owner-heldout images mixed in among the rotated ones,
            so that the suspect does not receive a batch made only of rotated images. Decoy answers are discarded.
        null_accuracy: accuracy of the binomial test reported in ``details`` (default 0.5, chance on the balanced
            set). Not used for the verdict.
        mirror: mirror (flip left-right) a random half of each class of rotated images; a mirrored image's
            rotation class is the opposite one. An encoder whose head output does not change under a mirror then
            scores exactly 0.5 in expectation; the victim and its copies lose accuracy on the mirrored half.
        match_scale: rescale every model's answers by one global factor so that their mean norm equals the owner's
            on the same images before the head reads them (copies trained with a scale-free loss such as InfoNCE
            answer at another scale). Needs the owner's encoder or the card's ``watermark.embed_norm``.
        data_dir: folder of the named datasets, to rebuild ``owner-heldout`` from the card's ``data``.
        images: verification images to use instead of the card's ``owner-heldout`` split; they must be images the
            watermark head was not trained on.
        align: map every model's answers into the owner's space before the head reads them
            (:mod:`encoderguard.verify.alignment`: ``"none"`` (default), ``"auto"``, ``"orthogonal"``, ``"linear"``,
            ``"permutation"``), fitted per model on ``align_queries`` images of the owner's ``query`` split sent in
            the same shuffled request; the references are aligned the same way. Undoes a thief's rotation,
            permutation or rescaling of the copy's answers; needs the owner's encoder.
        align_queries: alignment images per model (counted in ``queries_used``).
        align_images: alignment images to use instead of the owner's ``query`` split.

    Raises:
        CheckpointError: the owner has no watermark head ("train the owner with --watermark"), or no key and no
            seed to draw the verification set with.
        DataError: the card does not say which data the owner used, or the owner's training split overlaps
            ``owner-heldout`` (pass ``images``).
        ValueError: a bad setting (quoted).

    Example:
        >>> refs = ReferenceSet.load("runs/refs").references()  # doctest: +SKIP
        >>> verifier = WatermarkVerifier("runs/victim", references=refs)  # doctest: +SKIP
        >>> verdict = verifier.verify(LocalAPI(load_encoder("runs/stolen")))  # doctest: +SKIP
        >>> verdict.verdict, verdict.details["calibration"]  # doctest: +SKIP
        ('stolen', 'prediction')
    """

    def __init__(self, owner: str | os.PathLike[str] | Checkpoint | ModelCard, *, head: nn.Module | None = None,
                 references: Sequence[NamedAPI] = (), key: VerifyKey | None = None,
                 max_queries: int = 1000, alpha: float = 0.01, seed: int | None = None, decoys: float = 0.0,
                 null_accuracy: float = 0.5, mirror: bool = False, match_scale: bool = True,
                 data_dir: str | None = None,
                 images: ImageSet | None = None, align: str = "none", align_queries: int = 1000,
                 align_images: ImageSet | None = None) -> None:
        if isinstance(max_queries, bool) or not isinstance(max_queries, int) or max_queries < 2:
            raise ValueError(f"max_queries must be an integer >= 2, got {max_queries!r}")
        if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
            raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
        if not (isinstance(null_accuracy, (int, float)) and 0 < null_accuracy < 1):
            raise ValueError(f"null_accuracy must be in (0, 1), got {null_accuracy!r}")
        if not (isinstance(decoys, (int, float)) and 0 <= decoys < 1):
            raise ValueError(f"decoys must be a fraction in [0, 1), got {decoys!r}")
        if align not in ALIGNMENTS:
            raise ValueError(f"align must be one of {ALIGNMENTS}, got {align!r}")
        if isinstance(align_queries, bool) or not isinstance(align_queries, int) or align_queries < 10:
            raise ValueError(f"align_queries must be an integer >= 10, got {align_queries!r}")
        self.source = str(owner) if isinstance(owner, (str, os.PathLike)) else type(owner).__name__
        if key is None and seed is None and isinstance(owner, (str, os.PathLike)):
            key_path = Path(owner) / VERIFY_KEY_FILE
            key = VerifyKey.load(key_path) if key_path.exists() else None
        self.card, self.head, self.owner_encoder = _owner_parts(owner, head)
        watermark = self.card.watermark or {}
        self.setup_warnings: list[str] = []
        if seed is not None:
            self.seeds = VerificationSeeds.from_seed(seed)
            self.draw = f"seed {seed} (not secret)"
        elif key is not None:
            expected = watermark.get("verify_key_fingerprint")
            if expected not in (None, key.fingerprint):
                self.setup_warnings.append(f"the verification key (fingerprint {key.fingerprint}) is not the one "
                                           f"the card's heldout_acc was measured with ({expected}): a new, equally "
                                           "valid verification set")
            self.seeds = VerificationSeeds.from_key(key)
            self.draw = f"secret key {key.fingerprint}"
        elif isinstance(watermark.get("verify_seed"), int):
            self.seeds = VerificationSeeds.from_seed(int(watermark["verify_seed"]))
            self.draw = f"the card's public verify_seed {watermark['verify_seed']}"
            self.setup_warnings.append("the verification set is drawn from the seed stored in the public card: a "
                                       "thief who reads it knows the verification images; create a secret key "
                                       "(encoderguard.models.verify_key.VerifyKey) and pass it")
        else:
            raise CheckpointError(f"{self.source}: no verification key ({VERIFY_KEY_FILE} next to the checkpoint) "
                                  "and no seed: the watermark verification set cannot be drawn")
        self.references = list(references)
        self.max_queries = max_queries
        self.alpha = float(alpha)
        self.decoys = float(decoys)
        self.null_accuracy = float(null_accuracy)
        self.mirror = bool(mirror)
        self.match_scale = bool(match_scale)
        self.data_dir = data_dir
        self._images = images
        self.align = align
        self.align_queries = align_queries if align != "none" else 0
        self._align_images = align_images
        if align != "none" and self.owner_encoder is None:
            raise ValueError("align needs the owner's encoder (its answers to the alignment images): pass the "
                             "owner's checkpoint, not only its card")
        n_decoys = int(self.decoys * max_queries)
        self.n_decoys = n_decoys
        self.n_verify = (max_queries - n_decoys) // 2 * 2
        if self.n_verify < 2:
            raise ValueError(f"max_queries={max_queries} with decoys={decoys} leaves fewer than 2 verification images")

    # ------------------------------------------------------------------------------------------------ set-up
    def verification_images(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """The secret verification set, rebuilt deterministically (no suspect queries).

        Returns:
            ``(rotated [n, C, H, W], labels [n], decoys [m, C, H, W], info)``: ``n`` rotated owner-heldout images
            (exactly half of each class; with ``mirror``, half of each class mirrored and relabelled), ``m``
            un-rotated decoy images, and ``info`` (where they came from, ``mirrored`` mask ``[n]``).

        Raises:
            DataError: too few images, a missing split description, or a training split overlapping the
                verification split.
        """
        pool, source = self._pool()
        c, h, w = self.card.input_shape or (0, 0, 0)
        if pool.input_shape != (c, h, w):
            raise DataError(f"verification images are {pool.input_shape} but the owner takes {(c, h, w)}")
        n = min(self.n_verify, len(pool) // 2 * 2)
        if n < 2:
            raise DataError(f"{source} has {len(pool)} images; the watermark test needs at least 2")
        m = min(self.n_decoys, len(pool) - n)
        images = pool.float()
        rotated, labels, chosen = verification_rotations(images, n, self.seeds)
        mirrored = torch.zeros(n, dtype=torch.bool)
        if self.mirror:
            generator = torch.Generator().manual_seed(self.seeds.mirror)
            for cls in (0, 1):
                members = torch.nonzero(labels == cls).flatten()
                mirrored[members[torch.randperm(len(members), generator=generator)[: len(members) // 2]]] = True
            rotated[mirrored] = rotated[mirrored].flip(-1)
            labels[mirrored] = 1 - labels[mirrored]
        unused = torch.ones(len(pool), dtype=torch.bool)
        unused[chosen] = False
        decoys = images[torch.nonzero(unused).flatten()[:m]]
        return rotated, labels, decoys, {"source": source, "n": n, "decoys": m, "mirrored": mirrored}

    def _pool(self) -> tuple[ImageSet, str]:
        if self._images is not None:
            return self._images, self._images.name
        if not self.card.data:
            raise DataError(f"{self.source}: the card does not record the owner's data split; pass images=")
        spec = owner_spec(self.card)
        if spec.split not in _DISJOINT_TRAINING_SPLITS:
            raise DataError(f"{self.source}: the owner was trained on {spec.dataset}:{spec.split}, which overlaps "
                            f"{VERIFY_SPLIT}; pass verification images the watermark head never saw (images=)")
        pool = images_only(load_split(spec.with_split(VERIFY_SPLIT), data_dir=self.data_dir),
                           purpose="the training-time watermark")
        return pool, f"{spec.dataset}:{VERIFY_SPLIT}"

    def _alignment_pool(self) -> torch.Tensor:
        """Images that fit the alignment maps: not secret (default: the owner's ``query`` split)."""
        if self._align_images is not None:
            pool = self._align_images
        else:
            if not self.card.data:
                raise DataError(f"{self.source}: the card records no data split, so there is no query split to "
                                "align with; pass align_images=")
            pool = images_only(owner_split(self.card, "query", data_dir=self.data_dir),
                               purpose="the training-time watermark")
        if pool.input_shape != tuple(self.card.input_shape or ()):
            raise DataError(f"alignment images are {pool.input_shape} but the owner takes {self.card.input_shape}")
        a = min(self.align_queries, len(pool))
        chosen = torch.randperm(len(pool), generator=torch.Generator().manual_seed(self.seeds.order + 1))[:a]
        return pool.float(chosen)

    def _prepared(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """The query batch (shuffled), its order, the labels and info; built once per verifier."""
        if not hasattr(self, "_batch_"):
            rotated, labels, decoys, info = self.verification_images()
            aligners = self._alignment_pool() if self.align != "none" else rotated[:0]
            parts = [rotated] + ([decoys] if len(decoys) else []) + ([aligners] if len(aligners) else [])
            batch = torch.cat(parts)
            order = torch.randperm(len(batch), generator=torch.Generator().manual_seed(self.seeds.order))
            owner_z = self._owner_embeddings(rotated)
            owner_norm = (float(owner_z.norm(dim=1).mean()) if owner_z is not None
                          else _positive((self.card.watermark or {}).get("embed_norm")))
            owner_align = self._owner_embeddings(aligners) if len(aligners) else None
            info = {**info, "owner_z": owner_z, "owner_norm": owner_norm, "n_align": len(aligners),
                    "owner_align": owner_align}
            self._batch_ = (batch[order], order, labels, info)
        return self._batch_

    def _read(self, api: EmbeddingAPI, who: str) -> dict[str, Any]:
        """Query ``api`` with the verification batch, align its answers if asked, and read them with the head."""
        batch, order, labels, info = self._prepared()
        n = len(labels)
        before = int(api.queries_used)
        dim = self.card.embed_dim if self.align in ("none", "orthogonal") else int(api.dim)
        answers = torch.from_numpy(check_answers(api.embed(batch), len(batch), dim=dim, who=who)).float()
        queries = int(api.queries_used) - before
        unshuffled = torch.empty_like(answers)
        unshuffled[order] = answers
        z = unshuffled[:n]
        alignment = None
        if self.align != "none":
            a = info["n_align"]
            alignment = fit_alignment(unshuffled[len(batch) - a:].numpy(), info["owner_align"].numpy(),
                                      kind=self.align, queries=a)
            z = torch.from_numpy(alignment.apply(z.numpy())).float()
        norm = float(z.norm(dim=1).mean())
        scale = 1.0
        if self.match_scale and info["owner_norm"] is not None and norm > 0:
            scale = info["owner_norm"] / norm
        pred = self._predict(z * scale)
        hits = pred == labels
        return {"correct": int(hits.sum()), "n": n, "hits": hits, "pred": pred, "scale": scale, "norm": norm,
                "queries": queries, "accuracy_unscaled": int((self._predict(z) == labels).sum()) / n,
                "alignment": None if alignment is None else alignment.to_dict()}

    def reference_scores(self) -> tuple[dict[str, float], dict[str, str]]:
        """Accuracy of the owner's head on each usable reference model (computed once per verifier).

        Returns:
            ``(scores, skipped)``: reference name -> accuracy, and reference name -> why it was left out.
        """
        if not hasattr(self, "_reference_scores_"):
            scores: dict[str, float] = {}
            skipped: dict[str, str] = {}
            for ref in self.references:
                reason = _incompatible(ref.api, self.card, align=self.align)
                if reason:
                    skipped[ref.name] = reason
                    continue
                scores[ref.name] = self._read(ref.api, f"reference {ref.name}")["correct"] / self.n_verify_actual
            self._reference_scores_ = (scores, skipped)
        return self._reference_scores_

    @property
    def n_verify_actual(self) -> int:
        return len(self._prepared()[2])

    def calibrated_p(self, accuracy: float, references: Sequence[float]) -> tuple[float, str]:
        """:func:`~encoderguard.verify.stats.calibrated_accuracy_p_value` at this test's alpha and size."""
        return calibrated_accuracy_p_value(accuracy, references, alpha=self.alpha, n=self.n_verify_actual,
                                           min_references=MIN_REFERENCES)

    # ------------------------------------------------------------------------------------------------ verify
    def verify(self, suspect_api: EmbeddingAPI) -> Verdict:
        """Query the suspect with the rotated verification images and test its watermark accuracy.

        Args:
            suspect_api: the suspect as an :class:`~encoderguard.api.EmbeddingAPI`; it receives the rotated
                images (and any decoys) in one shuffled request, at most ``max_queries`` images, plus at most
                ``align_queries`` alignment images when ``align`` is on.

        Returns:
            A :class:`Verdict` with ``method="watermark"``, ``statistic`` = accuracy of the owner's head on the
            suspect's answers, ``p_value`` of the calibrated test against the reference models (``details``:
            ``calibrated``, ``calibration`` = ``"rank"`` | ``"prediction"`` | ``"none"``, ``reference_scores``,
            ``binomial_p_value``), ``effect`` = accuracy minus the references' mean accuracy (or minus
            ``null_accuracy`` without references), ``n`` verification images and ``queries_used``.
            ``"stolen"`` only from a calibrated test; ``"inconclusive"`` when the test is uncalibrated and the
            binomial test alone would flag the suspect, or when the owner's own encoder does not stand out from the
            references (the test could not detect a copy).

        Raises:
            ValueError: the suspect's input shape differs from the owner's, or its representation size does (and
                ``align`` cannot map it).
            APIError: the suspect answered the wrong number of rows, another size, or NaN/inf values.
        """
        reason = _incompatible(suspect_api, self.card, align=self.align)
        if reason:
            raise ValueError(f"{reason}: the watermark head needs the owner's input format and representation size; "
                             "dataset inference (verify di) works at any size")
        _, _, labels, info = self._prepared()
        read = self._read(suspect_api, "the suspect")
        n, correct = read["n"], read["correct"]
        accuracy = correct / n
        warnings = list(self.setup_warnings)
        if self.match_scale and info["owner_norm"] is None:
            warnings.append("no owner representation norm (owner encoder or card watermark.embed_norm): the "
                            "suspect's answers were read at their own scale")
        binomial_p = binomial_test_greater(correct, n, self.null_accuracy)
        p_below = binomial_test_less(correct, n)
        share1 = float((read["pred"] == 1).float().mean())

        ref_scores, skipped = self.reference_scores()
        refs = list(ref_scores.values())
        p_value, calibration = self.calibrated_p(accuracy, refs)
        calibrated = calibration != "none"
        owner_z = info["owner_z"]
        owner_correct = int((self._predict(owner_z) == labels).sum()) if owner_z is not None else None
        owner_p, owner_source = self._owner_significance(owner_correct, n, refs)
        if calibrated:
            verdict = decide(p_value, self.alpha)
            if len(refs) < FEW_REFERENCES and calibration == "prediction":
                warnings.append(f"only {len(refs)} reference models: the prediction test assumes their accuracies "
                                f"are normal; build at least {FEW_REFERENCES} (encoderguard references build)")
        else:
            verdict = "independent" if binomial_p >= self.alpha else "inconclusive"
            reason_text = (f"no calibrated null: {len(refs)} usable reference models (need {MIN_REFERENCES}); the "
                           f"binomial p = {binomial_p:.3g} assumes every independent encoder scores 0.5, which "
                           "trained independent encoders do not (build references: encoderguard references build)")
            warnings.append(reason_text)
            p_value = binomial_p
        if owner_p is not None and owner_p >= self.alpha:
            verdict = "inconclusive"
            warnings.append(f"the owner's own watermark does not stand out ({owner_source}, p = {owner_p:.3g}): "
                            "this test cannot detect a copy")
        if max(share1, 1 - share1) >= _ONE_CLASS_SHARE:
            warnings.append(f"the owner's head predicts one class for {max(share1, 1 - share1):.0%} of the "
                            "suspect's answers: its representations are far from the owner's, so the accuracy "
                            "sits near the class share (0.5)")
        if p_below < self.alpha:
            warnings.append(f"accuracy {accuracy:.3f} is significantly BELOW 0.5 (p = {p_below:.3g}): the head's "
                            "errors on this suspect follow the rotation")
        low, high = binomial_confidence_interval(correct, n)
        needed = min_successes_greater(n, self.alpha, self.null_accuracy)
        ref_mean = sum(refs) / len(refs) if refs else None
        mirrored = info["mirrored"]
        hits = read["hits"]
        details: dict[str, Any] = {
            "accuracy": accuracy, "correct": correct, "calibrated": calibrated, "calibration": calibration,
            "binomial_p_value": binomial_p, "null_accuracy": self.null_accuracy,
            "reference_scores": dict(ref_scores), "references_skipped": dict(skipped),
            "reference_mean": ref_mean,
            "reference_sd": (float(torch.tensor(refs).std()) if len(refs) > 1 else None),
            "effect_kind": ("accuracy - mean accuracy of the reference models" if refs
                            else "accuracy - null_accuracy (0.5: chance on a balanced set)"),
            "accuracy_ci95": [low, high],
            "min_accuracy_for_binomial": None if needed is None else needed / n,
            "class_balance": {"rotated_0_180": int((labels == 0).sum()), "rotated_180_360": int((labels == 1).sum())},
            "predicted_180_360_share": share1, "p_value_below_chance": p_below,
            "verification_split": info["source"], "verification_draw": self.draw,
            "decoys": info["decoys"], "mirror": self.mirror, "mirrored": int(mirrored.sum()),
            "accuracy_unmirrored": _mean(hits[~mirrored]), "accuracy_mirrored": _mean(hits[mirrored]),
            "owner_accuracy": None if owner_correct is None else owner_correct / n, "owner_p_value": owner_p,
            "can_detect": owner_p is None or owner_p < self.alpha,
            "owner_heldout_acc_card": (self.card.watermark or {}).get("heldout_acc"),
            "scale": read["scale"], "match_scale": self.match_scale, "accuracy_unscaled": read["accuracy_unscaled"],
            "suspect_mean_norm": read["norm"], "owner_mean_norm": info["owner_norm"],
            "alignment": read["alignment"] or {"kind": "none", "queries": 0, "fit_r2": None},
        }
        reasons = [w for w in warnings if "cannot detect a copy" in w or w.startswith("no calibrated null")]
        details["reason"] = reasons[-1] if verdict == "inconclusive" and reasons else None
        effect = accuracy - (ref_mean if ref_mean is not None else self.null_accuracy)
        return Verdict(method="watermark", verdict=verdict, p_value=p_value, alpha=self.alpha, statistic=accuracy,
                       effect=effect, n=n, queries_used=read["queries"], warnings=tuple(warnings),
                       details=details)

    def _predict(self, z: torch.Tensor) -> torch.Tensor:
        self.head.eval()
        with torch.no_grad():
            return self.head(z.float()).argmax(1)

    def _owner_embeddings(self, rotated: torch.Tensor) -> torch.Tensor | None:
        if self.owner_encoder is None:
            return None
        from encoderguard.models.probe import encode

        return encode(self.owner_encoder, rotated)

    def _owner_significance(self, owner_correct: int | None, n: int, refs: Sequence[float]
                            ) -> tuple[float | None, str]:
        """How clearly the owner's own encoder carries the watermark: calibrated when references exist."""
        if owner_correct is not None:
            p, how = self.calibrated_p(owner_correct / n, refs)
            if how != "none":
                return p, f"owner accuracy {owner_correct / n:.3f} against {len(refs)} reference models"
            return binomial_test_greater(owner_correct, n), f"owner accuracy {owner_correct / n:.3f} on this set"
        wm = self.card.watermark or {}
        acc, total = wm.get("heldout_acc"), wm.get("heldout_n")
        if isinstance(acc, (int, float)) and isinstance(total, int) and total > 0:
            k = int(round(acc * total))
            return binomial_test_greater(k, total), f"card heldout_acc {acc:.3f} on {total} images"
        return None, ""


def _incompatible(api: EmbeddingAPI, card: ModelCard, *, align: str = "none") -> str:
    """Why the owner's head cannot read ``api``'s answers, after an ``align`` map ('' when it can)."""
    shape = tuple(int(v) for v in api.input_shape or ())
    if shape != tuple(card.input_shape or ()):
        return f"it takes images of shape {shape}, the owner's watermark inputs are {tuple(card.input_shape or ())}"
    if align in ("auto", "linear") or (align == "permutation" and int(api.dim) >= card.embed_dim):
        return ""
    if int(api.dim) != card.embed_dim:
        return f"it answers {api.dim}-d representations, the owner's watermark head reads {card.embed_dim}-d ones"
    return ""


def _owner_parts(owner: str | os.PathLike[str] | Checkpoint | ModelCard, head: nn.Module | None
                 ) -> tuple[ModelCard, nn.Module, nn.Module | None]:
    if isinstance(owner, (str, os.PathLike)):
        owner = load_checkpoint(Path(owner))
    if isinstance(owner, Checkpoint):
        card, head, encoder = owner.card, head or owner.watermark_head, owner.encoder
    elif isinstance(owner, ModelCard):
        card, encoder = owner, None
    else:
        raise ValueError(f"owner must be a checkpoint directory, a Checkpoint or a ModelCard, got "
                         f"{type(owner).__name__}")
    if head is None or not card.watermark:
        raise CheckpointError("the owner's checkpoint carries no watermark head: train the owner with --watermark "
                              "(encoderguard train ... --watermark) to use this test")
    return card, head.eval(), encoder


def _mean(hits: torch.Tensor) -> float | None:
    return float(hits.float().mean()) if len(hits) else None


def _positive(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and value > 0 else None
