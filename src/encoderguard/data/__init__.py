"""Datasets, seeded owner splits and batched augmentations."""

from encoderguard.data.augment import AUGMENTATIONS, create_augmentation
from encoderguard.data.idx import read_idx, write_idx
from encoderguard.data.image_set import ImageSet
from encoderguard.data.registry import DATASETS, RawDataset, data_dir, load_dataset
from encoderguard.data.splits import SPLITS, SplitSpec, load_split, owner_spec, owner_split, parse_data_spec

__all__ = [
    "AUGMENTATIONS", "DATASETS", "SPLITS", "ImageSet", "RawDataset", "SplitSpec", "create_augmentation",
    "data_dir", "load_dataset", "load_split", "owner_spec", "owner_split", "parse_data_spec", "read_idx", "write_idx",
]
