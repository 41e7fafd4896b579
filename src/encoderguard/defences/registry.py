"""The defence registry and its grammar: a spec ``name[:k=v,k=v]`` (``serve --defence``) and a chain of specs
``spec+spec`` (one ``defend-eval`` setting, e.g. ``coverage:beta=0.3+orthogonal``; ``none`` is the empty chain)."""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable, Sequence
from typing import Any

from encoderguard.defences.base import Postprocessor, prepare_chain
from encoderguard.defences.cell_spread import CellSpreadNoise
from encoderguard.defences.coverage_noise import CoverageNoise
from encoderguard.defences.gaussian_noise import GaussianNoise
from encoderguard.defences.orthogonal_transform import OrthogonalTransform
from encoderguard.defences.output_watermark import OutputWatermark
from encoderguard.defences.rounding import Rounding
from encoderguard.defences.sybil_guard import SybilGuard
from encoderguard.defences.top_k import TopK
from encoderguard.defences.traffic_window import TrafficWindow

DEFENCES: dict[str, Any] = {  # name -> postprocessor class (with a PARAMS dict of parameter types)
    "noise": GaussianNoise,
    "round": Rounding,
    "topk": TopK,
    "coverage": CoverageNoise,
    "spread": CellSpreadNoise,
    "orthogonal": OrthogonalTransform,
    "output-watermark": OutputWatermark,
    "window": TrafficWindow,  # an observer: answers unchanged, alerts on windows unlike benign traffic
    # the recommended chain: group-aware spread noise, keyed answer-seeded noise, per-key rotation
    "guard": SybilGuard,
}
_KIND_NAMES = {int: "an integer", float: "a number", str: "a string"}
UNDEFENDED = "none"  # the chain of no defence
_CHAIN_SPLIT = re.compile(r"\+(?=[A-Za-z])")  # "coverage+orthogonal", but not the "+" of "1e+2"


def _choices() -> str:
    return "; ".join(f"{name}({', '.join(cls.PARAMS)})" for name, cls in DEFENCES.items())


def create_defence(name: str, **params: Any) -> Postprocessor:
    """Build the defence ``name`` with ``params``.

    Raises:
        ValueError: an unknown name (listing the defences and their parameters), an unknown or missing parameter
            (listing the defence's parameters), or a bad value (from the defence, quoting it).
    """
    if name not in DEFENCES:
        raise ValueError(f"unknown defence {name!r}; choose one of: {_choices()}")
    cls = DEFENCES[name]
    unknown = sorted(set(params) - set(cls.PARAMS))
    if unknown:
        raise ValueError(f"defence {name!r} has no parameter {', '.join(map(repr, unknown))}; its parameters are: "
                         f"{', '.join(cls.PARAMS)}")
    missing = [p.name for p in inspect.signature(cls).parameters.values()
               if p.kind is p.KEYWORD_ONLY and p.default is p.empty and p.name not in params]
    if missing:
        raise ValueError(f"defence {name!r} needs {', '.join(f'{m}=' for m in missing)} (e.g. "
                         f"{name}:{missing[0]}=...); its parameters are: {', '.join(cls.PARAMS)}")
    defence: Postprocessor = cls(**params)
    return defence


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Split ``"name:k=v,k=v"`` into the name and typed parameters (types from the defence's ``PARAMS``).

    Raises:
        ValueError: a malformed spec, unknown name or parameter, or a value of the wrong type (quoting it).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"empty defence spec {spec!r}; write name[:k=v,k=v], e.g. noise:sigma=0.1")
    name, _, tail = spec.strip().partition(":")
    name = name.strip()
    if name not in DEFENCES:
        raise ValueError(f"unknown defence {name!r} in {spec!r}; choose one of: {_choices()}")
    types = DEFENCES[name].PARAMS
    params: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in tail.split(","))):
        key, eq, text = item.partition("=")
        key, text = key.strip(), text.strip()
        if not eq or not key or not text:
            raise ValueError(f"malformed parameter {item!r} in defence spec {spec!r}; write k=v")
        if key not in types:
            raise ValueError(f"defence {name!r} has no parameter {key!r} (in {spec!r}); its parameters are: "
                             f"{', '.join(types)}")
        if key in params:
            raise ValueError(f"parameter {key!r} given twice in defence spec {spec!r}")
        params[key] = _convert(text, types[key], key, spec)
    return name, params


def _convert(text: str, kind: type, key: str, spec: str) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"parameter {key}={text!r} in defence spec {spec!r} must be {_KIND_NAMES[kind]}") from None


def parse_defences(specs: Iterable[str]) -> list[Postprocessor]:
    """Build the ordered chain for ``specs`` (e.g. ``["coverage", "orthogonal:seed=7"]``); every spec is checked.

    Raises:
        ValueError: for the first bad spec, naming it and listing the valid defences or parameters.
    """
    if isinstance(specs, str):
        specs = [specs]
    return [create_defence(name, **params) for name, params in map(parse_spec, specs)]


def split_chain(setting: str) -> list[str]:
    """The specs of one chain: ``"coverage:beta=0.3+orthogonal"`` -> ``["coverage:beta=0.3", "orthogonal"]``;
    ``"none"`` -> ``[]``."""
    if setting.strip() == UNDEFENDED:
        return []
    return [part.strip() for part in _CHAIN_SPLIT.split(setting) if part.strip()]


def parse_chain(setting: str) -> list[Postprocessor]:
    """Build the ordered chain of one ``spec+spec`` setting (``"none"``: no defence).

    Raises:
        ValueError: for the first bad spec, naming it and listing the valid defences or parameters.
    """
    return parse_defences(split_chain(setting))


def check_settings(settings: Sequence[str], *, dim: int | None = None) -> None:
    """Build every setting's chain (and check it against answers of size ``dim`` when given).

    Raises:
        ValueError: naming the bad setting and what is wrong with it (listing the valid names).
    """
    for setting in settings:
        try:
            chain = parse_chain(setting)
            if dim is not None:
                prepare_chain(chain, dim=dim)
        except ValueError as exc:
            raise ValueError(f"defence setting {setting!r}: {exc}") from None
