"""Training data: the handwritten digits set and a seeded synthetic classification set.

Every process that loads a dataset with the same arguments gets the same arrays, so workers, the
coordinator's evaluator and the tests agree on the train/test split without exchanging data.

``data/digits.npz`` is the copy of the UCI "Optical Recognition of Handwritten Digits" test set
that scikit-learn bundles (``sklearn/datasets/data/digits.csv.gz``): 1,797 8x8 images with pixel
values 0..16, stored as ``images`` uint8 [1797, 64] and ``labels`` uint8 [1797].
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from importlib import resources

import numpy as np

from pscluster.clicks import ClickLog

DATASETS = ("digits", "synthetic", "clicks")

_DIGITS_MAX_PIXEL = 16.0


@dataclass(frozen=True, eq=False)  # eq=False: comparing ndarray fields with == is ambiguous
class Dataset:
    """A train/test split. Features float32 [n, n_features] (clicks: int64 ids), labels int64
    in [0, n_classes)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_features: int
    n_classes: int
    name: str
    # clicks: the training impressions are computed per batch, not held (x_train is empty).
    log: ClickLog | None = None

    @property
    def n_train(self) -> int:
        return self.log.n_train if self.log is not None else len(self.y_train)

    def train_rows(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of the training examples ``indices``."""
        if self.log is not None:
            return self.log.train_batch(indices)
        return self.x_train[indices], self.y_train[indices]

    @property
    def oracle_auc(self) -> float | None:
        """clicks: the hidden model's AUC on the held-out set (the best achievable)."""
        return self.log.oracle_auc if self.log is not None else None


def load_dataset(
    name: str,
    seed: int,
    *,
    test_fraction: float = 0.2,
    synthetic_samples: int = 10000,
    synthetic_features: int = 32,
    synthetic_classes: int = 10,
    held_out: bool = True,
) -> Dataset:
    """The dataset ``name`` with a stratified train/test split drawn from ``seed``.

    The ``synthetic_*`` arguments apply to "synthetic" only. ``held_out=False`` (a worker's):
    the held-out set may be left empty where making it costs (clicks computes it).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if name == "clicks":
        return _clicks(seed, held_out)
    if name == "digits":
        x, y = _load_digits()
        n_classes = 10
    elif name == "synthetic":
        x, y = make_synthetic(synthetic_samples, synthetic_features, synthetic_classes, seed=seed)
        n_classes = synthetic_classes
    else:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    train, test = stratified_split(y, test_fraction, seed=seed)
    parts = (x[train], y[train], x[test], y[test])
    # Read-only: one Dataset is shared by everything in a process; an in-place edit by one user
    # (normalising, shuffling) would silently change what the others train or evaluate on.
    for part in parts:
        part.setflags(write=False)
    return Dataset(*parts, n_features=x.shape[1], n_classes=n_classes, name=name)


def _clicks(seed: int, held_out: bool) -> Dataset:
    log = ClickLog(seed)
    n_fields = len(log.fields)
    empty = np.zeros((0, n_fields), dtype=np.int64)
    x_test, y_test = log.test_set() if held_out else (empty, empty[:, 0])
    for part in (x_test, y_test):
        part.setflags(write=False)
    empty = np.zeros((0, n_fields), dtype=np.int64)
    return Dataset(empty, empty[:, 0], x_test, y_test, n_fields, 2, "clicks", log)


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    # importlib.resources finds the file both in an installed wheel and an editable checkout.
    blob = resources.files("pscluster").joinpath("data/digits.npz").read_bytes()
    with np.load(io.BytesIO(blob)) as data:
        images, labels = data["images"], data["labels"]
    x = images.astype(np.float32) / np.float32(_DIGITS_MAX_PIXEL)
    return x, labels.astype(np.int64)


def stratified_split(y: np.ndarray, test_fraction: float, *, seed: int) -> tuple[np.ndarray, ...]:
    """(train indices, test indices), each sorted: ``test_fraction`` of every class goes to test.

    Stratified so that the held-out accuracy of a small set like digits does not swing with how
    many of a hard class the split happened to hold out. Each class keeps at least one example on
    each side when it has two or more.
    """
    rng = np.random.default_rng([seed, 0x5E1])  # a stream of its own, apart from data generation
    test_parts = []
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        # Round half up, explicitly: Python's round() goes to even and would surprise on .5.
        n_test = int(np.floor(test_fraction * len(members) + 0.5))
        if len(members) >= 2:
            n_test = min(max(n_test, 1), len(members) - 1)
        test_parts.append(rng.permutation(members)[:n_test])
    test = np.sort(np.concatenate(test_parts))
    is_test = np.zeros(len(y), dtype=bool)
    is_test[test] = True
    return np.flatnonzero(~is_test), test


def make_synthetic(
    n_samples: int, n_features: int, n_classes: int, *, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """A seeded classification set: float32 features [n, n_features], int64 labels.

    Each class is a gaussian blob around its own center, plus a few shared latent factors that
    move every sample along the same directions whatever its label. The factors make features
    correlated and classes overlap, so the set is learnable (well above chance for a linear model)
    but not trivially separable.
    """
    if n_samples < 2 * n_classes:
        raise ValueError(f"need at least 2 samples per class, got {n_samples} for {n_classes}")
    if n_features <= 0 or n_classes < 2:
        raise ValueError(
            f"need n_features >= 1 and n_classes >= 2, got {n_features} and {n_classes}"
        )
    rng = np.random.default_rng([seed, 0x5E7])
    n_factors = max(1, n_features // 4)
    # Center scale chosen by measurement: on the defaults a linear model reaches 82-87% test
    # accuracy (chance is 10%), and an MLP does no better: the classes overlap by construction.
    centers = rng.standard_normal((n_classes, n_features)) * 0.6
    loadings = rng.standard_normal((n_factors, n_features)) * 1.5
    # Balanced classes in a random order.
    y = rng.permutation(np.arange(n_samples) % n_classes)
    factors = rng.standard_normal((n_samples, n_factors))
    noise = rng.standard_normal((n_samples, n_features))
    x = centers[y] + factors @ loadings + noise
    # Standardise each feature (a label-independent affine map) so SGD needs no tuning per seed.
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    return x.astype(np.float32), y.astype(np.int64)
