"""Datasets, seeded owner splits and batched augmentations."""

from encoderguard.data.augment import AUGMENTATIONS, create_augmentation
from encoderguard.data.data_set import DataSet, images_only, texts_only
from encoderguard.data.idx import read_idx, write_idx
from encoderguard.data.image_set import ImageSet
from encoderguard.data.registry import DATASETS, MODALITY, RawDataset, data_dir, dataset_modality, load_dataset
from encoderguard.data.sentences import sentence_pool, split_sentences
from encoderguard.data.splits import SPLITS, SplitSpec, load_split, owner_spec, owner_split, parse_data_spec
from encoderguard.data.text_set import TextSet

__all__ = [
    "AUGMENTATIONS", "DATASETS", "SPLITS", "ImageSet", "RawDataset", "SplitSpec", "TextSet", "create_augmentation",
    "data_dir", "load_dataset", "load_split", "owner_spec", "owner_split", "parse_data_spec", "read_idx", "write_idx",
    "MODALITY", "DataSet", "dataset_modality", "images_only", "sentence_pool", "split_sentences", "texts_only",
]
