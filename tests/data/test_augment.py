import pytest
import torch

from encoderguard.data import create_augmentation


@pytest.mark.parametrize("name", ["simclr", "weak"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (2, 12, 16)])
def test_augmentation_keeps_shape_range_and_varies(name, shape):
    torch.manual_seed(0)
    x = torch.rand(8, *shape)
    aug = create_augmentation(name, shape[0], shape[1:])
    a, b = aug(x), aug(x)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert not torch.allclose(a, b)


def test_augmentation_is_reproducible_under_seed():
    x = torch.rand(4, 1, 16, 16)
    aug = create_augmentation("simclr", 1, (16, 16))
    torch.manual_seed(5)
    a = aug(x)
    torch.manual_seed(5)
    assert torch.equal(a, aug(x))


def test_bad_settings():
    with pytest.raises(ValueError, match="unknown augmentation 'strong'"):
        create_augmentation("strong", 1, (8, 8))
    with pytest.raises(ValueError, match="at least 4x4"):
        create_augmentation("simclr", 1, (2, 8))
