"""Ownership tests -> :class:`Verdict`: dataset inference (frozen once by its owner) and the watermark, calibrated on
reference models and combined into one decision per suspect (:func:`verify_all`)."""

from encoderguard.models.random_init import null_encoders
from encoderguard.verify.dataset_inference import (
    CopyCheck,
    DatasetInference,
    DITestResult,
    SelfCheck,
    min_permutations,
    split_budget,
)
from encoderguard.verify.decision import Decision, MethodResult, combine
from encoderguard.verify.di_config import FrozenDIConfig
from encoderguard.verify.di_workflow import freeze_di, verify_di
from encoderguard.verify.output_watermark import OutputWatermarkVerifier
from encoderguard.verify.ownership import verify_all
from encoderguard.verify.references import Reference, ReferenceSet, build_references
from encoderguard.verify.similarity import SimilarityVerifier
from encoderguard.verify.text_references import build_text_references
from encoderguard.verify.verdict import Verdict
from encoderguard.verify.watermark import WatermarkVerifier

__all__ = [
    "CopyCheck", "DITestResult", "DatasetInference", "Decision", "FrozenDIConfig", "MethodResult",
    "OutputWatermarkVerifier", "Reference", "ReferenceSet", "SelfCheck", "SimilarityVerifier", "Verdict",
    "WatermarkVerifier", "build_references", "build_text_references", "combine", "freeze_di",
    "min_permutations", "null_encoders", "split_budget", "verify_all", "verify_di",
]
