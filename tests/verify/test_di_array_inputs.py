"""DatasetInference.fit takes the owner's images as numpy arrays as well as tensors and ImageSets."""

import numpy as np
import pytest
import torch

from encoderguard.errors import DataError
from encoderguard.verify.dataset_inference import DatasetInference


def _pixels(n, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(n, 1, 8, 8), dtype=np.uint8)


def _fit(members, nonmembers):
    return DatasetInference(members=20, nonmembers=30, n_permutations=199).fit(members=members, nonmembers=nonmembers)


def test_numpy_arrays_draw_the_same_images_as_tensors():
    members, nonmembers = _pixels(40, 0), _pixels(60, 1)
    from_tensors = _fit(torch.from_numpy(members), torch.from_numpy(nonmembers))
    from_uint8 = _fit(members, nonmembers)
    from_float = _fit(members.astype(np.float32) / 255, nonmembers.astype(np.float64) / 255)
    for fitted in (from_uint8, from_float):
        assert fitted.member_images_.dtype == torch.float32
        torch.testing.assert_close(fitted.member_images_, from_tensors.member_images_)
        torch.testing.assert_close(fitted.nonmember_images_, from_tensors.nonmember_images_)
        np.testing.assert_array_equal(fitted.order_, from_tensors.order_)
    assert float(from_uint8.member_images_.max()) <= 1.0


@pytest.mark.parametrize("bad", [np.zeros((10, 8, 8), dtype=np.float32), np.zeros((10, 1, 8, 8), dtype=np.int64),
                                 [[0.0]]])
def test_other_inputs_are_refused_with_the_accepted_forms(bad):
    with pytest.raises(DataError, match=r"ImageSet or a float tensor or array \[N, C, H, W\]"):
        _fit(bad, _pixels(60, 1))
