import pytest
import torch

from encoderguard.models import create_encoder, projection_head


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 8, 8), (2, 9, 13)])
@pytest.mark.parametrize("pool", ["avg", "flatten"])
def test_convnet_any_channels_and_size(shape, pool):
    enc = create_encoder("convnet", input_shape=shape, embed_dim=24, width=4, pool=pool).eval()
    assert enc(torch.rand(2, *shape)).shape == (2, 24)


def test_resnet18_shapes():
    enc = create_encoder("resnet18", input_shape=(1, 16, 16), width=4).eval()
    assert enc(torch.rand(2, 1, 16, 16)).shape == (2, 512)
    assert isinstance(enc.head, torch.nn.Linear)  # width 4 pools 32 channels, mapped to the 512 asked for
    same = create_encoder("resnet18", input_shape=(1, 16, 16), width=4, embed_dim=32)
    assert isinstance(same.head, torch.nn.Identity)
    enc = create_encoder("resnet18", input_shape=(3, 16, 16), width=4, embed_dim=10).eval()
    assert enc(torch.rand(2, 3, 16, 16)).shape == (2, 10)


def test_registry_errors_list_choices():
    with pytest.raises(ValueError, match="convnet, resnet18"):
        create_encoder("vgg", input_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="pool must be one of"):
        create_encoder("convnet", input_shape=(1, 8, 8), pool="max")
    with pytest.raises(ValueError, match="bad settings"):
        create_encoder("convnet", input_shape=(1, 8, 8), colour=True)
    with pytest.raises(ValueError, match="input_shape"):
        create_encoder("convnet", input_shape=(1, 2, 8))


def test_projection_head():
    head = projection_head(16, hidden_dim=8, out_dim=4).eval()
    assert head(torch.rand(3, 16)).shape == (3, 4)
