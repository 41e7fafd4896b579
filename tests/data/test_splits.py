import numpy as np
import pytest
import torch

from encoderguard.data import SplitSpec, load_dataset, load_split, owner_spec, owner_split, parse_data_spec, write_idx
from encoderguard.data.splits import split_indices
from encoderguard.errors import DataError


def test_owner_split_is_disjoint_seeded_and_covers_pool():
    spec = SplitSpec("x", "owner-train", 3, 100, 50)
    idx = split_indices(1000, spec)
    again = split_indices(1000, spec)
    assert all(np.array_equal(idx[k], again[k]) for k in idx)
    sets = {k: set(v.tolist()) for k, v in idx.items()}
    assert len(sets["owner-train"]) == 100 and len(sets["owner-heldout"]) == 50 and len(sets["query"]) == 500
    assert not sets["owner-train"] & sets["owner-heldout"]
    assert not (sets["owner-train"] | sets["owner-heldout"]) & sets["query"]
    other = split_indices(1000, SplitSpec("x", "owner-train", 4, 100, 50))
    assert not np.array_equal(idx["owner-train"], other["owner-train"])


def test_owner_train_prefix_is_stable_across_train_sizes():
    small = split_indices(1000, SplitSpec("x", "owner-train", 0, 50))
    large = split_indices(1000, SplitSpec("x", "owner-train", 0, 200))
    assert np.array_equal(small["owner-train"], large["owner-train"][:50])


def test_train_size_too_large_is_a_clear_error():
    with pytest.raises(DataError, match="leaves no held-out data"):
        split_indices(100, SplitSpec("x", "owner-train", 0, 50))
    with pytest.raises(DataError, match="exceeds"):
        split_indices(100, SplitSpec("x", "owner-train", 0, 10, 45))


def test_digits_splits_have_expected_shapes_and_probe_halves():
    train = load_split(SplitSpec("digits", "owner-train", 0, 100))
    assert train.images.shape[1:] == (1, 8, 8) and len(train) == 100 and train.images.dtype == torch.uint8
    pt = load_split(SplitSpec("digits", "probe-train", 0, 100))
    pe = load_split(SplitSpec("digits", "probe-test", 0, 100))
    raw = load_dataset("digits")
    assert len(pt) + len(pe) == round(len(raw.train) * 0.25)
    assert 0.0 <= float(train.float().min()) and float(train.float().max()) <= 1.0


def test_parse_data_spec():
    assert parse_data_spec("fashion-mnist", default_split="owner-train") == ("fashion-mnist", "owner-train")
    assert parse_data_spec("mnist:train", default_split="query") == ("mnist", "train")
    assert parse_data_spec("idx:/a/b:query", default_split="all") == ("idx:/a/b", "query")
    assert parse_data_spec("idx:/a/b", default_split="all") == ("idx:/a/b", "all")
    with pytest.raises(ValueError, match="unknown split 'bogus'"):
        parse_data_spec("mnist:bogus", default_split="all")


def test_unknown_dataset_lists_choices():
    with pytest.raises(ValueError, match="fashion-mnist, mnist, digits"):
        load_dataset("cifar-100")


def test_missing_fashion_mnist_says_how_to_install(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", data_dir=str(tmp_path))


def test_user_idx_folder_and_label_mismatch(tmp_path):
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (40, 6, 6), dtype=np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", rng.integers(0, 3, (40,), dtype=np.uint8))
    data = load_split(SplitSpec(f"idx:{tmp_path}", "owner-train", 0, 5))
    assert data.input_shape == (1, 6, 6) and len(data) == 5
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", rng.integers(0, 3, (39,), dtype=np.uint8))
    with pytest.raises(DataError, match="39 labels for 40 images"):
        load_dataset(f"idx:{tmp_path}/")


def test_image_folder_loader(tmp_path):
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(np.full((5, 5, 3), 40 * i, dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    raw = load_dataset(f"folder:{tmp_path}")
    assert raw.train.images.shape == (6, 3, 5, 5)
    assert raw.train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    (tmp_path / "b" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="not a readable image"):
        load_dataset(f"folder:{tmp_path}/.")


def test_owner_split_rebuilds_the_owners_images_from_a_card():
    from encoderguard.models import ModelCard

    spec = SplitSpec("digits", "owner-train", 3, 300)
    card = ModelCard(arch="convnet", arch_kwargs={}, input_shape=(1, 8, 8), embed_dim=16, data=spec.to_dict())
    assert owner_spec(card) == spec == owner_spec(spec.to_dict())
    for split in ("owner-train", "owner-heldout", "query", "probe-test"):
        got = owner_split(card, split)
        want = load_split(spec.with_split(split))
        assert got.name == f"digits:{split}" and torch.equal(got.images, want.images)
    assert len(owner_split(card, "owner-train")) == 300


def test_owner_split_needs_the_split_the_owner_trained_on():
    from encoderguard.models import ModelCard

    bare = ModelCard(arch="convnet", arch_kwargs={}, input_shape=(1, 8, 8), embed_dim=16, data={"dataset": "digits"})
    with pytest.raises(DataError, match=r"no split information \(missing data.split_seed, data.train_size\)"):
        owner_split(bare, "query")
    with pytest.raises(DataError, match="no split information"):
        owner_spec(None)
    independent = {"dataset": "digits", "split": "query", "split_seed": 0, "train_size": 100}
    with pytest.raises(DataError, match="not 'owner-train'"):
        owner_split(independent, "owner-heldout")
    assert len(owner_split(independent, "probe-train")) > 0  # public-like splits stay available
    with pytest.raises(ValueError, match="unknown split 'holdout'"):
        owner_split(independent, "holdout")
