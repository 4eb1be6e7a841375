"""The clicks log, the AUC and the factorization machine: the log has the stated shape, the FM's
gradients are right, and one process training the FM gets within 0.01 of the oracle's AUC."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pscluster.clicks import FIELDS, ClickLog, zipf_ranks
from pscluster.models.fm import FactorizationMachine
from pscluster.models.sparse import Rows
from pscluster.ranking import auc


def small_log(seed: int = 0, n_train: int = 200_000) -> ClickLog:
    """The same generator with every vocabulary a thousandth of the default's (at least 10)."""
    fields = tuple(dataclasses.replace(f, vocab=max(10, f.vocab // 1000)) for f in FIELDS)
    return ClickLog(seed, fields=fields, n_train=n_train, n_test=20_000)


def _mass(r: int, s: float, width: int = 1) -> float:
    """The power law x**-s integrated over [r, r + width)."""
    return float(((r + width) ** (1 - s) - r ** (1 - s)) / (1 - s))


def test_auc_against_pairs_counted_by_hand() -> None:
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 5, 60).astype(np.float64)  # many ties
    labels = rng.integers(0, 2, 60)
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert auc(scores, labels) == pytest.approx(pairs / (len(pos) * len(neg)), abs=1e-12)
    assert auc(np.array([0.1, 0.2, 0.3]), np.array([0, 0, 1])) == 1.0
    assert auc(np.array([0.3, 0.2, 0.1]), np.array([0, 0, 1])) == 0.0
    assert auc(np.ones(4), np.array([0, 1, 0, 1])) == 0.5
    with pytest.raises(ValueError, match="positive and one negative"):
        auc(np.ones(3), np.ones(3))


def test_default_log_has_a_million_ids_zipf_distributed() -> None:
    log = ClickLog(0)
    assert log.n_ids >= 1_000_000
    ids, labels = log.test_set()
    assert ids.shape == (log.n_test, len(FIELDS)) and ids.dtype == np.int64
    # Every field's ids stay in its own range.
    for j, f in enumerate(FIELDS):
        assert ids[:, j].min() >= log.offsets[j] and ids[:, j].max() < log.offsets[j] + f.vocab
    assert 0.15 < labels.mean() < 0.35
    assert 0.8 < log.oracle_auc < 0.9
    # Zipf: P(rank r) is the power law's mass on [r, r + 1), about r**-s.
    counts = np.sort(np.bincount(ids[:, 0] - log.offsets[0]))[::-1]
    assert counts[0] / counts[1] == pytest.approx(_mass(1, 1.5) / _mass(2, 1.5), rel=0.1)
    assert counts[9] / counts[99] == pytest.approx(_mass(10, 1.5) / _mass(100, 1.5), rel=0.3)
    # Pure function of (seed, index): any subset, in any order, gives the same impressions.
    again, _ = log.train_batch(np.array([5, 1, 99]))
    single, _ = log.train_batch(np.array([1]))
    assert (again[1] == single[0]).all()
    assert not (ClickLog(1).train_batch(np.array([1]))[0] == single).all()


def test_zipf_ranks_follow_the_power_law() -> None:
    u = (np.arange(200_000) + 0.5) / 200_000
    ranks = zipf_ranks(u, 1000, 1.2)
    assert ranks.min() == 1 and ranks.max() == 1000
    share = np.bincount(ranks)[1:3] / len(ranks)
    total = _mass(1, 1.2, 1000)
    assert share[0] == pytest.approx(_mass(1, 1.2) / total, rel=0.01)
    assert share[1] == pytest.approx(_mass(2, 1.2) / total, rel=0.01)


def test_fm_gradients_match_finite_differences() -> None:
    model = FactorizationMachine(3, factors=2)
    x = np.array([[0, 5, 9], [5, 2, 9], [0, 2, 7]])
    ids = np.unique(x)
    rng = np.random.default_rng(0)
    params = {
        "bias": np.array([0.1], dtype=np.float32),
        "linear": Rows(ids, rng.normal(0, 0.3, (len(ids), 1)).astype(np.float32)),
        "factors": Rows(ids, rng.normal(0, 0.3, (len(ids), 2)).astype(np.float32)),
    }
    y = np.array([1, 0, 1])
    _, grads = model.loss_and_gradients(params, x, y)
    assert (grads["factors"].ids == ids).all()
    eps = 1e-3
    for table in ("linear", "factors"):
        values = params[table].values.astype(np.float64)
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                shifted = []
                for sign in (1, -1):
                    v = values.copy()
                    v[i, j] += sign * eps
                    p = {**params, table: Rows(ids, v)}
                    shifted.append(model.loss_and_gradients(p, x, y)[0])
                numeric = (shifted[0] - shifted[1]) / (2 * eps)
                assert grads[table].values[i, j] == pytest.approx(numeric, abs=1e-5)


def test_one_process_fm_reaches_the_oracle_auc() -> None:
    """Adagrad on the rows, in one process, one pass: within 0.01 of the oracle's AUC."""
    log = small_log()
    model = FactorizationMachine(len(log.fields))
    specs = model.tables()
    everything = np.arange(log.n_ids)
    tables = {name: spec.init(0, name, everything, spec.dim) for name, spec in specs.items()}
    accumulators = {name: np.zeros_like(t) for name, t in tables.items()}
    bias = np.zeros(1, dtype=np.float32)
    rng = np.random.default_rng(1)
    batch = 1024

    def params(x: np.ndarray) -> dict[str, object]:
        ids = np.unique(x)
        return {"bias": bias, **{n: Rows(ids, t[ids]) for n, t in tables.items()}}

    for _ in range(log.n_train // batch):
        x, y = log.train_batch(rng.choice(log.n_train, batch, replace=False))
        _, grads = model.loss_and_gradients(params(x), x, y)
        bias -= 0.1 * grads["bias"]
        for name, table in tables.items():
            rows = grads[name]
            accumulators[name][rows.ids] += rows.values**2
            table[rows.ids] -= 0.08 * rows.values / (np.sqrt(accumulators[name][rows.ids]) + 1e-8)
    x_test, y_test = log.test_set()
    learned = auc(model.predict(params(x_test), x_test), y_test)
    assert learned >= log.oracle_auc - 0.01, (learned, log.oracle_auc)
    assert learned <= log.oracle_auc + 0.01  # the oracle is the best achievable
