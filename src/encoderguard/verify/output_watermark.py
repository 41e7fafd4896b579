"""Ownership test by the serving-time watermark (:mod:`encoderguard.defences.output_watermark`).

The owner's API moved every answer by ``strength * ||y - c|| * g(y) * t``, with ``g`` a secret pattern of the
answer's region (zero in a dead zone) and ``t`` a secret direction. A copy trained on those answers carries the step
on inputs it never saw. To test a suspect, the verifier sends it the key's probe inputs (drawn with the secret from
the data spec the key records) and the alignment inputs that lie in the dead zone, in one shuffled request; fits a
map from the owner's answers to the suspect's on the dead-zone inputs (:mod:`encoderguard.verify.alignment`: absorbs
a thief's rotation, permutation, whitening or truncation; the marked and clean answers are equal there, so the map is
blind to the step); predicts the suspect's probe answers from the owner's clean ones; and correlates what is left,
along the image of ``t``, with the pattern:

    e_i = <suspect answer_i - map(owner clean answer_i), map(t)> / ||map(t)||^2,
    score = mean(w_i e_i) / (sd(w_i e_i) / sqrt(n)),   w_i = g_i - mean(g)

A model that never saw the watermarked answers (an independent encoder, or a copy of the clean model) has residuals
unrelated to the secret pattern, so its score is a z-score centred near 0 (over-dispersed: each model has its own
chance correlation); a copy of the watermarked API scores high. ``carried`` is the share of the step the suspect
reproduces (1 for the watermarked API itself). The p-value comes from reference models scored the same way on the
same inputs (exact rank test with at least ``1 / alpha`` of them, else the random-effects prediction test with the
sampling sd 1 of a z-score as the floor); without references the normal p-value is reported, and the verdict never
says "stolen".
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy import stats as _stats

from encoderguard.api.protocol import EmbeddingAPI
from encoderguard.defences.output_watermark import (
    OutputWatermark,
    in_dead_zone,
    key_summary,
    shift_sizes,
    watermark_pattern,
)
from encoderguard.defences.output_watermark_key import OutputWatermarkKey
from encoderguard.errors import DataError
from encoderguard.modality import IMAGE, TEXT, batch_len, concat, is_text, take
from encoderguard.verify.alignment import ALIGNMENTS, fit_alignment
from encoderguard.verify.answers import check_answers, embed_any
from encoderguard.verify.stats import prediction_p_value, rank_p_value
from encoderguard.verify.verdict import Verdict, decide
from encoderguard.verify.watermark import FEW_REFERENCES, MIN_REFERENCES, NamedAPI

METHOD = "output-watermark"
Z_SAMPLING_SD = 1.0  # the sampling sd of a z-score: the floor of the references' spread in the prediction test


def watermark_score(residuals: np.ndarray, weights: np.ndarray, shift: np.ndarray) -> tuple[float, float]:
    """The watermark statistic of one model's answers to the probe inputs.

    Args:
        residuals: ``[n]`` ``e_i``, the model's answer minus what its map from the owner's clean answer predicts,
            along the (mapped) shift direction ``t``, in units of ``t``.
        weights: ``[n]`` the owner's watermark pattern, centred (``w_i = g_i - mean(g)``).
        shift: ``[n]`` the step the owner's API applied along ``t`` (``strength * ||y_i - c|| * g_i``).

    Returns:
        ``(z, carried)``: the z-score of ``mean(w_i e_i)`` and the share of the step reproduced,
        ``sum w_i e_i / sum w_i shift_i`` (1 for the watermarked answers themselves).
    """
    e = np.asarray(residuals, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    prod = w * e
    n = len(prod)
    total = float(np.sum(w * shift))
    carried = float(prod.sum() / total) if total > 0 else math.nan
    mean = float(prod.mean())
    sd = float(prod.std(ddof=1)) if n > 1 else 0.0
    floor = 1e-9 * (float(np.mean(np.abs(shift))) or 1.0)
    if sd <= floor:
        return (0.0 if abs(mean) <= floor else math.copysign(1e6, mean)), carried
    return mean / (sd / math.sqrt(n)), carried


def calibrated_z_p_value(score: float, references: Sequence[float], *, alpha: float,
                         min_references: int = MIN_REFERENCES) -> tuple[float, str]:
    """p-value of a suspect's z-score against reference models' z-scores on the same probes.

    The exact :func:`~encoderguard.verify.stats.rank_p_value` when ``K + 1 > 1 / alpha``, else the random-effects
    :func:`~encoderguard.verify.stats.prediction_p_value` with the references' sd floored at 1 (a z-score's own
    sampling sd); ``(nan, "none")`` with fewer than ``min_references`` references.
    """
    if len(references) < min_references:
        return math.nan, "none"
    if len(references) + 1 > 1 / alpha:
        return rank_p_value(score, references), "rank"
    return prediction_p_value(score, references, min_sd=Z_SAMPLING_SD), "prediction"


class OutputWatermarkVerifier:
    """Test whether a suspect was trained on answers marked by the serving-time watermark of ``key``.

    Args:
        key: the key file (path) or an :class:`~encoderguard.defences.OutputWatermarkKey`.
        references: independent reference models (``.name``, ``.api``) scored the same way; they calibrate the
            test. Without at least 3 the test is uncalibrated and never answers "stolen".
        alpha: significance level.
        align: map each model's answers into the owner's space before scoring (one of
            :data:`~encoderguard.verify.alignment.ALIGNMENTS`; default ``"auto"``), fitted on the key's alignment
            inputs. Needs the owner's clean answers (stored in a calibrated key, or ``owner``).
        owner: the owner's clean encoder (EmbeddingAPI or ``nn.Module``) when the key stores no clean answers.
        images: the probe pool instead of the key's data spec: an ImageSet or tensor ``[P, ...]``, or for a text
            encoder a TextSet or a list of strings (the watermark reads only answers, so it works for both).
        data_dir: folder of the named datasets.

    Raises:
        CheckpointError: an unreadable key file. ValueError: a bad setting, or ``align`` without owner answers.
    """

    def __init__(self, key: str | os.PathLike[str] | OutputWatermarkKey, *, references: Sequence[NamedAPI] = (),
                 alpha: float = 0.01, align: str = "auto", owner: Any = None, images: Any = None,
                 data_dir: str | None = None) -> None:
        if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
            raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
        if align not in ALIGNMENTS:
            raise ValueError(f"align must be one of {ALIGNMENTS}, got {align!r}")
        self.key = key if isinstance(key, OutputWatermarkKey) else OutputWatermarkKey.load(key)
        self.source = "" if isinstance(key, OutputWatermarkKey) else str(key)
        self.references = list(references)
        self.alpha = float(alpha)
        self.align = align
        self.owner = owner
        self._images = images
        self.data_dir = data_dir
        if not self.key.calibrated and owner is None and align != "none":
            raise ValueError("aligning the suspect needs the owner's clean answers: make the key with 'encoderguard "
                             "watermark keygen --encoder DIR', pass the owner's encoder (--owner DIR), or use "
                             "--align none")
        if self._images is None and not self.key.data:
            raise ValueError("the watermark key records no probe data: make it with --data SPEC (or --encoder DIR), "
                             "or give the probe inputs (--data SPEC)")

    # ---------------------------------------------------------------------------------------------------- set-up
    def _pool(self) -> Any:
        if self._images is not None:
            return self._images
        from encoderguard.data.splits import SplitSpec, load_split

        try:
            spec = SplitSpec.from_dict(dict(self.key.data or {}))
        except (TypeError, ValueError) as exc:
            raise DataError(f"the watermark key's data spec {self.key.data!r} is unusable ({exc})") from None
        return load_split(spec, data_dir=self.data_dir)

    def _prepared(self) -> dict[str, Any]:
        """The shuffled query batch, the owner's clean answers and the secret directions (built once)."""
        cached: dict[str, Any] | None = getattr(self, "_prepared_", None)
        if cached is not None:
            return cached
        from encoderguard.defences.output_watermark_key import pool_inputs

        owner_probe: np.ndarray | None
        owner_align: np.ndarray | None
        pool = self._pool()
        probe_idx, align_idx = self.key.draw(len(pool))
        probes = pool_inputs(pool, probe_idx)
        aligners = pool_inputs(pool, align_idx)
        n_probe = batch_len(probes)
        if self.key.calibrated:
            owner_probe = np.asarray(self.key.owner_probe, dtype=np.float64)
            owner_align = np.asarray(self.key.owner_align, dtype=np.float64)
            owner_from = "the key's stored clean answers"
        elif self.owner is not None:
            both = concat([probes, aligners])
            clean = check_answers(embed_any(self.owner, both), batch_len(both), who="the owner's encoder")
            owner_probe, owner_align = clean[:n_probe], clean[n_probe:]
            owner_from = "the owner's encoder"
        else:
            owner_probe = owner_align = None
            owner_from = "none (the suspect is read in its own coordinates)"
        dim = self.key.dim or (None if owner_probe is None else int(owner_probe.shape[1]))
        if dim is not None and owner_probe is not None and owner_probe.shape[1] != dim:
            raise ValueError(f"the owner's encoder answers {owner_probe.shape[1]}-d vectors but the watermark key "
                             f"is for {dim}-d ones")
        center = None if self.key.center is None else self.key.center.astype(np.float64)
        if owner_align is None or self.align == "none":
            aligners, owner_align = take(aligners, slice(0, 0)), None
        else:
            # Fit the map only on inputs inside the dead zone, where the watermark did not move the owner's answers:
            # there marked and clean answers agree, so the map can neither learn to remove the shift from a copy nor
            # learn to add any part of it to an innocent model.
            dim_a = int(owner_align.shape[1])
            keep = np.flatnonzero(in_dead_zone(owner_align, self.key.directions(dim_a), center,
                                               self.key.spread_for(dim_a)))
            aligners, owner_align = take(aligners, keep), owner_align[keep]
        batch = concat([probes, aligners])
        order = torch.randperm(batch_len(batch),
                               generator=torch.Generator().manual_seed(self.key.seed("order") % 2**63))
        served_align = None if owner_align is None else OutputWatermark(key=self.key).mark(owner_align)
        text = is_text(probes)
        self._prepared_ = {"served_align": served_align, "batch": take(batch, order), "order": order,
                           "n_probe": n_probe, "modality": TEXT if text else IMAGE,
                           "input_shape": None if isinstance(probes, list) else tuple(int(v) for v in
                                                                                      probes.shape[1:]),
                           "owner_probe": owner_probe,
                           "owner_align": owner_align, "owner_from": owner_from, "dim": dim, "center": center}
        return self._prepared_

    # ---------------------------------------------------------------------------------------------------- scoring
    def score_answers(self, probe_answers: np.ndarray, align_answers: np.ndarray) -> dict[str, Any]:
        """Score one model's answers to the probe and alignment inputs (no queries)."""
        prep = self._prepared()
        center = prep["center"]
        owner_probe = prep["owner_probe"]
        alignment = None
        z = np.asarray(probe_answers, dtype=np.float64)
        clean = owner_probe if owner_probe is not None else z
        dim = int(clean.shape[1])
        directions = self.key.directions(dim)
        t = directions[2]
        if owner_probe is not None and self.align != "none":
            # The map goes from the owner's answers to the suspect's, fitted on the dead-zone inputs (where marked
            # and clean answers are equal). Mapping the owner into the suspect's space predicts the suspect's
            # answers from the owner's clean ones; what is left, along the image of t, is the shift the suspect
            # learnt. (The other way round, a map from a copy's many redundant dimensions to the owner's answers
            # predicts the t-coordinate from the other coordinates and drops most of the shift.)
            alignment = fit_alignment(prep["served_align"], align_answers, kind=self.align,
                                      queries=len(align_answers))
            image = alignment.apply(t[None, :])[0] - alignment.apply(np.zeros((1, dim)))[0]
            norm2 = float(image @ image)
            residual = z - alignment.apply(owner_probe)
            e = residual @ image / norm2 if norm2 > 0 else np.zeros(len(z))
        else:
            if z.shape[1] != dim:
                raise ValueError(f"the suspect answers {z.shape[1]}-d vectors and the watermark reads {dim}-d ones: "
                                 "use --align auto or linear to map them")
            e = (z - (owner_probe if owner_probe is not None else z.mean(0))) @ t
        pattern = watermark_pattern(clean, directions, center, self.key.spread_for(dim))
        shift = self.key.strength * shift_sizes(clean, center) * pattern
        score, carried = watermark_score(e, pattern - pattern.mean(), shift)
        return {"z": score, "carried": carried, "n": len(z), "positive_share": float((pattern > 0).mean()),
                "alignment": None if alignment is None else alignment.to_dict()}

    def _read(self, api: EmbeddingAPI, who: str) -> dict[str, Any]:
        prep = self._prepared()
        before = int(getattr(api, "queries_used", 0) or 0)
        answers = check_answers(embed_any(api, prep["batch"]), batch_len(prep["batch"]), who=who)
        queries = int(getattr(api, "queries_used", 0) or 0) - before
        unshuffled = np.empty_like(answers)
        unshuffled[prep["order"].numpy()] = answers
        n = prep["n_probe"]
        out = self.score_answers(unshuffled[:n], unshuffled[n:])
        out["queries"] = queries
        return out

    def _incompatible(self, api: EmbeddingAPI) -> str:
        prep = self._prepared()
        raw_shape = getattr(api, "input_shape", prep["input_shape"])
        shape = None if raw_shape is None else tuple(int(v) for v in raw_shape)
        if prep["modality"] == TEXT:
            if shape is not None or getattr(api, "modality", TEXT) != TEXT:
                return "it takes images, the watermark's probe inputs are texts"
        elif shape is None:
            return f"it takes texts, the watermark's probe inputs are images of shape {prep['input_shape']}"
        elif shape != prep["input_shape"]:
            return f"it takes inputs of shape {shape}, the watermark's probe inputs are {prep['input_shape']}"
        dim = getattr(api, "dim", None)
        if prep["dim"] is not None and dim is not None and int(dim) != prep["dim"] and self.align in (
                "none", "orthogonal"):
            return f"it answers {dim}-d vectors, the watermark reads {prep['dim']}-d ones (use --align auto)"
        return ""

    def reference_scores(self) -> tuple[dict[str, float], dict[str, str]]:
        """Each usable reference model's z-score (computed once), and why others were left out."""
        if not hasattr(self, "_reference_scores_"):
            scores: dict[str, float] = {}
            skipped: dict[str, str] = {}
            for ref in self.references:
                reason = self._incompatible(ref.api)
                if reason:
                    skipped[ref.name] = reason
                    continue
                scores[ref.name] = float(self._read(ref.api, f"reference {ref.name}")["z"])
            self._reference_scores_ = (scores, skipped)
        return self._reference_scores_

    def owner_score(self) -> dict[str, Any] | None:
        """The score of the owner's own watermarked answers (what the API serves), or ``None`` without them."""
        prep = self._prepared()
        if prep["owner_probe"] is None:
            return None
        marker = OutputWatermark(key=self.key)
        align = prep["owner_align"]
        return self.score_answers(marker.mark(prep["owner_probe"]),
                                  marker.mark(align) if align is not None else np.zeros((0, prep["dim"])))

    # ---------------------------------------------------------------------------------------------------- verify
    def verify(self, suspect_api: EmbeddingAPI) -> Verdict:
        """Query the suspect with the probe and alignment inputs and test for the watermark.

        Returns:
            A :class:`Verdict` with ``method="output-watermark"``, ``statistic`` the z-score, ``effect`` the share
            of the shift carried, ``p_value`` calibrated on the references (``details``: ``calibrated``,
            ``calibration`` ``"rank" | "prediction" | "none"``, ``reference_scores``, ``normal_p_value``,
            ``owner_p_value``, ``can_detect``, ``alignment``, ``key``).

        Raises:
            ValueError: the suspect takes other inputs, or answers another size that ``align`` cannot map.
            APIError: wrong row count or non-finite answers.
        """
        reason = self._incompatible(suspect_api)
        if reason:
            raise ValueError(f"{reason}: the output watermark cannot read this suspect")
        prep = self._prepared()
        read = self._read(suspect_api, "the suspect")
        score = float(read["z"])
        normal_p = float(_stats.norm.sf(score))
        ref_scores, skipped = self.reference_scores()
        refs = list(ref_scores.values())
        p_value, calibration = calibrated_z_p_value(score, refs, alpha=self.alpha)
        calibrated = calibration != "none"
        warnings: list[str] = []
        if prep["owner_probe"] is None:
            warnings.append("no clean owner answers (key not calibrated, no owner given): the suspect is read in its "
                            "own coordinates, so a rotated or permuted copy is not detected")
        owner = self.owner_score()
        owner_p = None
        if owner is not None:
            owner_p = (calibrated_z_p_value(owner["z"], refs, alpha=self.alpha)[0] if calibrated
                       else float(_stats.norm.sf(owner["z"])))
        if calibrated:
            verdict = decide(p_value, self.alpha)
            if calibration == "prediction" and len(refs) < FEW_REFERENCES:
                warnings.append(f"only {len(refs)} reference models: the prediction test assumes their scores are "
                                f"normal; use at least {FEW_REFERENCES}")
        else:
            verdict = "independent" if normal_p >= self.alpha else "inconclusive"
            warnings.append(f"no calibrated null: {len(refs)} usable reference models (need {MIN_REFERENCES}); the "
                            f"normal p = {normal_p:.3g} assumes an independent model's score is N(0, 1), which is not "
                            "checked, so this test cannot answer 'stolen' (build references: encoderguard "
                            "references build)")
            p_value = normal_p
        can_detect = owner_p is None or owner_p < self.alpha
        if not can_detect:
            verdict = "inconclusive"
            warnings.append(f"the owner's own watermarked answers do not stand out (p = {owner_p:.3g}): this test "
                            "cannot detect a copy")
        ref_mean = float(np.mean(refs)) if refs else None
        details: dict[str, Any] = {
            "z": score, "carried": read["carried"], "calibrated": calibrated, "calibration": calibration,
            "normal_p_value": normal_p, "reference_scores": dict(ref_scores), "references_skipped": dict(skipped),
            "reference_mean": ref_mean, "reference_sd": float(np.std(refs, ddof=1)) if len(refs) > 1 else None,
            "owner_z": None if owner is None else owner["z"], "owner_carried": None if owner is None else
            owner["carried"], "owner_p_value": owner_p, "can_detect": can_detect,
            "owner_answers": prep["owner_from"], "positive_share": read["positive_share"],
            "alignment_inputs": len(prep["batch"]) - prep["n_probe"],
            "alignment": read["alignment"] or {"kind": "none", "queries": 0, "fit_r2": None},
            "key": key_summary(self.key), "effect_kind": "share of the watermark shift the suspect reproduces",
        }
        reasons = [w for w in warnings if "cannot detect a copy" in w or w.startswith("no calibrated null")]
        details["reason"] = reasons[-1] if verdict == "inconclusive" and reasons else None
        return Verdict(method=METHOD, verdict=verdict, p_value=float(p_value), alpha=self.alpha, statistic=score,
                       effect=float(read["carried"]), n=int(read["n"]), queries_used=int(read["queries"]),
                       warnings=tuple(warnings), details=details)
