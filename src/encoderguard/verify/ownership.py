"""``verify all``: every applicable ownership test on one suspect, and one decision.

The owner's side is read from its checkpoint directory: the watermark head and secret key (training-time rotation
watermark), the data split (dataset inference), a frozen dataset-inference config if one was saved there
(``di-config.json``) and the reference set registered there (``references.json``, written by
``encoderguard references build``). Each test runs on the suspect through the ``EmbeddingAPI`` protocol, and
:func:`~encoderguard.verify.decision.combine` turns their p-values into one decision with family-wise error at most
alpha.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from encoderguard.api.protocol import EmbeddingAPI
from encoderguard.errors import CheckpointError, DataError
from encoderguard.models.checkpoint import load_checkpoint
from encoderguard.verify.decision import Decision, MethodResult, combine
from encoderguard.verify.references import ReferenceSet, owner_reference_dir

logger = logging.getLogger(__name__)

DI_CONFIG_FILE = "di-config.json"
COPY_CHECK_DIR = "copy-check"
DEFAULT_WATERMARK_QUERIES = 2000
#: Why dataset inference does not apply to a text owner (docs/verification.md, "Text owners").
TEXT_DI_REASON = ("dataset inference needs the owner's training data, and the owner of a pretrained text encoder it "
                  "serves (e.g. st:all-MiniLM-L6-v2) does not hold that encoder's training data; the test is "
                  "implemented for image encoders trained by the owner")
PRETRAINED_WATERMARK_REASON = ("a pretrained encoder carries no training-time watermark (the owner did not train it); "
                               "use the serving-time watermark (--watermark-key)")
_MODEL_SPEC_PREFIXES = ("st:", "onnx:")


def is_model_spec(owner: Any) -> bool:
    """Whether ``--owner`` names a model without an owner folder (``st:NAME``, ``onnx:PATH``)."""
    return isinstance(owner, (str, os.PathLike)) and str(owner).startswith(_MODEL_SPEC_PREFIXES)


def _verify_pretrained(spec: str, suspect: EmbeddingAPI, *,
                       references: str | os.PathLike[str] | ReferenceSet | None, alpha: float, align: str,
                       copy_check: str | os.PathLike[str] | None, watermark_key: Any,
                       data_dir: str | None, similarity: bool = False) -> dict[str, Any]:
    """``verify all`` for an owner given as a model spec (``st:NAME``): a pretrained encoder it serves.

    Such an owner holds neither the encoder's training data (dataset inference does not apply) nor a training-time
    watermark; the serving-time watermark (``watermark_key``) is the test, calibrated on the references given.
    """
    warnings: list[str] = []
    if isinstance(references, ReferenceSet):
        refs, refs_note = references, f"references from {references.folder}"
    elif references is not None:
        refs, refs_note = ReferenceSet.load(references), f"references from {references} (--references)"
    else:
        refs, refs_note = None, (f"no reference set: an owner given as {spec} has no folder to register one in; give "
                                 "--references DIR (encoderguard references build --owner st:NAME --data DATASET "
                                 "--count K --out DIR); the output-watermark test is uncalibrated and cannot answer "
                                 "'stolen'")
        warnings.append(refs_note)
    if refs is not None and refs.manifest.get("owner") not in (None, spec):
        warnings.append(f"the reference set {refs.folder} was built for {refs.manifest.get('owner')}, not {spec}")
    if copy_check is not None:
        warnings.append("--copy-check ignored: no test of a pretrained owner is gated by a copy of the clean model "
                        "(the output watermark is carried only by copies of the watermarked answers)")
    ref_list = refs.references() if refs is not None else []
    methods = [MethodResult.not_applicable("watermark", PRETRAINED_WATERMARK_REASON),
               MethodResult.not_applicable("di", TEXT_DI_REASON if spec.startswith("st:") else
                                           "dataset inference needs the owner's training data, which the owner of "
                                           f"{spec} (a model without a card) does not record")]
    if watermark_key is None:
        methods.append(MethodResult.not_applicable(
            "output-watermark", "no serving-time watermark key (--watermark-key): the only test that applies to a "
                                "pretrained encoder"))
    else:
        from encoderguard.defences.output_watermark_key import OutputWatermarkKey
        from encoderguard.verify.output_watermark import OutputWatermarkVerifier

        key = watermark_key if isinstance(watermark_key, OutputWatermarkKey) else OutputWatermarkKey.load(watermark_key)
        owner_encoder = None
        if not key.calibrated:  # a calibrated key stores the owner's clean answers: the model is not loaded
            from encoderguard.models.model_spec import load_any

            owner_encoder = load_any(spec)
        verifier = OutputWatermarkVerifier(key, references=ref_list, alpha=alpha, align=align,
                                           owner=owner_encoder, data_dir=data_dir)
        try:
            logger.info("verify all: output-watermark test on the suspect")
            methods.append(MethodResult.from_verdict(verifier.verify(suspect)))
        except ValueError as exc:  # the suspect takes other inputs
            methods.append(MethodResult.not_applicable("output-watermark", str(exc)))
        if similarity:
            from encoderguard.verify.similarity import SimilarityVerifier

            try:
                logger.info("verify all: similarity test on the suspect")
                # the same batch as the watermark test: the suspect answers it once more (queries counted)
                methods.append(MethodResult.from_verdict(
                    SimilarityVerifier(verifier, references=ref_list, alpha=alpha).verify(suspect)))
            except ValueError as exc:
                methods.append(MethodResult.not_applicable("similarity", str(exc)))
    decision: Decision = combine(methods, alpha=alpha)
    out = decision.to_dict()
    out["references"] = {"source": refs_note, "count": len(ref_list),
                         "folder": None if refs is None else str(refs.folder)}
    out["alignment"] = {"kind": "none", "queries": 0, "fit_r2": None}
    out["queries_used"] = sum(int((m.details or {}).get("queries_used") or 0) for m in methods)
    out["copy_check"] = None
    out["owner"] = spec
    out["warnings"] = warnings
    return out


def resolve_references(owner_dir: str | os.PathLike[str], references: str | os.PathLike[str] | ReferenceSet | None
                       ) -> tuple[ReferenceSet | None, str]:
    """The reference set to calibrate with, and a sentence saying where it came from."""
    if isinstance(references, ReferenceSet):
        return references, f"references from {references.folder}"
    if references is not None:
        return ReferenceSet.load(references), f"references from {references} (--references)"
    folder = owner_reference_dir(owner_dir)
    if folder is not None:
        pointer = Path(owner_dir) / "references.json"
        return ReferenceSet.load(folder), f"references registered with the owner ({pointer} -> {folder})"
    return None, ("no reference set: none given and none registered with the owner (encoderguard references build "
                  "--owner DIR --count K --out REFS); the watermark test is uncalibrated and cannot answer 'stolen'")


def verify_all(owner_dir: str | os.PathLike[str], suspect: EmbeddingAPI, *,
               references: str | os.PathLike[str] | ReferenceSet | None = None, alpha: float = 0.01,
               di_config: str | os.PathLike[str] | None = None, watermark_queries: int = DEFAULT_WATERMARK_QUERIES,
               data_dir: str | None = None, align: str = "auto", align_queries: int = 1000,
               copy_check: str | os.PathLike[str] | None = None,
               watermark_key: str | os.PathLike[str] | Any = None, similarity: bool = False) -> dict[str, Any]:
    """Run every applicable ownership test on ``suspect`` and combine them.

    Args:
        owner_dir: the owner's checkpoint directory.
        suspect: the suspect as an EmbeddingAPI (a checkpoint in memory or any HTTP endpoint).
        references: a reference-set folder (default: the one registered with the owner).
        alpha: family-wise error level of the decision (each method also reports its own verdict at alpha).
        di_config: a frozen dataset-inference config (default: ``OWNER_DIR/di-config.json`` if present; without
            one the test runs unfrozen, with a warning).
        watermark_queries: suspect queries of the watermark test.
        data_dir: folder of the named datasets.
        align: alignment of the suspect's answers before the watermark head reads them (default ``"auto"``: a
            rule fixed in advance, the map with the best held-out fit on the alignment images, the identity when it
            fits as well; references are aligned the same way). Dataset inference reads the suspect's own answers
            (its standardised geometry ignores permutations and per-dimension scales).
        align_queries: alignment images from the owner's ``query`` split (counted in ``queries_used``).
        copy_check: a copy the owner stole from its own model (a checkpoint directory, e.g. made with
            ``encoderguard steal --victim OWNER_DIR ... --out OWNER_DIR/copy-check``; default
            ``OWNER_DIR/copy-check`` if present). Every method first tests it, owner-side; a method that does not
            detect it (``sees_copies`` false, with the reason) leaves the family while another method does, so that
            it costs the others no power; when no method detects it, all stay in and no evidence gives
            "inconclusive", never "independent".
        watermark_key: the serving-time watermark's key file (or an
            :class:`~encoderguard.defences.OutputWatermarkKey`): adds the ``output-watermark`` test to the family.
            The owner's own copy check does not apply to it (that copy was stolen from the clean model, not through
            the watermarked API), so it is never gated by it.
        similarity: with an owner given as ``st:NAME`` and a calibrated ``watermark_key``, add the calibrated
            similarity test (:mod:`encoderguard.verify.similarity`) to the family: it shows that the suspect answers
            like the owner's model, not that it was copied from the API (a public encoder obtained elsewhere scores
            alike).

    Returns:
        :meth:`Decision.to_dict` plus ``"references"`` (where the null came from and how many models),
        ``"alignment"`` (``{"kind", "queries", "fit_r2"}`` of the watermark test), ``"queries_used"``,
        ``"copy_check"`` (each method's p-value on the owner's own copy, or ``None``) and ``"warnings"``.

    Raises:
        CheckpointError, DataError: unusable owner files; APIError: the suspect failed to answer.
    """
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if is_model_spec(owner_dir):
        return _verify_pretrained(str(owner_dir), suspect, references=references, alpha=alpha, align=align,
                                  copy_check=copy_check, watermark_key=watermark_key, data_dir=data_dir,
                                  similarity=similarity)
    if similarity:
        raise ValueError("--similarity is for an owner given as a model spec (st:NAME) with --watermark-key: an owner "
                         "folder has its own tests (dataset inference, the watermark)")
    owner = load_checkpoint(owner_dir)
    refs, refs_note = resolve_references(owner_dir, references)
    warnings: list[str] = [] if refs is not None else [refs_note]
    ref_list = refs.references() if refs is not None else []
    if refs is not None:
        warnings += refs.check_owner(owner.card)
    data = owner.card.data or {}
    config = None
    prepared_di: Any = None
    di_error = ""
    text_owner = owner.card.input_shape is None
    if text_owner:
        di_error = TEXT_DI_REASON
    elif data and data.get("split", "owner-train") == "owner-train":
        from encoderguard.verify.di_config import FrozenDIConfig
        from encoderguard.verify.di_workflow import prepare_di

        config_path = Path(di_config) if di_config is not None else Path(owner_dir) / DI_CONFIG_FILE
        config = FrozenDIConfig.load(config_path) if (di_config is not None or config_path.is_file()) else None
        try:
            prepared_di = prepare_di(owner, config=config, alpha=None if config is not None else alpha,
                                     data_dir=data_dir)
        except DataError as exc:
            di_error = str(exc)
    else:
        di_error = "dataset inference needs the owner's training data: the owner's card records no owner-train split"
    verifier: Any = None
    verifier_error = ""
    if text_owner and (owner.watermark_head is None or not owner.card.watermark):
        verifier_error = ("the owner's text model carries no training-time watermark (the training-time watermark "
                          "is implemented for image encoders); use the serving-time watermark (--watermark-key)")
    elif owner.watermark_head is None or not owner.card.watermark:
        verifier_error = "the owner's model carries no training-time watermark (train it with --watermark)"
    else:
        from encoderguard.verify.watermark import WatermarkVerifier

        try:
            verifier = WatermarkVerifier(owner_dir, references=ref_list, max_queries=watermark_queries, alpha=alpha,
                                         data_dir=data_dir, align=align, align_queries=align_queries)
        except (ValueError, CheckpointError) as exc:  # e.g. the owner's secret verification key is missing
            verifier_error = str(exc)

    output_verifier: Any = None
    if watermark_key is not None:
        from encoderguard.verify.output_watermark import OutputWatermarkVerifier

        output_verifier = OutputWatermarkVerifier(watermark_key, references=ref_list, alpha=alpha, align=align,
                                                  owner=owner.encoder, data_dir=data_dir)

    def run_methods(api: EmbeddingAPI, who: str, *, copy: bool = False) -> list[MethodResult]:
        results: list[MethodResult] = []
        if verifier is None:
            results.append(MethodResult.not_applicable("watermark", verifier_error))
        else:
            try:
                logger.info("verify all: watermark test on %s", who)
                results.append(MethodResult.from_verdict(verifier.verify(api)))
            except ValueError as exc:  # the suspect's format does not fit the head: the other tests still run
                results.append(MethodResult.not_applicable("watermark", str(exc)))
        if prepared_di is None:
            results.append(MethodResult.not_applicable("di", di_error))
        else:
            logger.info("verify all: dataset inference on %s", who)
            results.append(MethodResult.from_verdict(prepared_di.verify(api)))
        if output_verifier is not None and not copy:
            try:
                logger.info("verify all: output-watermark test on %s", who)
                results.append(MethodResult.from_verdict(output_verifier.verify(api)))
            except ValueError as exc:  # the suspect takes other inputs: the other tests still run
                results.append(MethodResult.not_applicable("output-watermark", str(exc)))
        return results

    gates: dict[str, str] = {}
    copy_dir = Path(copy_check) if copy_check is not None else Path(owner_dir) / COPY_CHECK_DIR
    copy_info: dict[str, Any] | None = None
    if copy_check is not None or (copy_dir / "card.json").is_file():
        from encoderguard.api import LocalAPI
        from encoderguard.models.checkpoint import load_encoder

        # The owner's own copy, stolen the way a thief would: a test that misses it cannot see copies of this model,
        # so it leaves the family while another test can (decided on the owner's side, before the suspect is seen).
        copy_results = run_methods(LocalAPI(load_encoder(copy_dir), key="owner-copy"), "the owner's own copy",
                                   copy=True)
        copy_info = {"copy": str(copy_dir), "methods": {}}
        for m in copy_results:
            detected = m.in_family and m.p_value is not None and m.p_value < alpha
            copy_info["methods"][m.method] = {"p_value": m.p_value, "detected": detected}
            if m.in_family and not detected:
                gates[m.method] = (f"does not detect a copy the owner stole from its own model ({copy_dir}: p = "
                                   f"{m.p_value:.3g} >= alpha = {alpha})")
    methods = run_methods(suspect, "the suspect")
    if copy_info is not None:
        methods = [replace(m, sees_copies=None if m.method == "output-watermark" else m.method not in gates,
                           reason=gates.get(m.method, m.reason)) if m.in_family else m for m in methods]
    queries = sum(int((m.details or {}).get("queries_used") or 0) for m in methods)
    for m in methods:
        frozen_alpha = (m.details or {}).get("alpha")
        if m.method == "di" and config is not None and frozen_alpha not in (None, alpha):
            warnings.append(f"dataset inference ran at its frozen alpha {frozen_alpha}; the decision uses alpha "
                            f"{alpha}")

    decision: Decision = combine(methods, alpha=alpha)
    out = decision.to_dict()
    out["references"] = {"source": refs_note, "count": len(ref_list),
                         "folder": None if refs is None else str(refs.folder)}
    wm = next((m for m in methods if m.method == "watermark" and m.details), None)
    out["alignment"] = ((wm.details.get("details") or {}).get("alignment") if wm is not None else None) or {
        "kind": "none", "queries": 0, "fit_r2": None}
    out["queries_used"] = queries
    out["copy_check"] = copy_info
    out["warnings"] = warnings
    return out
