"""Datasets: the shipped digits file, reproducible stratified splits, a learnable synthetic set."""

from __future__ import annotations

import io
from importlib import resources

import numpy as np
import pytest

from pscluster.datasets import Dataset, load_dataset, make_synthetic, stratified_split
from pscluster.models import SoftmaxRegression
from pscluster.sampling import batch_indices

# scikit-learn's load_digits(): np.bincount(target) and data.sum().
SKLEARN_DIGITS_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
SKLEARN_DIGITS_PIXEL_SUM = 561718


def _expected_test_counts(counts: list[int], fraction: float) -> list[int]:
    return [int(np.floor(fraction * c + 0.5)) for c in counts]


def test_shipped_digits_file_is_sklearns_copy() -> None:
    blob = resources.files("pscluster").joinpath("data/digits.npz").read_bytes()
    with np.load(io.BytesIO(blob)) as data:
        images, labels = data["images"], data["labels"]
    assert images.shape == (1797, 64) and images.dtype == np.uint8
    assert labels.shape == (1797,) and labels.dtype == np.uint8
    assert images.max() == 16
    assert np.bincount(labels).tolist() == SKLEARN_DIGITS_COUNTS
    assert int(images.sum(dtype=np.int64)) == SKLEARN_DIGITS_PIXEL_SUM
    assert labels[:10].tolist() == list(range(10))  # the csv cycles 0..9 at the start
    assert images[0, :8].tolist() == [0, 0, 5, 13, 9, 1, 0, 0]


def test_digits_split() -> None:
    data = load_dataset("digits", 0)
    assert isinstance(data, Dataset)
    assert (data.name, data.n_features, data.n_classes) == ("digits", 64, 10)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert data.x_train.shape[1] == data.x_test.shape[1] == 64
    assert len(data.x_train) + len(data.x_test) == 1797
    both = np.concatenate([data.x_train, data.x_test])
    assert both.min() == 0.0 and both.max() == 1.0
    assert both.sum() == pytest.approx(SKLEARN_DIGITS_PIXEL_SUM / 16, rel=1e-6)
    test_counts = np.bincount(data.y_test, minlength=10)
    assert test_counts.tolist() == _expected_test_counts(SKLEARN_DIGITS_COUNTS, 0.2)
    assert (np.bincount(data.y_train, minlength=10) + test_counts).tolist() == (
        SKLEARN_DIGITS_COUNTS
    )
    assert len(data.y_test) == 359 and len(data.y_train) == 1438


def test_digits_is_a_function_of_the_seed() -> None:
    a, b, c = load_dataset("digits", 3), load_dataset("digits", 3), load_dataset("digits", 4)
    for field in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.x_test, c.x_test)


def test_dataset_arrays_are_read_only() -> None:
    data = load_dataset("digits", 0)
    with pytest.raises(ValueError, match="read-only"):
        data.x_train[0, 0] = 1.0


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.5])
def test_stratified_split_is_a_disjoint_cover(fraction) -> None:
    y = np.repeat(np.arange(4), [10, 21, 3, 40])
    train, test = stratified_split(y, fraction, seed=9)
    assert np.intersect1d(train, test).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(len(y)))
    assert train.dtype == test.dtype == np.int64
    counts = np.bincount(y).tolist()
    # Every class keeps at least one example on each side.
    expected = [
        min(max(n, 1), c - 1)
        for n, c in zip(_expected_test_counts(counts, fraction), counts, strict=True)
    ]
    assert np.bincount(y[test], minlength=4).tolist() == expected
    again, _ = stratified_split(y, fraction, seed=9)
    np.testing.assert_array_equal(train, again)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="digits, synthetic"):
        load_dataset("mnist", 0)
    for fraction in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="test_fraction"):
            load_dataset("digits", 0, test_fraction=fraction)
    with pytest.raises(ValueError):
        make_synthetic(5, 4, 3, seed=0)


def test_synthetic_sizes_and_determinism() -> None:
    data = load_dataset("synthetic", 1)
    assert (data.name, data.n_features, data.n_classes) == ("synthetic", 32, 10)
    assert data.x_train.shape == (8000, 32) and data.x_test.shape == (2000, 32)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert np.bincount(data.y_train).tolist() == [800] * 10
    small = load_dataset(
        "synthetic",
        1,
        test_fraction=0.25,
        synthetic_samples=600,
        synthetic_features=7,
        synthetic_classes=3,
    )
    assert small.x_train.shape == (450, 7) and small.x_test.shape == (150, 7)
    assert small.n_classes == 3 and set(np.unique(small.y_test)) == {0, 1, 2}
    again = load_dataset("synthetic", 1)
    np.testing.assert_array_equal(data.x_train, again.x_train)
    other = load_dataset("synthetic", 2)
    assert not np.allclose(data.x_train[:100], other.x_train[:100])


def test_synthetic_is_learnable_but_not_trivial() -> None:
    data = load_dataset("synthetic", 0)
    model = SoftmaxRegression(data.n_features, data.n_classes)
    params = model.init_parameters(0)
    for step in range(600):
        idx = batch_indices(
            len(data.y_train), 128, seed=0, rank=0, world=1, step=step, mode="sample"
        )
        _, grads = model.loss_and_gradients(params, data.x_train[idx], data.y_train[idx])
        for name in params:
            params[name] -= 0.2 * grads[name]
    _, accuracy = model.evaluate(params, data.x_test, data.y_test)
    # Chance is 0.1. Measured: 0.82-0.86 over seeds; the classes overlap, so well short of 1.
    assert 0.75 <= accuracy <= 0.95
