import functools
import math
import re

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import Ridge

from encoderguard.data.image_set import ImageSet
from encoderguard.errors import DataError
from encoderguard.models import create_encoder, encode
from encoderguard.train import train_autoencoder


@functools.lru_cache(maxsize=1)
def _digit_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)  # 0..16 -> 0..255
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(digits.target.astype(np.int64))


def _digits(start: int, stop: int) -> ImageSet:
    images, labels = _digit_arrays()
    return ImageSet(images[start:stop].clone(), labels[start:stop].clone(), name=f"digits[{start}:{stop}]")


def _mlp(seed: int = 0, *, embed_dim: int = 16):
    torch.manual_seed(seed)
    return create_encoder("mlp", input_shape=(1, 8, 8), embed_dim=embed_dim, hidden=32, depth=2)


def _convnet(seed: int = 0):
    torch.manual_seed(seed)
    return create_encoder("convnet", input_shape=(1, 8, 8), embed_dim=16, width=4, depth=2)


def test_loss_decreases_and_encoder_is_left_in_eval_mode():
    enc = _mlp()
    losses = train_autoencoder(enc, _digits(0, 400), epochs=5, batch_size=64, lr=3e-3)
    assert len(losses) == 5 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0]
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False))
    assert not enc.training
    assert enc(torch.rand(3, 1, 8, 8)).shape == (3, 16)


def test_reconstruction_error_after_training_is_below_the_error_at_init():
    # One full batch per epoch: each epoch's loss is the error of the weights before its only step, so the first
    # is exactly the reconstruction error at initialisation.
    data = _digits(0, 300)
    losses = train_autoencoder(_convnet(), data, epochs=15, batch_size=len(data), lr=1e-2)
    pixel_variance = float(data.float().var(dim=0).mean())
    assert losses[0] > pixel_variance  # a random decoder does worse than predicting the mean image
    assert losses[-1] < 0.5 * losses[0]
    assert losses[-1] < pixel_variance


def test_trained_features_reconstruct_held_out_images_better_than_random_init():
    # An encoder-independent check that the representation learned the images: a ridge map from features to pixels,
    # fitted on the training images and scored on held-out ones.
    train, test = _digits(0, 600), _digits(600, 1200)

    def held_out_mse(enc):
        ridge = Ridge(alpha=1e-3).fit(encode(enc, train).numpy(), train.float().flatten(1).numpy())
        predicted = ridge.predict(encode(enc, test).numpy())
        return float(((predicted - test.float().flatten(1).numpy()) ** 2).mean())

    random_init = _mlp(3).eval()
    trained = _mlp(3)
    train_autoencoder(trained, train, epochs=10, batch_size=64, lr=3e-3)
    assert held_out_mse(trained) < 0.85 * held_out_mse(random_init)


@pytest.mark.parametrize("make", [_convnet, _mlp], ids=["convnet", "mlp"])
def test_same_seed_same_weights_other_seed_other_weights(make):
    data = _digits(0, 150)

    def run(seed):
        enc = make()
        losses = train_autoencoder(enc, data, epochs=2, batch_size=32, seed=seed)
        return enc.state_dict(), losses

    a, loss_a = run(1)
    b, loss_b = run(1)
    c, loss_c = run(2)
    assert loss_a == loss_b
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert loss_a != loss_c
    assert any(not torch.equal(a[name], c[name]) for name in a if a[name].is_floating_point())


def test_labels_are_ignored():
    data = _digits(0, 96)
    unlabeled = ImageSet(data.images, torch.full((96,), -1))
    a, b = _mlp(), _mlp()
    assert train_autoencoder(a, data, epochs=2, batch_size=32) == train_autoencoder(b, unlabeled, epochs=2,
                                                                                     batch_size=32)
    for (name, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), name


def test_training_leaves_the_global_generator_alone():
    before = torch.get_rng_state()
    train_autoencoder(_mlp(), _digits(0, 64), epochs=1, batch_size=32, seed=5)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize(("kwargs", "bad"), [
    ({"epochs": 0}, "epochs must be an integer >= 1, got 0"),
    ({"epochs": True}, "epochs must be an integer >= 1, got True"),
    ({"epochs": 1, "batch_size": 0}, "batch_size must be an integer >= 2, got 0"),
    ({"epochs": 1, "lr": -1.0}, "lr must be a finite number > 0, got -1.0"),
    ({"epochs": 1, "lr": float("nan")}, "got nan"),
])
def test_bad_settings(kwargs, bad):
    with pytest.raises(ValueError, match=re.escape(bad)):
        train_autoencoder(_mlp(), _digits(0, 8), **kwargs)


def test_bad_data():
    with pytest.raises(DataError, match="at least 2 images, got 1"):
        train_autoencoder(_mlp(), _digits(0, 1), epochs=1)
    rgb = ImageSet(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match=re.escape("images are (3, 8, 8) but the encoder takes (1, 8, 8)")):
        train_autoencoder(_mlp(), rgb, epochs=1)
