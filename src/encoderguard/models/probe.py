"""Downstream evaluation on frozen features: linear probe and kNN accuracy."""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from torch import nn

from encoderguard.data.image_set import ImageSet
from encoderguard.data.text_set import TextSet


@dataclass(frozen=True)
class ProbeResult:
    """Accuracy of a linear probe (logistic regression) and a cosine kNN classifier on frozen features."""

    linear_acc: float
    knn_acc: float
    n_train: int
    n_test: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def encode(model: nn.Module, images: ImageSet | TextSet | torch.Tensor | list[str], *,
           batch_size: int = 512) -> torch.Tensor:
    """Representations ``[N, D]`` of ``images`` (an ImageSet, a float tensor in ``[0, 1]``, a TextSet or a list of
    strings) in eval mode, without gradients."""
    was_training = model.training
    model.eval()
    n = len(images) if isinstance(images, (ImageSet, TextSet, list)) else images.shape[0]
    out = []
    for start in range(0, n, batch_size):
        if isinstance(images, (ImageSet, TextSet)):
            x = images.inputs(slice(start, start + batch_size))
        else:
            x = images[start: start + batch_size]
        with torch.no_grad():
            out.append(model(x).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def probe_features(train_x: np.ndarray | torch.Tensor, train_y: np.ndarray | torch.Tensor,
                   test_x: np.ndarray | torch.Tensor, test_y: np.ndarray | torch.Tensor, *, k: int = 20,
                   max_iter: int = 500, seed: int = 0) -> ProbeResult:
    """Fit a standardised logistic regression and a cosine kNN on train features; accuracy on test features.

    Raises:
        ValueError: mismatched sizes, non-finite features or fewer than two classes.
    """
    tx, ty, vx, vy = (np.asarray(a) for a in (train_x, train_y, test_x, test_y))
    if tx.ndim != 2 or vx.ndim != 2 or tx.shape[1] != vx.shape[1]:
        raise ValueError(f"probe features must be [N, D] with equal D, got {tx.shape} and {vx.shape}")
    if len(tx) != len(ty) or len(vx) != len(vy):
        raise ValueError("probe features and labels differ in length")
    if not (np.isfinite(tx).all() and np.isfinite(vx).all()):
        raise ValueError("probe features contain NaN or infinite values")
    if len(np.unique(ty)) < 2:
        raise ValueError("the probe needs at least two classes in its training labels")
    linear = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, random_state=seed))
    # One BLAS thread: these matrices are small, and a multi-threaded BLAS beside torch's own threads made the
    # probe 10-100x slower on a 2-core machine (threads spinning against each other), for the same result.
    with threadpool_limits(limits=1, user_api="blas"):
        with warnings.catch_warnings():  # a probe that stops at max_iter is still a fair, repeatable measurement
            warnings.simplefilter("ignore", ConvergenceWarning)
            linear.fit(tx, ty)
        linear_acc = float((linear.predict(vx) == vy).mean())
        knn = KNeighborsClassifier(n_neighbors=min(k, len(tx)), metric="cosine", algorithm="brute")
        knn.fit(tx, ty)
        knn_acc = float((knn.predict(vx) == vy).mean())
    return ProbeResult(linear_acc=linear_acc, knn_acc=knn_acc, n_train=len(tx), n_test=len(vx))


def probe_model(model: nn.Module, probe_train: ImageSet | TextSet, probe_test: ImageSet | TextSet,
                **kwargs: Any) -> ProbeResult:
    """:func:`probe_features` on a model's representations of the two probe sets."""
    return probe_features(encode(model, probe_train), probe_train.labels, encode(model, probe_test),
                          probe_test.labels, **kwargs)
