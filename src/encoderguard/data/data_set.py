"""The type of a loaded data set (images or texts), and narrowing it where only one modality makes sense."""

from __future__ import annotations

from typing import TypeAlias

from encoderguard.data.image_set import ImageSet
from encoderguard.data.text_set import TextSet
from encoderguard.errors import DataError

#: What :func:`~encoderguard.data.load_split` returns: images or texts, by the dataset's modality.
DataSet: TypeAlias = ImageSet | TextSet


def images_only(data: DataSet, *, purpose: str) -> ImageSet:
    """``data`` if it holds images.

    Args:
        data: a loaded set.
        purpose: what needs images, for the message (e.g. ``"SimCLR training"``).

    Returns:
        ``data`` itself.

    Raises:
        DataError: ``data`` holds texts.
    """
    if not isinstance(data, ImageSet):
        raise DataError(f"{purpose} takes images, but {data.name} holds {data.modality}s")
    return data


def texts_only(data: DataSet, *, purpose: str) -> TextSet:
    """``data`` if it holds texts.

    Args:
        data: a loaded set.
        purpose: what needs texts, for the message.

    Returns:
        ``data`` itself.

    Raises:
        DataError: ``data`` holds images.
    """
    if not isinstance(data, TextSet):
        raise DataError(f"{purpose} takes texts, but {data.name} holds {data.modality}s")
    return data
