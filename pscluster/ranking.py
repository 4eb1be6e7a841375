"""Ranking quality of scores against binary labels: the area under the ROC curve."""

from __future__ import annotations

import numpy as np


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """The probability that a random positive scores above a random negative (ties count half):
    the Mann-Whitney U statistic over n_pos * n_neg, from ranks averaged over tied scores.

    O(n log n), exact (no binning), the same as scikit-learn's ``roc_auc_score``.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    positive = np.asarray(labels).reshape(-1).astype(bool)
    if s.shape != positive.shape:
        raise ValueError(f"{s.size} scores but {positive.size} labels")
    n_pos = int(positive.sum())
    n_neg = s.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs at least one positive and one negative label")
    if not np.isfinite(s).all():
        raise ValueError("scores hold NaN or Inf")
    order = np.argsort(s, kind="stable")
    ordered = s[order]
    starts_group = np.empty(s.size, dtype=bool)
    starts_group[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=starts_group[1:])
    starts = np.flatnonzero(starts_group)
    ends = np.append(starts[1:], s.size)
    # Ranks 1..n; a group of ties at sorted positions [start, end) shares their mean rank.
    mean_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(s.size, dtype=np.float64)
    ranks[order] = mean_rank[np.cumsum(starts_group) - 1]
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))
