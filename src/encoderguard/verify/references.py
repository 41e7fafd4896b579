"""Reference models: independent encoders that calibrate the null of every ownership test.

An ownership test's p-value is only as good as its null: "what would an encoder that never descended from the
owner's model score?". Theory does not answer that for the watermark (every independent encoder reads the owner's
head with its own chance level), so the answer is measured on reference models that cannot descend from the owner:

- trained here by :func:`build_references` on data disjoint from the owner's (the owner's ``query`` split, each
  reference on its own random sample), from their own random initial weights (never the owner's seed), with several
  recipes (SimCLR with the owner's own recipe and architecture, the hardest innocents; supervised classification;
  autoencoding) and at least two architectures (the owner's and an MLP);
- or registered by the owner (:meth:`ReferenceSet.add_checkpoint`, :meth:`ReferenceSet.add_api`): public or
  third-party models, as a checkpoint directory or an embedding API.

A reference set is a folder with ``references.json`` (the manifest) and one checkpoint directory per trained
reference. :func:`build_references` also writes ``references.json`` into the owner's checkpoint directory pointing at
the set, which is where :func:`owner_reference_dir` (and ``verify all`` without ``--references``) finds it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from encoderguard.api.protocol import EmbeddingAPI
from encoderguard.data.data_set import images_only
from encoderguard.data.image_set import ImageSet
from encoderguard.data.splits import SplitSpec, owner_spec, owner_split
from encoderguard.errors import DataError
from encoderguard.models.card import ModelCard
from encoderguard.models.checkpoint import CARD_FILE, atomic_write_bytes, load_checkpoint, read_card, save_checkpoint
from encoderguard.models.model_spec import ONNX_PREFIX, load_any
from encoderguard.models.registry import create_encoder

logger = logging.getLogger(__name__)

MANIFEST_FILE = "references.json"
MANIFEST_FORMAT = "encoderguard-references"
OWNER_POINTER_FORMAT = "encoderguard-references-pointer"
RECIPES = ("simclr", "supervised", "autoencoder")
# The order in which build_references cycles through (recipe, architecture): every set of 3 or more built from the
# start holds 3 recipes and 2 architectures. "owner" is the owner's own architecture and settings.
PLAN: tuple[tuple[str, str], ...] = (("simclr", "owner"), ("supervised", "mlp"), ("autoencoder", "owner"),
                                     ("supervised", "owner"), ("autoencoder", "mlp"), ("simclr", "mlp"))
MLP_KWARGS = {"hidden": 256, "depth": 2}
DEFAULT_SEED = 1_000_000


@dataclass(frozen=True)
class Reference:
    """One reference model, ready to query.

    Attributes:
        name: its name in the manifest.
        api: an :class:`~encoderguard.api.EmbeddingAPI` serving it.
        info: its manifest entry (recipe, architecture, data, seed, seconds...).
    """

    name: str
    api: EmbeddingAPI
    info: dict[str, Any] = field(default_factory=dict)


class ReferenceSet:
    """A folder of reference models and its manifest.

    Args:
        folder: the reference-set folder.
        manifest: the parsed ``references.json``.

    Use :meth:`load` or :meth:`create` rather than the constructor.
    """

    def __init__(self, folder: str | os.PathLike[str], manifest: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.manifest = manifest

    # -- files -----------------------------------------------------------------------------------------------
    @classmethod
    def create(cls, folder: str | os.PathLike[str], *, owner_card: ModelCard | None = None) -> ReferenceSet:
        """Open ``folder`` as a reference set, creating an empty manifest if there is none."""
        path = Path(folder)
        if (path / MANIFEST_FILE).exists():
            return cls.load(path)
        if path.exists() and not path.is_dir():
            raise DataError(f"{path} is a file; a reference set is a folder")
        manifest: dict[str, Any] = {"format": MANIFEST_FORMAT, "owner_weights_sha256": None, "references": []}
        if owner_card is not None:
            manifest["owner_weights_sha256"] = owner_card.weights_sha256
            manifest["owner_data"] = owner_card.data
        refs = cls(path, manifest)
        refs.save()
        return refs

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> ReferenceSet:
        """Read a reference set.

        Raises:
            DataError: no manifest, or a malformed one.
        """
        path = Path(folder)
        manifest_path = path / MANIFEST_FILE
        if not manifest_path.is_file():
            raise DataError(f"no reference set at {path} (no {MANIFEST_FILE}): build one with 'encoderguard "
                            "references build --owner DIR --count K --out DIR'")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{manifest_path}: not readable JSON ({exc})") from exc
        if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
            raise DataError(f"{manifest_path}: not an encoderguard reference manifest")
        entries = manifest.get("references")
        kinds = ("checkpoint", "onnx", "api", "lsa")
        if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("name"), str)
                                                    and e.get("kind") in kinds for e in entries):
            raise DataError(f"{manifest_path}: malformed \"references\" list (each entry needs a name and a kind)")
        return cls(path, manifest)

    def save(self) -> None:
        """Write the manifest atomically."""
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.folder / MANIFEST_FILE, (json.dumps(self.manifest, indent=2) + "\n").encode())

    @property
    def entries(self) -> list[dict[str, Any]]:
        return list(self.manifest["references"])

    def names(self) -> list[str]:
        return [e["name"] for e in self.manifest["references"]]

    def _add(self, entry: dict[str, Any]) -> None:
        if entry["name"] in self.names():
            raise ValueError(f"a reference named {entry['name']!r} is already in {self.folder / MANIFEST_FILE}")
        self.manifest["references"].append(entry)
        self.save()

    # -- registering third-party models ------------------------------------------------------------------------
    def add_checkpoint(self, name: str, path: str | os.PathLike[str], *,
                       input_shape: tuple[int, int, int] | None = None, **info: Any) -> dict[str, Any]:
        """Register an existing checkpoint directory (a public or third-party model) as a reference.

        The checkpoint is loaded once here to check it (safetensors + card only; never pickle). ``onnx:PATH``
        registers an ONNX model instead (``input_shape`` for one with dynamic image dimensions).

        Raises:
            CheckpointError: not a loadable checkpoint.
            ValueError: the name is taken.
        """
        if str(path).startswith(ONNX_PREFIX):
            model = load_any(path, input_shape=input_shape)
            entry = {"name": _check_name(name), "kind": "onnx",
                     "path": str(Path(str(path)[len(ONNX_PREFIX):]).resolve()),
                     "recipe": str(info.pop("recipe", "registered")), "arch": "onnx", "embed_dim": model.embed_dim,
                     "input_shape": list(model.input_shape or ()), "data": None, **info}
            self._add(entry)
            return entry
        card = load_checkpoint(path).card
        entry = {"name": _check_name(name), "kind": "checkpoint", "path": str(Path(path).resolve()),
                 "recipe": str(info.pop("recipe", "registered")), "arch": card.arch, "embed_dim": card.embed_dim,
                 "data": card.data, **info}
        self._add(entry)
        return entry

    def add_api(self, name: str, url: str, *, key_env: str | None = None, **info: Any) -> dict[str, Any]:
        """Register a model served by an embedding API as a reference.

        The key is not stored: ``key_env`` names the environment variable that holds it when the set is used.
        """
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {url!r}")
        entry = {"name": _check_name(name), "kind": "api", "url": url, "key_env": key_env,
                 "recipe": str(info.pop("recipe", "registered")), **info}
        self._add(entry)
        return entry

    # -- using -----------------------------------------------------------------------------------------------
    def references(self) -> list[Reference]:
        """Every reference as a queryable :class:`Reference` (checkpoints in memory, APIs as HTTP clients).

        Raises:
            CheckpointError: a registered checkpoint cannot be loaded.
            DataError: an API reference's key variable is not set.
        """
        from encoderguard.api import LocalAPI

        out: list[Reference] = []
        for entry in self.entries:
            if entry["kind"] == "checkpoint":
                folder = Path(entry["path"])
                folder = folder if folder.is_absolute() else self.folder / folder
                encoder = load_checkpoint(folder).encoder
                out.append(Reference(entry["name"], LocalAPI(encoder, key=f"reference:{entry['name']}"), entry))
            elif entry["kind"] == "lsa":  # a text reference (verify/text_references.py)
                from encoderguard.models.lsa_encoder import LSAEncoder

                folder = Path(entry["path"])
                folder = folder if folder.is_absolute() else self.folder / folder
                lsa = LSAEncoder.load(folder)
                out.append(Reference(entry["name"], LocalAPI(lsa, key=f"reference:{entry['name']}"), entry))
            elif entry["kind"] == "onnx":
                folder = Path(entry["path"])
                folder = folder if folder.is_absolute() else self.folder / folder
                model = load_any(f"{ONNX_PREFIX}{folder}", input_shape=tuple(entry["input_shape"]))
                out.append(Reference(entry["name"], LocalAPI(model, key=f"reference:{entry['name']}"), entry))
            else:
                from encoderguard.api import HTTPEmbeddingAPI

                key_env = entry.get("key_env")
                key = os.environ.get(key_env, "") if key_env else ""
                if key_env and not key:
                    raise DataError(f"reference {entry['name']!r} needs its API key in ${key_env}, which is not set")
                out.append(Reference(entry["name"], HTTPEmbeddingAPI(entry["url"], key), entry))
        return out

    def check_owner(self, owner_card: ModelCard) -> list[str]:
        """Warnings when this set was built for another owner (its training data may then overlap this owner's)."""
        built_for = self.manifest.get("owner_weights_sha256")
        if built_for and built_for != owner_card.weights_sha256:
            return [f"the reference set {self.folder} was built for another owner model: its references were "
                    "trained on data disjoint from THAT owner's; check they never saw this owner's data"]
        return []


def owner_reference_dir(owner_dir: str | os.PathLike[str]) -> Path | None:
    """The reference set registered next to the owner's checkpoint (``OWNER_DIR/references.json``), if any."""
    pointer = Path(owner_dir) / MANIFEST_FILE
    if not pointer.is_file():
        return None
    try:
        raw = json.loads(pointer.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{pointer}: not readable JSON ({exc})") from exc
    if not isinstance(raw, dict) or raw.get("format") != OWNER_POINTER_FORMAT or not isinstance(raw.get("path"), str):
        raise DataError(f"{pointer}: not an encoderguard reference pointer")
    path = Path(raw["path"])
    return path if path.is_absolute() else Path(owner_dir) / path


def register_with_owner(owner_dir: str | os.PathLike[str], refs_dir: str | os.PathLike[str]) -> Path:
    """Write ``OWNER_DIR/references.json`` pointing at ``refs_dir`` (absolute path)."""
    pointer = Path(owner_dir) / MANIFEST_FILE
    body = {"format": OWNER_POINTER_FORMAT, "path": str(Path(refs_dir).resolve())}
    atomic_write_bytes(pointer, (json.dumps(body, indent=2) + "\n").encode())
    return pointer


# -- building ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReferencePlan:
    """How one reference is trained.

    Attributes:
        name: folder and manifest name.
        recipe: ``"simclr"``, ``"supervised"`` or ``"autoencoder"``.
        arch: registry architecture name.
        arch_kwargs: its settings (representation size = the owner's).
        seed: initialisation and training seed (never the owner's).
        sample_seed: seeds the reference's sample of the training pool.
        epochs: training epochs.
    """

    name: str
    recipe: str
    arch: str
    arch_kwargs: dict[str, Any]
    seed: int
    sample_seed: int
    epochs: int


def plan_references(owner_card: ModelCard, *, count: int, seed: int = DEFAULT_SEED, max_epochs: int = 60,
                    supervised_epochs: int = 20, autoencoder_epochs: int = 20) -> list[ReferencePlan]:
    """The ``count`` references :func:`build_references` trains for this owner (a pure function of its inputs).

    Raises:
        ValueError: ``count < 1`` or bad epochs.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a positive integer, got {count!r}")
    for label, value in (("max_epochs", max_epochs), ("supervised_epochs", supervised_epochs),
                         ("autoencoder_epochs", autoencoder_epochs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{label} must be a positive integer, got {value!r}")
    owner_seed = owner_card.training.get("seed")
    owner_epochs = int(owner_card.training.get("epochs") or max_epochs)
    plans: list[ReferencePlan] = []
    s = seed
    for i in range(count):
        recipe, arch_choice = PLAN[i % len(PLAN)]
        while s == owner_seed:  # never the owner's initial weights
            s += 1
        if arch_choice == "owner":
            arch, kwargs = owner_card.arch, dict(owner_card.arch_kwargs)
        else:
            arch, kwargs = "mlp", dict(MLP_KWARGS)
        kwargs["embed_dim"] = owner_card.embed_dim
        epochs = {"simclr": min(owner_epochs, max_epochs), "supervised": supervised_epochs,
                  "autoencoder": autoencoder_epochs}[recipe]
        plans.append(ReferencePlan(name=f"ref{i:02d}-{recipe}-{arch}", recipe=recipe, arch=arch, arch_kwargs=kwargs,
                                   seed=s, sample_seed=s + 7, epochs=epochs))
        s += 1
    return plans


def reference_pool(owner_card: ModelCard, *, data_dir: str | None = None) -> tuple[ImageSet, SplitSpec]:
    """The images references train on: the owner's ``query`` split (disjoint from all of the owner's data).

    Raises:
        DataError: the owner's card records no data split.
    """
    if not owner_card.data:
        raise DataError("the owner's card records no data split: references must train on data disjoint from the "
                        "owner's; register independent models with 'encoderguard references add' instead")
    pool = images_only(owner_split(owner_card, "query", data_dir=data_dir), purpose="training image references")
    return pool, owner_spec(owner_card).with_split("query")


def train_reference(plan: ReferencePlan, pool: ImageSet, spec: SplitSpec, out_dir: str | os.PathLike[str], *,
                    images: int, owner_card: ModelCard, progress: bool = False) -> dict[str, Any]:
    """Train one reference into ``out_dir`` (a checkpoint directory) and return its manifest entry."""
    started = time.perf_counter()
    n = min(images, len(pool))
    sample = torch.randperm(len(pool), generator=torch.Generator().manual_seed(plan.sample_seed))[:n]
    data = pool.subset(sample, name=f"{pool.name}[{n} random, seed {plan.sample_seed}]")
    torch.manual_seed(plan.seed)
    kwargs = dict(plan.arch_kwargs)
    encoder = create_encoder(plan.arch, input_shape=data.input_shape, **kwargs)
    training: dict[str, Any] = {"method": plan.recipe, "seed": plan.seed, "epochs": plan.epochs}
    if plan.recipe == "simclr":
        from encoderguard.train.simclr import SimCLRConfig, train_simclr

        owner_training = owner_card.training
        config = SimCLRConfig(epochs=plan.epochs, seed=plan.seed,
                              batch_size=int(owner_training.get("batch_size", 256)),
                              lr=float(owner_training.get("lr", 1e-3)),
                              temperature=float(owner_training.get("temperature", 0.5)),
                              augmentation=str(owner_training.get("augmentation", "simclr")))
        result = train_simclr(encoder, data, config, work_dir=Path(out_dir), progress=progress)
        losses = result.epoch_losses
        training.update(config.to_dict())
    elif plan.recipe == "supervised":
        from encoderguard.train.supervised import train_supervised

        losses = train_supervised(encoder, data, epochs=plan.epochs, seed=plan.seed, progress=progress)
    else:
        from encoderguard.train.autoencoder import train_autoencoder

        losses = train_autoencoder(encoder, data, epochs=plan.epochs, seed=plan.seed, progress=progress)
    training["epoch_losses"] = [float(v) for v in losses]
    seconds = time.perf_counter() - started
    data_card = {**spec.to_dict(), "max_images": n, "sample_seed": plan.sample_seed}
    card = ModelCard(arch=plan.arch, arch_kwargs={}, input_shape=encoder.input_shape, embed_dim=encoder.embed_dim,
                     data=data_card, training=training, metrics={"train_seconds": seconds})
    save_checkpoint(out_dir, encoder=encoder.eval(), card=card)
    Path(out_dir, "resume.safetensors").unlink(missing_ok=True)
    return {"name": plan.name, "kind": "checkpoint", "path": plan.name, "recipe": plan.recipe, "arch": plan.arch,
            "seed": plan.seed, "epochs": plan.epochs, "images": n, "data": f"{spec.dataset}:query",
            "seconds": seconds}


def build_references(owner_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, count: int,
                     seed: int = DEFAULT_SEED, images: int | None = None, max_epochs: int = 60,
                     data_dir: str | None = None, progress: bool = True, register: bool = True,
                     on_model: Callable[[dict[str, Any]], None] | None = None) -> ReferenceSet:
    """Train ``count`` reference models for the owner in ``out_dir`` (resumable: finished ones are kept).

    Each reference trains on its own random sample of the owner's ``query`` split (``images`` images; default: the
    owner's training-set size, at least 500), from its own seed (never the owner's). Rerunning the command after an
    interruption trains only what is missing; a SimCLR reference interrupted mid-training resumes from its epoch.

    Args:
        owner_dir: the owner's checkpoint directory.
        out_dir: the reference-set folder.
        count: how many references the set should hold (trained ones included).
        seed: first reference seed.
        images: training images per reference.
        max_epochs: cap on the SimCLR references' epochs (the owner's own epochs otherwise).
        data_dir: folder of the named datasets.
        progress: progress bars on stderr.
        register: write ``OWNER_DIR/references.json`` pointing at the set.
        on_model: called with each new manifest entry.

    Returns:
        The :class:`ReferenceSet`.

    Raises:
        CheckpointError: the owner cannot be loaded.
        DataError: the owner's card records no data split.
    """
    owner_card = read_card(owner_dir)
    if Path(out_dir).resolve() == Path(owner_dir).resolve():
        raise ValueError(f"--out {out_dir} is the owner's own folder: put the reference set in a folder of its own "
                         "(the owner folder keeps only a pointer to it)")
    refs = ReferenceSet.create(out_dir, owner_card=owner_card)
    pool, spec = reference_pool(owner_card, data_dir=data_dir)
    n_images = images if images is not None else max(500, int((owner_card.data or {}).get("train_size", 500)))
    plans = plan_references(owner_card, count=count, seed=seed, max_epochs=max_epochs)
    done = set(refs.names())
    for i, plan in enumerate(plans, 1):
        if plan.name in done:
            continue
        folder = refs.folder / plan.name
        if (folder / CARD_FILE).exists() and not (folder / "resume.safetensors").exists():
            raise DataError(f"{folder} holds a model that the manifest does not list; delete it or the set")
        logger.info("[references] %d/%d %s: %s on %d epochs, %d images of %s:query, seed %d", i, len(plans),
                    plan.name, plan.recipe, plan.epochs, min(n_images, len(pool)), spec.dataset, plan.seed)
        entry = train_reference(plan, pool, spec, folder, images=n_images, owner_card=owner_card,
                                progress=progress)
        refs._add(entry)
        if on_model is not None:
            on_model(entry)
    if register:
        register_with_owner(owner_dir, refs.folder)
    return refs


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise ValueError(f"a reference name must be a non-empty string without '/', got {name!r}")
    return name
