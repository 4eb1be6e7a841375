"""Per-row optimizers of the sparse tables: a step updates only the rows it names.

Their state is one array per table shaped like its rows (Adagrad's sums of squares), indexed by
the same slots, created with the row and dropped with it.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

ADAGRAD_EPS = 1e-8


class RowOptimizer(Protocol):
    def update(
        self, values: np.ndarray, state: np.ndarray | None, slots: np.ndarray, grads: np.ndarray
    ) -> None:
        """values[slots] <- update(values[slots], grads) (grads [n, dim], already scaled)."""
        ...

    @property
    def has_state(self) -> bool: ...


class RowSGD:
    def __init__(self, lr: float) -> None:
        self.lr = lr

    @property
    def has_state(self) -> bool:
        return False

    def update(
        self, values: np.ndarray, state: np.ndarray | None, slots: np.ndarray, grads: np.ndarray
    ) -> None:
        values[slots] -= np.float32(self.lr) * grads


class RowAdagrad:
    """Adagrad (Duchi et al. 2011), per coordinate: s += g**2; w -= lr g / (sqrt(s) + eps)."""

    def __init__(self, lr: float) -> None:
        self.lr = lr

    @property
    def has_state(self) -> bool:
        return True

    def update(
        self, values: np.ndarray, state: np.ndarray | None, slots: np.ndarray, grads: np.ndarray
    ) -> None:
        assert state is not None
        sums = state[slots] + grads * grads
        state[slots] = sums
        values[slots] -= np.float32(self.lr) * grads / (np.sqrt(sums) + np.float32(ADAGRAD_EPS))


def build_row_optimizer(name: str, lr: float) -> RowOptimizer:
    if name == "sgd":
        return RowSGD(lr)
    if name == "adagrad":
        return RowAdagrad(lr)
    raise ValueError(f"unknown sparse optimizer {name!r}; expected sgd or adagrad")
