"""The frozen dataset-inference test: everything that fixes a p-value, decided before any suspect is seen.

The owner runs the self-check once (:func:`~encoderguard.verify.di_workflow.freeze_di`, or ``verify di --self-check
--save-config F``) and freezes the result in a :class:`FrozenDIConfig`: the test's settings (alpha and the seed of the
suspects' image draw included), the number of null encoders, the seed of the self-check's own image draw, the
self-check, the optional copy check and the owner checkpoint's weights digest. Every suspect is then tested with
exactly that (``verify di --config F``): a flag that disagrees with a frozen value is an error, never a silent
override, so a test cannot be re-tuned after a suspect's answers are seen.

The self-check runs on another draw of images (``self_check_seed``) than the suspects (``settings["seed"]``). The
owner's own encoder tested as a suspect is then a fresh test: "the victim is detected" can fail.

File format (JSON, indent 2, human-readable)::

    {"format": "encoderguard-di-config", "digest": "<sha256>", "settings": {...}, "null_encoders": 3,
     "self_check_seed": 1, "owner_weights_sha256": "...", "self_check": {...}, "copy_check": {...} | null}

``digest`` is the SHA-256 of the canonical JSON (sorted keys, no spaces) of ``{"settings", "null_encoders",
"self_check_seed"}``: everything that changes a p-value. A file edited by hand after it was frozen is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from encoderguard.verify.dataset_inference import CopyCheck, DatasetInference, DITestResult, SelfCheck

FORMAT = "encoderguard-di-config"
# Null encoder i is a random initialisation of the owner's architecture from this seed + i (benchmarks use the same).
# CLI flags whose name differs from the setting they set.
FLAG_NAMES = {"n_permutations": "--permutations"}
RERUN_HINT = "re-run 'encoderguard verify di --owner DIR --self-check --save-config FILE'"


def config_digest(settings: dict[str, Any], null_encoders: int, self_check_seed: int) -> str:
    """SHA-256 of the canonical JSON (sorted keys, no spaces) of what changes a dataset-inference p-value."""
    payload = {"settings": settings, "null_encoders": null_encoders, "self_check_seed": self_check_seed}
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _digest_or_none(settings: Any, null_encoders: Any, self_check_seed: Any) -> str | None:
    try:
        return config_digest(settings, null_encoders, self_check_seed)
    except (TypeError, ValueError):
        return None


def flag_name(key: str) -> str:
    """The CLI flag that sets ``key`` (``"n_permutations"`` -> ``"--permutations"``)."""
    return FLAG_NAMES.get(key, "--" + key.replace("_", "-"))


@dataclass(frozen=True)
class FrozenDIConfig:
    """A dataset-inference test frozen by its owner before any suspect is tested.

    Attributes:
        settings: the full :meth:`DatasetInference.settings` of the suspect test (``alpha`` and ``seed``, the draw
            of images suspects are tested on, included); partial settings are completed with the defaults.
        null_encoders: how many null encoders adjust the test (:func:`~encoderguard.models.null_encoders`).
        self_check_seed: the draw of images the owner's self-check used; differs from ``settings["seed"]``.
        self_check: :meth:`SelfCheck.to_dict` of the owner's self-check on that draw.
        copy_check: :meth:`CopyCheck.to_dict` of the simulated copy (with the alpha it was decided at), or ``None``.
        owner_weights_sha256: digest of the owner checkpoint's weights (``None``: not recorded).
        digest: SHA-256 of the canonical JSON of ``settings``, ``null_encoders`` and ``self_check_seed``
            (computed when empty; checked otherwise).
        source: the file it was loaded from (not serialised; names it in error messages).
        owner_result: the self-check's test with per-image scores, when made in this process (not serialised).

    Raises:
        ValueError: bad settings, a self-check of another draw or test, or a digest that does not match
            ("edited after it was frozen").
    """

    settings: dict[str, Any]
    null_encoders: int
    self_check_seed: int
    self_check: dict[str, Any]
    copy_check: dict[str, Any] | None = None
    owner_weights_sha256: str | None = None
    digest: str = ""
    source: str | None = field(default=None, compare=False, repr=False)
    owner_result: DITestResult | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.settings, dict):
            raise ValueError(f"settings must be a dict, got {type(self.settings).__name__}")
        # The digest is checked first: an edited file is reported as edited, whatever else the edit broke.
        if self.digest and _digest_or_none(self.settings, self.null_encoders, self.self_check_seed) != self.digest:
            try:
                full: dict[str, Any] | None = DatasetInference.from_settings(self.settings).settings()
            except (TypeError, ValueError):
                full = None
            if full is None or _digest_or_none(full, self.null_encoders, self.self_check_seed) != self.digest:
                raise ValueError(f"the dataset-inference config was edited after it was frozen (its digest does "
                                 f"not match its settings, null_encoders and self_check_seed); {RERUN_HINT}")
        settings = DatasetInference.from_settings(self.settings).settings()
        object.__setattr__(self, "settings", settings)
        for name in ("null_encoders", "self_check_seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if self.self_check_seed == settings["seed"]:
            raise ValueError(f"self_check_seed must differ from the suspects' seed (both {self.self_check_seed}): "
                             "on the same draw, the owner's model tested as a suspect repeats its self-check")
        if not isinstance(self.self_check, dict):
            raise ValueError(f"self_check must be a dict (SelfCheck.to_dict()), got {type(self.self_check).__name__}")
        check = SelfCheck.from_dict(self.self_check)
        expected = {**settings, "seed": self.self_check_seed}
        differ = sorted(k for k in set(expected) | set(check.settings) if check.settings.get(k) != expected.get(k))
        if differ:
            raise ValueError("the self-check does not match the frozen settings and self_check_seed: "
                             + ", ".join(f"{k}={check.settings.get(k)!r} (expected {expected.get(k)!r})"
                                         for k in differ))
        if check.protects != (check.owner.p_value < check.alpha):
            raise ValueError(f"the self-check says protects={check.protects} but its p = {check.owner.p_value:.3g} "
                             f"at alpha = {check.alpha}")
        if self.copy_check is not None:
            if not isinstance(self.copy_check, dict):
                raise ValueError(f"copy_check must be a dict or None, got {type(self.copy_check).__name__}")
            CopyCheck.from_dict(self.copy_check)
        if self.owner_weights_sha256 is not None and not isinstance(self.owner_weights_sha256, str):
            raise ValueError(f"owner_weights_sha256 must be a string, got {self.owner_weights_sha256!r}")
        if not self.digest:
            object.__setattr__(self, "digest", config_digest(settings, self.null_encoders, self.self_check_seed))

    # -- the frozen parts as objects -------------------------------------------------------------------------
    def self_check_result(self) -> SelfCheck:
        """The frozen :class:`SelfCheck` (with the owner's per-image scores when made in this process)."""
        check = SelfCheck.from_dict(self.self_check)
        if self.owner_result is None:
            return check
        from dataclasses import replace

        return replace(check, owner=self.owner_result)

    def copy_check_result(self) -> CopyCheck | None:
        """The frozen :class:`CopyCheck`, or ``None``."""
        return None if self.copy_check is None else CopyCheck.from_dict(self.copy_check)

    def suspect_test(self) -> DatasetInference:
        """The frozen suspect test (unfitted), on the suspects' draw ``settings["seed"]``."""
        return DatasetInference.from_settings(self.settings)

    def self_check_test(self) -> DatasetInference:
        """The same test on the self-check's draw ``self_check_seed``."""
        return DatasetInference.from_settings(self.settings, seed=self.self_check_seed)

    # -- overrides -------------------------------------------------------------------------------------------
    def check_overrides(self, **flags: Any) -> None:
        """Refuse values that disagree with the frozen ones; a value equal to the frozen one is accepted.

        Args:
            flags: settings keys (``alpha``, ``seed``, ``members``, ``n_permutations``, ...), ``null_encoders``,
                ``self_check_seed`` or ``budget`` (members + non-members). ``None`` means "not given": ignored.

        Raises:
            ValueError: one line naming every conflicting flag and its frozen value (e.g. ``--alpha 0.05 conflicts
                with the frozen alpha 0.01 in di.json``), or an unknown key (listing the valid ones).
        """
        valid = set(self.settings) | {"null_encoders", "self_check_seed", "budget"}
        unknown = sorted(set(flags) - valid)
        if unknown:
            raise ValueError(f"unknown dataset-inference settings {unknown}; valid: {sorted(valid)}")
        where = self.source or "the frozen config"
        conflicts = []
        for key, value in flags.items():
            if value is None:
                continue
            if key == "budget":
                members, nonmembers = self.settings["members"], self.settings["nonmembers"]
                if members is None or members + nonmembers != value:
                    total = "all owner-train" if members is None else members + nonmembers
                    conflicts.append(f"--budget {value} conflicts with the frozen budget {total} (members "
                                     f"{members} + nonmembers {nonmembers}) in {where}")
                continue
            frozen = getattr(self, key) if key in ("null_encoders", "self_check_seed") else self.settings[key]
            if value != frozen:
                conflicts.append(f"{flag_name(key)} {value} conflicts with the frozen {key} {frozen} in {where}")
        if conflicts:
            raise ValueError("; ".join(conflicts) + " (a frozen test cannot be re-tuned; drop the flag or "
                             "freeze a new config with --self-check --save-config)")

    # -- serialisation ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The file's JSON object (``format`` first, for a human reading it)."""
        return {"format": FORMAT, "digest": self.digest, "settings": dict(self.settings),
                "null_encoders": self.null_encoders, "self_check_seed": self.self_check_seed,
                "owner_weights_sha256": self.owner_weights_sha256, "self_check": self.self_check,
                "copy_check": self.copy_check}

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the config to ``path`` atomically (a crash leaves the old file or the new one)."""
        from encoderguard.models import atomic_write_bytes

        atomic_write_bytes(path, (json.dumps(self.to_dict(), indent=2) + "\n").encode())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FrozenDIConfig:
        """Read a config written by :meth:`save`.

        Raises:
            ValueError: unreadable or malformed file, another format, a config from before digests (re-run the
                self-check), or a digest mismatch (the file was edited after it was frozen).
        """
        where = str(path)
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{where}: cannot read the dataset-inference config ({exc})") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"{where}: not a dataset-inference config (format {found!r}, expected {FORMAT!r})")
        if "digest" not in data:
            raise ValueError(f"{where} is an old dataset-inference config without a digest; {RERUN_HINT}")
        try:
            return cls(settings=data["settings"], null_encoders=data["null_encoders"],
                       self_check_seed=data["self_check_seed"], self_check=data["self_check"],
                       copy_check=data.get("copy_check"), owner_weights_sha256=data.get("owner_weights_sha256"),
                       digest=str(data["digest"]), source=where)
        except KeyError as exc:
            raise ValueError(f"{where}: malformed dataset-inference config (missing {exc}); {RERUN_HINT}") from exc
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from exc

    # -- report ----------------------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """The self-check as a verdict-like dict (what ``verify di --self-check --json`` prints).

        ``verdict`` is ``"stolen"`` when the owner's own encoder is detected (dataset inference can protect it),
        else ``"inconclusive"``; ``details["scores"]`` holds the owner's score histograms when available.
        """
        check = self.self_check_result()
        owner = check.owner
        notes: list[str] = []
        if check.protects:
            notes.append("the owner's own encoder is detected: dataset inference can protect it"
                         + (f" from {check.min_queries} suspect queries" if check.min_queries else "")
                         + "; copies carry a weaker signal than their victim, so give suspects at least this budget")
        else:
            notes.append(check.reason)
        if check.null and min(check.null) < check.alpha:
            notes.append(f"a random-initialised encoder was flagged on this owner sample (p = {min(check.null):.3g}):"
                         " the sample looks atypical")
        details: dict[str, Any] = {
            "z": owner.z, "auc": owner.auc, "n_members": owner.n_members, "n_nonmembers": owner.n_nonmembers,
            "budgets": {str(k): v for k, v in check.budgets.items()}, "null_p_values": list(check.null),
            "reason": check.reason, "settings": dict(self.settings), "self_check_seed": self.self_check_seed,
            "null_encoders": self.null_encoders, "frozen_digest": self.digest,
            "effect_kind": "Cohen's d of member vs non-member scores, positive in the membership direction"}
        if owner.member_scores.size and owner.nonmember_scores.size:
            from encoderguard.verify.di_plot import score_distributions

            details["scores"] = score_distributions({"owner": owner})
        result: dict[str, Any] = {
            "method": "di", "mode": "self-check", "verdict": "stolen" if check.protects else "inconclusive",
            "p_value": owner.p_value, "alpha": check.alpha, "statistic": owner.statistic, "effect": owner.effect,
            "n": owner.n_members + owner.n_nonmembers, "queries_used": 0, "protects": check.protects,
            "min_queries": check.min_queries, "queries": check.queries, "warnings": notes, "details": details}
        copy = self.copy_check_result()
        if copy is not None:
            result["copy_check"] = copy.to_dict()
            result["protects_copies"] = copy.detected
            notes.append(f"a copy of the owner ({copy.loss}, {copy.budget} queries) is detected (p = "
                         f"{copy.p_value:.3g})" if copy.detected else copy.reason)
        return result
