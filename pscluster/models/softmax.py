"""Softmax regression: logits = x @ w + b, trained with cross-entropy. Convex, a baseline."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from pscluster.models.base import (
    Array,
    check_batch,
    loss_and_accuracy,
    parameter_rng,
    softmax_cross_entropy,
)

# Small random weights rather than zeros: the loss is convex so zeros would do, but a seeded init
# lets tests and shards check that every process rebuilds the same model.
_INIT_STD = 0.01


class SoftmaxRegression:
    """Multinomial logistic regression; parameters "w" [n_features, n_classes], "b" [n_classes]."""

    def __init__(self, n_features: int, n_classes: int) -> None:
        if n_features <= 0 or n_classes <= 1:
            raise ValueError(
                f"need n_features >= 1 and n_classes >= 2, got {n_features} and {n_classes}"
            )
        self.n_features = n_features
        self.n_classes = n_classes

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"w": (self.n_features, self.n_classes), "b": (self.n_classes,)}

    def init_parameters(self, seed: int) -> dict[str, np.ndarray]:
        w = parameter_rng(seed, "w").standard_normal((self.n_features, self.n_classes)) * _INIT_STD
        return {"w": w.astype(np.float32), "b": np.zeros(self.n_classes, dtype=np.float32)}

    def _logits(self, params: Mapping[str, Array], x: Array) -> Array:
        return x @ params["w"] + params["b"]

    def loss_and_gradients(
        self, params: Mapping[str, Array], x: Array, y: Array
    ) -> tuple[float, dict[str, Array]]:
        check_batch(x, y, self.n_features)
        w = params["w"]
        loss, dlogits = softmax_cross_entropy(self._logits(params, x), y)
        # Gradients take the parameters' dtype (float32 in the cluster), even if x was wider.
        grads = {
            "w": (x.T @ dlogits).astype(w.dtype, copy=False),
            "b": dlogits.sum(axis=0).astype(params["b"].dtype, copy=False),
        }
        return float(loss), grads

    def evaluate(self, params: Mapping[str, Array], x: Array, y: Array) -> tuple[float, float]:
        check_batch(x, y, self.n_features)
        return loss_and_accuracy(self._logits(params, x), y)
