"""Ownership test by calibrated similarity: does the suspect answer like the owner's encoder, more than any
independent encoder does after the same alignment?

The test reuses the serving-time watermark key's inputs and the owner's clean answers stored in it
(:class:`~encoderguard.defences.OutputWatermarkKey`), so it needs no access to the owner's model: the suspect is sent
the key's probe and alignment inputs (the same shuffled batch as the output-watermark test); a ridge map from the
suspect's answers to the owner's is fitted on the alignment inputs; the statistic is the mean cosine, on the
*probe* inputs (not used in the fit), between the mapped suspect answers and the owner's clean answers, on Fisher's
scale (``atanh``). Every reference model is scored the same way, and the p-value is the random-effects prediction
test against them (:func:`~encoderguard.verify.stats.prediction_p_value`; the exact rank test with at least
``1 / alpha`` references).

What it shows, and what it cannot: a high score says that the suspect's answer space is, up to a linear map, the
owner's, more than for any reference. It does not say *how* the suspect got there: a copy distilled from the owner's
API and the owner's model obtained elsewhere score alike. For an owner whose model is its own (trained by it, never
published) that is the question; for an owner that serves a *public* pretrained encoder (``st:all-MiniLM-L6-v2``) a
"stolen" verdict from this test means "derived from that public encoder", not "stolen from this API". Only the
serving-time watermark tells those apart. The test's null is as good as its references: independent encoders far
weaker than the owner's (LSA, small SimCSE students) make any good encoder look close, which is why the result
reports the references' scores, and why the text documentation states the limit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from encoderguard.api.protocol import EmbeddingAPI
from encoderguard.verify.alignment import _linear
from encoderguard.verify.output_watermark import OutputWatermarkVerifier
from encoderguard.verify.stats import prediction_p_value, rank_p_value
from encoderguard.verify.verdict import Verdict, decide
from encoderguard.verify.watermark import MIN_REFERENCES, NamedAPI

METHOD = "similarity"


def aligned_cosine(suspect_align: np.ndarray, owner_align: np.ndarray, suspect_probe: np.ndarray,
                   owner_probe: np.ndarray) -> float:
    """Mean cosine on the probe inputs between the suspect's answers mapped into the owner's space and the owner's.

    Args:
        suspect_align: ``[m, Ds]`` the suspect's answers to the alignment inputs.
        owner_align: ``[m, Do]`` the owner's answers to them (the map is fitted on these pairs: ridge, with a bias).
        suspect_probe: ``[n, Ds]`` the suspect's answers to the probe inputs (never used in the fit).
        owner_probe: ``[n, Do]`` the owner's clean answers to them.

    Returns:
        The mean cosine, in ``[-1, 1]``; centred by the owner's mean answer (so that a constant offset shared by all
        answers does not count as similarity).
    """
    weight, bias = _linear(np.asarray(suspect_align, np.float64), np.asarray(owner_align, np.float64))
    mapped = np.asarray(suspect_probe, np.float64) @ weight + bias
    centre = np.asarray(owner_align, np.float64).mean(0)
    a, b = mapped - centre, np.asarray(owner_probe, np.float64) - centre
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return float(cos.mean())


def fisher(cosine: float) -> float:
    """``atanh`` of a cosine (clipped to stay finite): the scale on which the references' spread is close to normal."""
    return float(np.arctanh(np.clip(cosine, -0.999999, 0.999999)))


