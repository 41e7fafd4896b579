"""Active defences of an embedding API: answer postprocessors applied in order, per request and per key.

- ``noise`` (:class:`GaussianNoise`), ``round`` (:class:`Rounding`), ``topk`` (:class:`TopK`): answer
  perturbation of a fixed strength.
- ``coverage`` (:class:`CoverageNoise`): noise scaled by how much of the representation space the key has
  covered (after B4B), with per-key state in a :class:`StateStore`.
- ``spread`` (:class:`CellSpreadNoise`): noise scaled by how widely the key's answers spread over k-means cells of
  the owner's own answers (:func:`fit_cells`, :func:`save_cells`), with per-key state in a :class:`StateStore`.
- ``orthogonal`` (:class:`OrthogonalTransform`): a secret rotation per key against sybil accounts.
- ``guard`` (:class:`SybilGuard`): the recommended chain: spread-aware noise over groups of linked keys (shared
  near-duplicate queries, client metadata), answers seeded by a keyed LSH code of the clean answer, per-key
  rotation; per-key risk and groups in :meth:`SybilGuard.dashboard_state`.
- ``output-watermark`` (:class:`OutputWatermark`): the serving-time watermark keyed by a secret file
  (:class:`OutputWatermarkKey`), verified with :class:`~encoderguard.verify.OutputWatermarkVerifier`.
- ``window`` (:class:`TrafficWindow`): an observer that leaves answers unchanged and alerts when a window of recent
  answers departs from the owner's benign answers (an MMD test calibrated to a false-alarm rate).

Build a chain from command-line specs with :func:`parse_defences` (``name[:k=v,k=v]``) or from one
``spec+spec`` setting with :func:`parse_chain`, and ready it for an API with :func:`prepare_chain`.
"""

from encoderguard.defences.base import Postprocessor, apply_chain, prepare_chain
from encoderguard.defences.cell_spread import CellSpreadNoise, fit_cells, load_cells, save_cells, sequential_spread
from encoderguard.defences.coverage_noise import CoverageNoise, coverage_noise_scale, sequential_coverage
from encoderguard.defences.gaussian_noise import GaussianNoise
from encoderguard.defences.ledger_state_store import LedgerStateStore
from encoderguard.defences.memory_state_store import MemoryStateStore
from encoderguard.defences.noise_seeds import NoiseSource, derive_seed
from encoderguard.defences.orthogonal_transform import OrthogonalTransform
from encoderguard.defences.output_watermark import OutputWatermark
from encoderguard.defences.output_watermark_key import OutputWatermarkKey
from encoderguard.defences.random_hyperplane_lsh import RandomHyperplaneLSH
from encoderguard.defences.registry import (
    DEFENCES,
    UNDEFENDED,
    check_settings,
    create_defence,
    parse_chain,
    parse_defences,
    parse_spec,
    split_chain,
)
from encoderguard.defences.rounding import Rounding
from encoderguard.defences.state_store import StateStore
from encoderguard.defences.sybil_guard import SybilGuard
from encoderguard.defences.top_k import TopK
from encoderguard.defences.traffic_window import TrafficWindow, load_window_reference, save_window_reference

__all__ = [
    "DEFENCES", "UNDEFENDED", "CellSpreadNoise", "CoverageNoise", "GaussianNoise", "LedgerStateStore",
    "MemoryStateStore", "NoiseSource", "OrthogonalTransform", "OutputWatermark", "OutputWatermarkKey",
    "Postprocessor", "RandomHyperplaneLSH", "Rounding", "SybilGuard",
    "StateStore", "TopK", "TrafficWindow", "load_window_reference", "save_window_reference",
    "apply_chain", "check_settings", "coverage_noise_scale", "create_defence", "derive_seed",
    "fit_cells", "load_cells", "parse_chain", "parse_defences", "parse_spec", "prepare_chain", "save_cells",
    "sequential_coverage", "sequential_spread", "split_chain",
]
