import functools
import math
import re

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from encoderguard.data.image_set import ImageSet
from encoderguard.errors import DataError
from encoderguard.models import create_encoder, encode, probe_features
from encoderguard.train import train_supervised
from encoderguard.train.supervised import _random_shift


@functools.lru_cache(maxsize=1)
def _digit_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)  # 0..16 -> 0..255
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(digits.target.astype(np.int64))


def _digits(start: int, stop: int, *, scale: int = 1) -> ImageSet:
    images, labels = _digit_arrays()
    x = images[start:stop]
    if scale > 1:  # upsampled digits: wide enough for the shift augmentation to be on
        x = x.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    return ImageSet(x.clone(), labels[start:stop].clone(), name=f"digits[{start}:{stop}]")


def _mlp(seed: int = 0, *, size: int = 8, embed_dim: int = 16):
    torch.manual_seed(seed)
    return create_encoder("mlp", input_shape=(1, size, size), embed_dim=embed_dim, hidden=32, depth=2)


def _convnet(seed: int = 0):
    torch.manual_seed(seed)
    return create_encoder("convnet", input_shape=(1, 8, 8), embed_dim=16, width=4, depth=2)


def test_loss_decreases_and_encoder_is_left_in_eval_mode():
    enc = _mlp()
    losses = train_supervised(enc, _digits(0, 400), epochs=5, batch_size=64, lr=3e-3)
    assert len(losses) == 5 and all(math.isfinite(v) for v in losses)
    assert losses[0] > 1.5  # about log(10) at the start: ten balanced classes
    assert losses[-1] < 0.5 * losses[0]
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False))
    assert not enc.training
    assert enc(torch.rand(3, 1, 8, 8)).shape == (3, 16)


@pytest.mark.parametrize("make", [lambda: _convnet(), lambda: _mlp(size=32)], ids=["convnet-8px", "mlp-32px-shifted"])
def test_same_seed_same_weights_other_seed_other_weights(make):
    data = _digits(0, 150, scale=4) if make().input_shape[1] == 32 else _digits(0, 150)

    def run(seed):
        enc = make()
        losses = train_supervised(enc, data, epochs=2, batch_size=32, seed=seed)
        return enc.state_dict(), losses

    a, loss_a = run(1)
    b, loss_b = run(1)
    c, loss_c = run(2)
    assert loss_a == loss_b
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert loss_a != loss_c
    assert any(not torch.equal(a[name], c[name]) for name in a if a[name].is_floating_point())


def test_training_leaves_the_global_generator_alone():
    enc = _mlp()
    before = torch.get_rng_state()
    train_supervised(enc, _digits(0, 64), epochs=1, batch_size=32, seed=5)
    assert torch.equal(torch.get_rng_state(), before)


def test_shift_is_a_per_image_circular_roll():
    x = torch.rand(64, 2, 5, 12)
    out = _random_shift(x, 2, torch.Generator().manual_seed(0))
    found = []
    for i in range(len(x)):
        matches = [s for s in range(-2, 3) if torch.equal(out[i], torch.roll(x[i], s, dims=-1))]
        assert len(matches) == 1, i
        found.append(matches[0])
    assert set(found) == {-2, -1, 0, 1, 2}
    assert _random_shift(x, 0, torch.Generator()) is x


def test_supervised_features_beat_random_init_on_a_linear_probe():
    train, test = _digits(0, 600), _digits(600, 1200)
    random_init = _mlp(3).eval()
    trained = _mlp(3)
    train_supervised(trained, train, epochs=10, batch_size=64, lr=3e-3)
    before = probe_features(encode(random_init, train), train.labels, encode(random_init, test), test.labels)
    after = probe_features(encode(trained, train), train.labels, encode(trained, test), test.labels)
    assert after.linear_acc >= 0.85
    assert after.linear_acc >= before.linear_acc + 0.1


def test_labels_need_not_be_contiguous():
    images, labels = _digit_arrays()
    keep = (labels == 3) | (labels == 7)
    data = ImageSet(images[keep][:120].clone(), labels[keep][:120].clone())
    enc = _mlp()
    losses = train_supervised(enc, data, epochs=4, batch_size=32, lr=3e-3)
    assert losses[0] < 1.0  # two classes: about log(2) at the start, not log(8)
    assert losses[-1] < 0.5 * losses[0]


def test_unknown_labels_and_single_class_raise_data_error():
    data = _digits(0, 40)
    unlabeled = ImageSet(data.images, torch.full((40,), -1), name="unlabeled-set")
    with pytest.raises(DataError, match=r"40 of 40 images in 'unlabeled-set' have unknown labels \(-1\)"):
        train_supervised(_mlp(), unlabeled, epochs=1)
    partly = data.labels.clone()
    partly[::4] = -1
    with pytest.raises(DataError, match="10 of 40 images"):
        train_supervised(_mlp(), ImageSet(data.images, partly), epochs=1)
    with pytest.raises(DataError, match="at least two classes.*label 4"):
        train_supervised(_mlp(), ImageSet(data.images, torch.full((40,), 4)), epochs=1)
    with pytest.raises(DataError, match="at least 2 images"):
        train_supervised(_mlp(), data.head(1), epochs=1)


@pytest.mark.parametrize(("kwargs", "bad"), [
    ({"epochs": 0}, "epochs must be an integer >= 1, got 0"),
    ({"epochs": 1.5}, "epochs must be an integer >= 1, got 1.5"),
    ({"epochs": 1, "batch_size": 1}, "batch_size must be an integer >= 2, got 1"),
    ({"epochs": 1, "lr": 0.0}, "lr must be a finite number > 0, got 0.0"),
    ({"epochs": 1, "lr": -1e-3}, "got -0.001"),
    ({"epochs": 1, "lr": float("nan")}, "got nan"),
    ({"epochs": 1, "lr": float("inf")}, "got inf"),
])
def test_bad_settings(kwargs, bad):
    with pytest.raises(ValueError, match=re.escape(bad)):
        train_supervised(_mlp(), _digits(0, 8), **kwargs)


def test_images_of_another_shape_are_refused():
    with pytest.raises(ValueError, match=re.escape("images are (1, 32, 32) but the encoder takes (1, 8, 8)")):
        train_supervised(_mlp(), _digits(0, 8, scale=4), epochs=1)
