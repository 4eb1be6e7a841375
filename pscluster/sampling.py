"""Which training examples a worker uses at each step: a pure function of the job's coordinates.

Nothing here keeps state between calls. A worker that restarts, a spare that takes over a rank
and a test's single-process reference all get the same batch for the same (seed, rank, world,
step), which is what makes a distributed run reproducible and checkable.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

MODES = ("sample", "shard")


def batch_indices(
    n: int, batch_size: int, *, seed: int, rank: int, world: int, step: int, mode: str
) -> np.ndarray:
    """int64 indices into a training set of ``n`` examples for worker ``rank`` at ``step``.

    "sample": every worker draws ``batch_size`` distinct examples from the whole set, afresh
    each step. "shard": the set is split into ``world`` (N + k) disjoint parts, fixed for the
    job whatever the number of workers; rank r walks part r mod ``world`` in epochs, reshuffled
    every epoch (in an order of its own rank), and a batch may run across an epoch boundary. A
    worker that joins takes a free rank and its part; one beyond N + k shares a part with a
    lower rank; a part whose rank is free goes unvisited until a worker takes the rank.
    """
    _check(n, batch_size, rank=rank, world=world, step=step, mode=mode)
    if mode == "sample":
        if batch_size > n:
            raise ValueError(f"batch_size {batch_size} > {n} examples in sample mode")
        rng = np.random.default_rng([seed, rank, step])
        return rng.choice(n, batch_size, replace=False).astype(np.int64, copy=False)

    part_size = len(_shard(n, seed, world, rank % world))
    start = step * batch_size
    first_epoch, last_epoch = start // part_size, (start + batch_size - 1) // part_size
    walk = np.concatenate(
        [_epoch_order(n, seed, world, rank, e) for e in range(first_epoch, last_epoch + 1)]
    )
    offset = start - first_epoch * part_size
    return walk[offset : offset + batch_size]


def shard_part(n: int, *, seed: int, rank: int, world: int) -> np.ndarray:
    """The examples worker ``rank`` of ``world`` owns in shard mode (unordered, int64)."""
    _check(n, 1, rank=rank, world=world, step=0, mode="shard")
    return _shard(n, seed, world, rank % world).copy()


def _check(n: int, batch_size: int, *, rank: int, world: int, step: int, mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown sampling mode {mode!r}; expected one of {', '.join(MODES)}")
    if world <= 0:
        raise ValueError(f"world must be positive, got {world}")
    if rank < 0:
        raise ValueError(f"rank must be >= 0, got {rank}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if step < 0:
        raise ValueError(f"step must be non-negative, got {step}")
    if n <= 0:
        raise ValueError(f"the training set is empty (n={n})")
    if mode == "shard" and n < world:
        raise ValueError(f"cannot shard {n} examples over {world} workers: some would get none")


# The caches only spare recomputing permutations every step (O(n) each); the results are pure
# functions of the key, returned read-only so no caller can corrupt a cached value.
@lru_cache(maxsize=8)
def _shard(n: int, seed: int, world: int, rank: int) -> np.ndarray:
    part = np.random.default_rng([seed]).permutation(n)[rank::world].astype(np.int64)
    part.setflags(write=False)
    return part


@lru_cache(maxsize=8)
def _epoch_order(n: int, seed: int, world: int, rank: int, epoch: int) -> np.ndarray:
    part = _shard(n, seed, world, rank % world)
    order = part[np.random.default_rng([seed, rank, epoch]).permutation(len(part))]
    order.setflags(write=False)
    return order
