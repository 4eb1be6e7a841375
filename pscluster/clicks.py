"""``clicks``: a seeded synthetic click log, drawn from a hidden factorization machine.

Every impression is a pure function of (seed, index): its id in each field, its label, and the
hidden model's logit are computed from hashes of the index and of the ids (``pscluster.idhash``).
Nothing is generated up front and nothing is stored: a worker computes the few thousand
impressions of its batch, the coordinator the held-out set, each in milliseconds, and both agree
with every other process. The generator is stated in docs/sparse.md.

- Ids: field ``f``'s popularity rank ``r`` in 1..V_f is Zipf(s_f) distributed (the inverse CDF
  of a continuous power law on [1, V_f + 1), floored); the rank is scattered over the field's ids
  by a fixed permutation (``r * a mod V_f``, ``a`` coprime to V_f), and the field's ids are offset
  so that fields never share an id: one id space of ``sum(V_f)`` ids in all.
- Hidden model: ``logit = bias + sum_f w_f(id) + sum_{f<g} <v_f(id), v_g(id)>``, a factorization
  machine with ``LATENT`` factors. The effects are normal, scaled per field, and shrink with the
  id's rank as ``1 / (1 + r / r0_f)``: an id seen a handful of times in the whole log carries
  little signal, as in real logs, which is what makes the log learnable from one pass.
- Label: 1 with probability ``sigmoid(logit)``.

``oracle_auc``: the AUC of the hidden logit itself on the held-out set: no model can rank those
labels better in expectation.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from pscluster.idhash import hash_columns, hash_ids, name_key, normal, unit_uniform
from pscluster.ranking import auc


@dataclass(frozen=True)
class Field:
    name: str
    vocab: int  # distinct ids
    zipf: float  # exponent s of P(rank r) ~ r**-s
    linear_std: float  # std of the linear effect of the most popular id
    factor_std: float  # std of each hidden factor of the most popular id (0: no interactions)
    half_rank: int  # r0: an id of rank r0 has half the effect of the most popular one


FIELDS = (
    Field("user", 500_000, 1.50, 1.2, 0.35, 10),
    Field("ad", 300_000, 1.50, 1.4, 0.35, 10),
    Field("publisher", 150_000, 1.40, 1.0, 0.30, 10),
    Field("query", 40_000, 1.30, 0.8, 0.0, 10),
    Field("advertiser", 8_000, 1.20, 1.0, 0.30, 10),
    Field("category", 1_500, 1.00, 0.8, 0.30, 10),
    Field("device", 400, 0.90, 0.6, 0.25, 10),
    Field("hour", 100, 0.50, 0.4, 0.0, 10),
)
LATENT = 4  # hidden factors per id
BIAS = -1.4  # about 25% of impressions are clicks
TRAIN_IMPRESSIONS = 2_000_000
TEST_IMPRESSIONS = 100_000

_LABEL, _LINEAR, _FACTORS = (name_key(k) for k in ("label", "linear", "factors"))


def _coprime_multiplier(vocab: int) -> int:
    """A multiplier near 0.618 * vocab that shares no factor with it: r -> r * a mod V is then
    a permutation of 0..V-1."""
    a = max(1, int(vocab * 0.6180339887)) | 1
    while np.gcd(a, vocab) != 1:
        a += 2
    return a


def zipf_ranks(u: np.ndarray, vocab: int, s: float) -> np.ndarray:
    """Ranks in 1..vocab for uniforms ``u`` in (0, 1): the floored inverse CDF of a power law
    x**-s on [1, vocab + 1), a closed form, so no table of vocab probabilities is built."""
    top = float(vocab + 1)
    if abs(s - 1.0) < 1e-9:
        x = top**u
    else:
        x = ((top ** (1.0 - s) - 1.0) * u + 1.0) ** (1.0 / (1.0 - s))
    return np.clip(np.floor(x).astype(np.int64), 1, vocab)


@dataclass(frozen=True)
class ClickLog:
    """The click log of one seed; impressions [0, n_train) train, the next n_test are held out."""

    seed: int
    fields: tuple[Field, ...] = FIELDS
    n_train: int = TRAIN_IMPRESSIONS
    n_test: int = TEST_IMPRESSIONS
    bias: float = BIAS

    @cached_property
    def offsets(self) -> np.ndarray:
        """Each field's first id: its ids are [offset, offset + vocab)."""
        vocabs = [f.vocab for f in self.fields]
        return np.concatenate([[0], np.cumsum(vocabs)[:-1]]).astype(np.int64)

    @property
    def n_ids(self) -> int:
        return sum(f.vocab for f in self.fields)

    def _ranks(self, index: np.ndarray) -> np.ndarray:
        """int64 [n, fields]: each impression's popularity rank in each field."""
        ranks = np.empty((len(index), len(self.fields)), dtype=np.int64)
        # Column j: hash_ids(index, seed, j), all fields in one pass.
        u = unit_uniform(hash_columns(index, len(self.fields), self.seed))
        for j, f in enumerate(self.fields):
            ranks[:, j] = zipf_ranks(u[:, j], f.vocab, f.zipf)
        return ranks

    def _ids(self, ranks: np.ndarray) -> np.ndarray:
        ids = np.empty_like(ranks)
        for j, f in enumerate(self.fields):
            local = ((ranks[:, j] - 1) * _coprime_multiplier(f.vocab)) % f.vocab
            ids[:, j] = self.offsets[j] + local
        return ids

    def _logits(self, ranks: np.ndarray) -> np.ndarray:
        """The hidden model's logit of each impression, from its ids' ranks."""
        logit = np.full(len(ranks), self.bias, dtype=np.float64)
        total = np.zeros((len(ranks), LATENT))
        squares = np.zeros(len(ranks))
        for j, f in enumerate(self.fields):
            r = ranks[:, j]
            shrink = 1.0 / (1.0 + r / f.half_rank)
            logit += normal(r, 1, self.seed, _LINEAR, j)[:, 0] * (f.linear_std * shrink)
            if f.factor_std:
                v = normal(r, LATENT, self.seed, _FACTORS, j) * (f.factor_std * shrink)[:, None]
                total += v
                squares += (v * v).sum(axis=1)
        # sum_{f<g} <v_f, v_g> = (|sum v|^2 - sum |v|^2) / 2
        logit += 0.5 * ((total * total).sum(axis=1) - squares)
        return logit

    def impressions(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids int64 [n, fields], labels int64 [n], hidden logits float64 [n]) of impressions
        ``index`` (any int64 array of impression numbers)."""
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        ranks = self._ranks(index)
        logits = self._logits(ranks)
        clicked = unit_uniform(hash_ids(index, self.seed, _LABEL)) < 1.0 / (1.0 + np.exp(-logits))
        return self._ids(ranks), clicked.astype(np.int64), logits

    def train_batch(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Training impressions ``index`` (in [0, n_train)): (ids, labels)."""
        if len(index) and (int(np.min(index)) < 0 or int(np.max(index)) >= self.n_train):
            raise IndexError(f"training impressions are 0..{self.n_train - 1}")
        ids, labels, _ = self.impressions(index)
        return ids, labels

    @cached_property
    def _test(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.impressions(np.arange(self.n_train, self.n_train + self.n_test))

    def test_set(self) -> tuple[np.ndarray, np.ndarray]:
        """The held-out impressions: (ids, labels)."""
        ids, labels, _ = self._test
        return ids, labels

    @cached_property
    def oracle_auc(self) -> float:
        """The hidden model's own AUC on the held-out set: the best achievable."""
        _, labels, logits = self._test
        return auc(logits, labels)