class SimilarityVerifier:
    """Calibrated similarity of a suspect to the owner, on the serving-time watermark key's inputs.

    Args:
        key: the watermark key (path or :class:`~encoderguard.defences.OutputWatermarkKey`), calibrated (it stores
            the owner's clean answers), or an :class:`~encoderguard.verify.OutputWatermarkVerifier` whose batch is
            reused (a suspect's answers are then read once for both tests).
        references: independent reference models (``.name``, ``.api``), at least 3 for a calibrated p-value.
        alpha: significance level.
        data_dir: folder of the named datasets.

    Raises:
        ValueError: the key stores no clean owner answers.
    """

    def __init__(self, key: Any, *, references: Sequence[NamedAPI] = (), alpha: float = 0.01,
                 data_dir: str | None = None) -> None:
        self.base = key if isinstance(key, OutputWatermarkVerifier) else OutputWatermarkVerifier(
            key, references=references, alpha=alpha, align="auto", data_dir=data_dir)
        if not self.base.key.calibrated:
            raise ValueError("the similarity test needs a calibrated key (encoderguard watermark keygen --encoder ...)")
        self.references = list(references)
        self.alpha = float(alpha)
        self._reference_scores: dict[str, float] | None = None

    def _score(self, api: EmbeddingAPI, who: str) -> tuple[float, int]:
        from encoderguard.modality import batch_len
        from encoderguard.verify.answers import check_answers, embed_any

        prep = self.base._prepared()
        before = int(getattr(api, "queries_used", 0) or 0)
        answers = check_answers(embed_any(api, prep["batch"]), batch_len(prep["batch"]), who=who)
        queries = int(getattr(api, "queries_used", 0) or 0) - before
        unshuffled = np.empty_like(answers)
        unshuffled[prep["order"].numpy()] = answers
        n = prep["n_probe"]
        cos = aligned_cosine(unshuffled[n:], prep["owner_align"], unshuffled[:n], prep["owner_probe"])
        return cos, queries

    def reference_scores(self) -> dict[str, float]:
        """Each reference's aligned cosine (computed once)."""
        if self._reference_scores is None:
            self._reference_scores = {}
            for ref in self.references:
                if self.base._incompatible(ref.api):
                    continue
                self._reference_scores[ref.name] = self._score(ref.api, f"reference {ref.name}")[0]
        return self._reference_scores

    def verify(self, suspect_api: EmbeddingAPI) -> Verdict:
        """Score the suspect and compare it with the references.

        Returns:
            A :class:`Verdict` (``method="similarity"``, ``statistic`` the suspect's Fisher-scaled cosine, ``effect``
            the cosine itself; ``details``: ``reference_scores`` (cosines), ``calibration``, ``what_it_shows``).
        """
        reason = self.base._incompatible(suspect_api)
        if reason:
            raise ValueError(f"{reason}: the similarity test cannot read this suspect")
        cos, queries = self._score(suspect_api, "the suspect")
        refs = self.reference_scores()
        ref_f = [fisher(c) for c in refs.values()]
        warnings = ["similarity shows that the suspect answers like the owner's model up to a linear map; it cannot "
                    "tell a copy of the API from the same model obtained elsewhere (e.g. a public pretrained encoder)"]
        if len(ref_f) < MIN_REFERENCES:
            p, calibration, verdict = math.nan, "none", "inconclusive"
            warnings.append(f"no calibrated null: {len(ref_f)} usable references (need {MIN_REFERENCES})")
        else:
            calibration = "rank" if len(ref_f) + 1 > 1 / self.alpha else "prediction"
            p = (rank_p_value(fisher(cos), ref_f) if calibration == "rank"
                 else prediction_p_value(fisher(cos), ref_f))
            verdict = decide(p, self.alpha)
        details: dict[str, Any] = {
            "calibrated": calibration != "none", "calibration": calibration, "cosine": cos,
            "reference_scores": dict(refs), "reference_mean": float(np.mean(list(refs.values()))) if refs else None,
            "reference_max": max(refs.values()) if refs else None, "can_detect": True,
            "what_it_shows": "answers like the owner's model (up to a linear map), more than every reference",
            "reason": None if calibration != "none" else warnings[-1],
        }
        return Verdict(method=METHOD, verdict=verdict, p_value=float(p) if math.isfinite(p) else 1.0,
                       alpha=self.alpha, statistic=fisher(cos), effect=cos, n=int(self.base._prepared()["n_probe"]),
                       queries_used=queries, warnings=tuple(warnings), details=details)
