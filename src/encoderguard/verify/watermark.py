"""Ownership test by the secret rotation watermark (Dziedzic et al., ICML 2022, section 5).

The owner trained its encoder jointly with a small head that tells whether an image was rotated by an angle in
``[0, 180)`` or in ``[180, 360)`` degrees (:mod:`encoderguard.train.watermark_task`). The head and the task stay
secret. To test a suspect, the owner rotates images the head never saw (its ``owner-heldout`` split, with the
card's secret verification seed), asks the suspect for their representations and reads them with its own head. An
encoder that did not inherit the watermark gives predictions unrelated to the rotation, so on a balanced set its
accuracy is ``Binomial(n, 0.5) / n``; the victim and copies stolen from it score higher. The verdict is a one-sided
exact binomial test of the accuracy against 0.5.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from encoderguard.api.protocol import EmbeddingAPI
from encoderguard.data.image_set import ImageSet
from encoderguard.data.splits import SplitSpec, load_split
from encoderguard.errors import APIError, CheckpointError, DataError
from encoderguard.models.card import ModelCard
from encoderguard.models.checkpoint import Checkpoint, load_checkpoint
from encoderguard.train.watermark_task import rotation_batch
from encoderguard.verify.stats import (
    binomial_confidence_interval,
    binomial_test_greater,
    binomial_test_less,
    min_successes_greater,
)
from encoderguard.verify.verdict import Verdict, decide

VERIFY_SPLIT = "owner-heldout"
# Training splits that never overlap owner-heldout (owner-heldout is carved from the owner half after owner-train;
# query is the other half; the probe splits come from the test part).
_DISJOINT_TRAINING_SPLITS = ("owner-train", "query", "probe-train", "probe-test")
# Head predicting one class this often: the suspect's representations sit outside the head's working range.
_ONE_CLASS_SHARE = 0.9


class WatermarkVerifier:
    """Test whether a suspect encoder carries the owner's rotation watermark.

    Args:
        owner: the owner's checkpoint (a directory or a loaded :class:`~encoderguard.models.Checkpoint`) holding a
            ``watermark_head``, or its :class:`~encoderguard.models.ModelCard` together with ``head``.
        head: the watermark head ``[N, D] -> [N, 2]``, needed only when ``owner`` is a card.
        max_queries: most images sent to the suspect (verification images plus decoys). The verification set is
            the largest even number of images that fits, so its two classes are exactly balanced.
        alpha: significance level; ``p < alpha`` gives ``"stolen"``.
        seed: seed of the rotations and of the query order; ``None`` (default) uses the card's secret
            ``watermark.verify_seed``, which the card's ``heldout_acc`` was measured with.
        decoys: fraction of the budget spent on un-rotated owner-heldout images mixed in among the rotated ones,
            so that the suspect does not receive a batch made only of rotated images. Decoy answers are discarded.
        null_accuracy: accuracy expected from an encoder that did not inherit the watermark (default 0.5, chance
            on the balanced set). Independent encoders deviate from 0.5 by more than binomial noise (a fixed
            head reads any encoder's orientation features with a small bias of either sign: docs/watermark.md), so
            an owner who measured its head on reference encoders may test against a higher value.
        mirror: mirror (flip left-right) a random half of each class of rotated images; a mirrored image's
            rotation class is the opposite one (the mirror of a rotation by ``a`` is a rotation by ``-a`` of the
            mirrored image). The set is then closed under mirroring, so an encoder whose head output does not change
            under a mirror scores exactly 0.5 in expectation, whatever chance correlation the owner's head has with
            its representation; the cost is a lower accuracy of the victim and its copies on the mirrored half.
        match_scale: rescale the suspect's answers by one global factor so that their mean norm equals the owner's
            on the same images before the head reads them (copies trained with a scale-free loss such as InfoNCE
            answer at another scale; the owner's own encoder gets factor 1). Needs the owner's encoder or the
            card's ``watermark.embed_norm``.
        data_dir: folder of the named datasets, to rebuild ``owner-heldout`` from the card's ``data``.
        images: verification images to use instead of the card's ``owner-heldout`` split; they must be images the
            watermark head was not trained on.

    Raises:
        CheckpointError: the owner has no watermark head ("train the owner with --watermark").
        DataError: the card does not say which data the owner used, or the owner's training split overlaps
            ``owner-heldout`` (pass ``images``).
        ValueError: a bad setting (quoted).

    Example:
        >>> suspect = LocalAPI(load_encoder("runs/stolen"))  # doctest: +SKIP
        >>> verdict = WatermarkVerifier("runs/victim-wm").verify(suspect)  # doctest: +SKIP
        >>> verdict.verdict, verdict.p_value  # doctest: +SKIP
        ('stolen', 2e-12)
    """

    def __init__(self, owner: str | os.PathLike[str] | Checkpoint | ModelCard, *, head: nn.Module | None = None,
                 max_queries: int = 1000, alpha: float = 0.01, seed: int | None = None, decoys: float = 0.0,
                 null_accuracy: float = 0.5, mirror: bool = False, match_scale: bool = True,
                 data_dir: str | None = None,
                 images: ImageSet | None = None) -> None:
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
        self.source = str(owner) if isinstance(owner, (str, os.PathLike)) else type(owner).__name__
        self.card, self.head, self.owner_encoder = _owner_parts(owner, head)
        watermark = self.card.watermark or {}
        if seed is None and not isinstance(watermark.get("verify_seed"), int):
            raise CheckpointError(f"{self.source}: the card's watermark has no verify_seed; pass seed=")
        self.seed: int = int(watermark["verify_seed"]) if seed is None else seed
        self.max_queries = max_queries
        self.alpha = float(alpha)
        self.decoys = float(decoys)
        self.null_accuracy = float(null_accuracy)
        self.mirror = bool(mirror)
        self.match_scale = bool(match_scale)
        self.data_dir = data_dir
        self._images = images
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
        c, h, w = self.card.input_shape
        if pool.input_shape != (c, h, w):
            raise DataError(f"verification images are {pool.input_shape} but the owner takes {(c, h, w)}")
        n = min(self.n_verify, len(pool) // 2 * 2)
        if n < 2:
            raise DataError(f"{source} has {len(pool)} images; the watermark test needs at least 2")
        m = min(self.n_decoys, len(pool) - n)
        rotated, labels = rotation_batch(pool.float(slice(0, n)), generator=torch.Generator().manual_seed(self.seed))
        mirrored = torch.zeros(n, dtype=torch.bool)
        if self.mirror:
            generator = torch.Generator().manual_seed(self.seed + 2)
            for cls in (0, 1):
                members = torch.nonzero(labels == cls).flatten()
                mirrored[members[torch.randperm(len(members), generator=generator)[: len(members) // 2]]] = True
            rotated[mirrored] = rotated[mirrored].flip(-1)
            labels[mirrored] = 1 - labels[mirrored]
        decoys = pool.float(slice(n, n + m))
        return rotated, labels, decoys, {"source": source, "n": n, "decoys": m, "mirrored": mirrored}

    def _pool(self) -> tuple[ImageSet, str]:
        if self._images is not None:
            return self._images, self._images.name
        if not self.card.data:
            raise DataError(f"{self.source}: the card does not record the owner's data split; pass images=")
        spec = SplitSpec.from_dict(self.card.data)
        if spec.split not in _DISJOINT_TRAINING_SPLITS:
            raise DataError(f"{self.source}: the owner was trained on {spec.dataset}:{spec.split}, which overlaps "
                            f"{VERIFY_SPLIT}; pass verification images the watermark head never saw (images=)")
        return load_split(spec.with_split(VERIFY_SPLIT), data_dir=self.data_dir), f"{spec.dataset}:{VERIFY_SPLIT}"

    # ------------------------------------------------------------------------------------------------ verify
    def verify(self, suspect_api: EmbeddingAPI) -> Verdict:
        """Query the suspect with the rotated verification images and test its watermark accuracy.

        Args:
            suspect_api: the suspect as an :class:`~encoderguard.api.EmbeddingAPI`; it receives the rotated
                images (and any decoys) in one shuffled request, at most ``max_queries`` images in all.

        Returns:
            A :class:`Verdict` with ``method="watermark"``, ``statistic`` = accuracy of the owner's head on the
            suspect's answers, ``p_value`` of the exact one-sided binomial test against ``null_accuracy``,
            ``effect`` = accuracy - ``null_accuracy`` (0.5 by default: chance on the balanced set; the owner's own
            encoder shows the largest effect the test can expect), ``n`` verification images and ``queries_used``.
            ``"inconclusive"`` when the owner's own encoder (or, without it, the card's held-out check) does not
            carry a significant watermark.

        Raises:
            ValueError: the suspect's input shape or representation size differs from the owner's.
            APIError: the suspect answered the wrong number of rows, another size, or NaN/inf values.
        """
        d = self.card.embed_dim
        shape = tuple(int(v) for v in suspect_api.input_shape)
        if shape != tuple(self.card.input_shape):
            raise ValueError(f"the suspect takes images of shape {shape} but the owner's watermark inputs are "
                             f"{tuple(self.card.input_shape)}: the watermark test needs a suspect that accepts the "
                             "owner's input format")
        if int(suspect_api.dim) != d:
            raise ValueError(f"the suspect answers {suspect_api.dim}-d representations but the owner's watermark "
                             f"head reads {d}-d ones: the head needs the victim's representation size. A copy "
                             f"with another size is out of scope unless its answers are first mapped to {d}-d; "
                             "dataset inference (verify di) works at any size")
        rotated, labels, decoys, info = self.verification_images()
        n, m = len(labels), len(decoys)
        batch = torch.cat([rotated, decoys]) if m else rotated
        order = torch.randperm(n + m, generator=torch.Generator().manual_seed(self.seed + 1))
        before = int(suspect_api.queries_used)
        answers = suspect_api.embed(batch[order])
        queries = int(suspect_api.queries_used) - before
        answers = _check_answers(answers, n + m, d)
        unshuffled = torch.empty_like(answers)
        unshuffled[order] = answers
        suspect_z = unshuffled[:n]

        owner_z = self._owner_embeddings(rotated)
        owner_norm = (float(owner_z.norm(dim=1).mean()) if owner_z is not None
                      else _positive((self.card.watermark or {}).get("embed_norm")))
        suspect_norm = float(suspect_z.norm(dim=1).mean())
        scale = 1.0
        warnings: list[str] = []
        if self.match_scale:
            if owner_norm is None:
                warnings.append("no owner representation norm (owner encoder or card watermark.embed_norm): the "
                                "suspect's answers were read at their own scale")
            elif suspect_norm > 0:
                scale = owner_norm / suspect_norm
        pred = self._predict(suspect_z * scale)
        hits = pred == labels
        correct = int(hits.sum())
        accuracy = correct / n
        p_value = binomial_test_greater(correct, n, self.null_accuracy)
        p_below = binomial_test_less(correct, n)
        share1 = float((pred == 1).float().mean())

        owner_correct = int((self._predict(owner_z) == labels).sum()) if owner_z is not None else None
        owner_p, owner_source = self._owner_significance(owner_correct, n)
        verdict = decide(p_value, self.alpha)
        if owner_p is not None and owner_p >= self.alpha:
            verdict = "inconclusive"
            warnings.append(f"the owner's own watermark is not significant ({owner_source}, p = {owner_p:.3g}): "
                            "this test cannot detect a copy")
        if max(share1, 1 - share1) >= _ONE_CLASS_SHARE:
            warnings.append(f"the owner's head predicts one class for {max(share1, 1 - share1):.0%} of the "
                            "suspect's answers: its representations are far from the owner's, so the accuracy "
                            "sits near the class share (0.5)")
        if p_below < self.alpha:
            warnings.append(f"accuracy {accuracy:.3f} is significantly BELOW 0.5 (p = {p_below:.3g}): the head's "
                            "errors on this suspect follow the rotation, so the coin-flip null of the binomial test "
                            "does not describe it; do not read a high accuracy on such an encoder as proof")
        low, high = binomial_confidence_interval(correct, n)
        needed = min_successes_greater(n, self.alpha, self.null_accuracy)
        details: dict[str, Any] = {
            "accuracy": accuracy, "correct": correct, "null_accuracy": self.null_accuracy,
            "effect_kind": "accuracy - null_accuracy (0.5: chance on a balanced set)",
            "accuracy_ci95": [low, high],
            "min_accuracy_for_stolen": None if needed is None else needed / n,
            "class_balance": {"rotated_0_180": int((labels == 0).sum()), "rotated_180_360": int((labels == 1).sum())},
            "predicted_180_360_share": share1, "p_value_below_chance": p_below,
            "verification_split": info["source"], "verification_seed": self.seed,
            "decoys": m, "mirror": self.mirror, "mirrored": int(info["mirrored"].sum()),
            "accuracy_unmirrored": _mean(hits[~info["mirrored"]]), "accuracy_mirrored": _mean(hits[info["mirrored"]]),
            "owner_accuracy": None if owner_correct is None else owner_correct / n,
            "owner_heldout_acc_card": (self.card.watermark or {}).get("heldout_acc"),
            "scale": scale, "match_scale": self.match_scale,
            "accuracy_unscaled": int((self._predict(suspect_z) == labels).sum()) / n,
            "suspect_mean_norm": suspect_norm, "owner_mean_norm": owner_norm,
        }
        return Verdict(method="watermark", verdict=verdict, p_value=p_value, alpha=self.alpha, statistic=accuracy,
                       effect=accuracy - self.null_accuracy, n=n, queries_used=queries, warnings=tuple(warnings),
                       details=details)

    def _predict(self, z: torch.Tensor) -> torch.Tensor:
        self.head.eval()
        with torch.no_grad():
            return self.head(z.float()).argmax(1)

    def _owner_embeddings(self, rotated: torch.Tensor) -> torch.Tensor | None:
        if self.owner_encoder is None:
            return None
        from encoderguard.train.probe import encode

        return encode(self.owner_encoder, rotated)

    def _owner_significance(self, owner_correct: int | None, n: int) -> tuple[float | None, str]:
        if owner_correct is not None:
            return binomial_test_greater(owner_correct, n), f"owner accuracy {owner_correct / n:.3f} on this set"
        wm = self.card.watermark or {}
        acc, total = wm.get("heldout_acc"), wm.get("heldout_n")
        if isinstance(acc, (int, float)) and isinstance(total, int) and total > 0:
            k = int(round(acc * total))
            return binomial_test_greater(k, total), f"card heldout_acc {acc:.3f} on {total} images"
        return None, ""


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


def _check_answers(answers: Any, n: int, d: int) -> torch.Tensor:
    if not isinstance(answers, torch.Tensor):
        raise APIError(f"the suspect answered a {type(answers).__name__}, expected a tensor [{n}, {d}]")
    if answers.dim() != 2 or answers.shape[0] != n:
        raise APIError(f"the suspect answered {list(answers.shape)} for {n} images, expected [{n}, {d}]")
    if answers.shape[1] != d:
        raise APIError(f"the suspect answered {answers.shape[1]}-d representations, expected {d}-d")
    answers = answers.detach().float().cpu()
    bad = int((~torch.isfinite(answers)).any(dim=1).sum())
    if bad:
        raise APIError(f"the suspect answered NaN or infinite values for {bad} of {n} images; the watermark test "
                       "needs finite representations")
    return answers


def _mean(hits: torch.Tensor) -> float | None:
    return float(hits.float().mean()) if len(hits) else None


def _positive(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and value > 0 else None
