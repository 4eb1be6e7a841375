"""Mini-batch sampling: a pure function of (seed, rank, world, step), checked against the spec."""

from __future__ import annotations

import numpy as np
import pytest

from pscluster.sampling import batch_indices, shard_part


def _reference_shard_batch(n: int, b: int, seed: int, rank: int, world: int, step: int):
    """The shard-mode rule written out naively: concatenate epochs until step's items exist."""
    part = np.random.default_rng([seed]).permutation(n)[rank::world]
    walk: list[int] = []
    epoch = 0
    while len(walk) < (step + 1) * b:
        walk.extend(part[np.random.default_rng([seed, rank, epoch]).permutation(len(part))])
        epoch += 1
    return np.array(walk[step * b : step * b + b])


@pytest.mark.parametrize("mode", ["sample", "shard"])
def test_same_arguments_same_batch(mode) -> None:
    kwargs = dict(seed=4, rank=1, world=3, mode=mode)
    first = [batch_indices(100, 8, step=s, **kwargs) for s in range(30)]
    # Out of order and repeated: no hidden state may change the answer.
    for s in [29, 0, 17, 17, 3]:
        np.testing.assert_array_equal(batch_indices(100, 8, step=s, **kwargs), first[s])
    assert all(b.dtype == np.int64 and b.shape == (8,) for b in first)
    assert all(((b >= 0) & (b < 100)).all() for b in first)


def test_sample_mode() -> None:
    batches = [
        batch_indices(50, 50, seed=0, rank=0, world=2, step=s, mode="sample") for s in range(3)
    ]
    # batch_size == n without replacement is a permutation.
    for b in batches:
        np.testing.assert_array_equal(np.sort(b), np.arange(50))
    small = batch_indices(1000, 64, seed=0, rank=0, world=2, step=0, mode="sample")
    assert len(np.unique(small)) == 64
    expected = np.random.default_rng([0, 0, 0]).choice(1000, 64, replace=False)
    np.testing.assert_array_equal(small, expected)
    other_rank = batch_indices(1000, 64, seed=0, rank=1, world=2, step=0, mode="sample")
    next_step = batch_indices(1000, 64, seed=0, rank=0, world=2, step=1, mode="sample")
    other_seed = batch_indices(1000, 64, seed=1, rank=0, world=2, step=0, mode="sample")
    assert not any(np.array_equal(small, b) for b in (other_rank, next_step, other_seed))
    with pytest.raises(ValueError, match="batch_size"):
        batch_indices(10, 11, seed=0, rank=0, world=1, step=0, mode="sample")


@pytest.mark.parametrize(("n", "world"), [(100, 3), (64, 4), (7, 7), (10, 1)])
def test_shard_parts_are_disjoint_and_cover(n, world) -> None:
    parts = [shard_part(n, seed=2, rank=r, world=world) for r in range(world)]
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    for rank, part in enumerate(parts):
        # One epoch of steps (batch 1, so no batch crosses into the next) walks the whole part.
        epoch = np.concatenate(
            [
                batch_indices(n, 1, seed=2, rank=rank, world=world, step=s, mode="shard")
                for s in range(len(part))
            ]
        )
        np.testing.assert_array_equal(np.sort(epoch), np.sort(part))


def test_shard_epochs_reshuffle_and_batches_cross_epochs() -> None:
    n, world, rank, b = 100, 3, 2, 8  # rank 2 owns 33 items: batches straddle epoch ends
    part = shard_part(n, seed=5, rank=rank, world=world)
    assert len(part) == 33
    steps = [
        batch_indices(n, b, seed=5, rank=rank, world=world, step=s, mode="shard") for s in range(33)
    ]
    walk = np.concatenate(steps)  # 264 items = exactly 8 epochs
    epochs = walk.reshape(8, 33)
    for epoch in epochs:
        np.testing.assert_array_equal(np.sort(epoch), np.sort(part))
    assert not np.array_equal(epochs[0], epochs[1])  # reshuffled each epoch
    for s in [0, 4, 5, 32]:  # step 4 spans items 32..39: the end of epoch 0, start of epoch 1
        np.testing.assert_array_equal(steps[s], _reference_shard_batch(n, b, 5, rank, world, s))


def test_shard_batch_larger_than_the_part() -> None:
    got = batch_indices(10, 12, seed=1, rank=0, world=2, step=3, mode="shard")
    np.testing.assert_array_equal(got, _reference_shard_batch(10, 12, 1, 0, 2, 3))
    assert got.shape == (12,)


def test_shard_far_step_matches_reference() -> None:
    got = batch_indices(1000, 32, seed=7, rank=3, world=4, step=1234, mode="shard")
    np.testing.assert_array_equal(got, _reference_shard_batch(1000, 32, 7, 3, 4, 1234))


def test_returned_batches_do_not_alias_the_cache() -> None:
    kwargs = dict(seed=0, rank=0, world=2, step=0, mode="shard")
    first = batch_indices(20, 5, **kwargs)
    expected = first.copy()
    first[:] = -1
    np.testing.assert_array_equal(batch_indices(20, 5, **kwargs), expected)
    part = shard_part(20, seed=0, rank=0, world=2)
    part[:] = -1
    assert (shard_part(20, seed=0, rank=0, world=2) >= 0).all()


def test_a_rank_beyond_the_world_walks_a_lower_ranks_part_in_its_own_order() -> None:
    # Shard mode keeps the N + k parts of the job whatever the number of workers: rank 5 of a
    # world of 3 (an elastic worker) walks part 5 mod 3 = 2, in an order of its own.
    n, world, b = 90, 3, 6
    extra = [
        batch_indices(n, b, seed=2, rank=5, world=world, step=s, mode="shard") for s in range(5)
    ]
    own = [batch_indices(n, b, seed=2, rank=2, world=world, step=s, mode="shard") for s in range(5)]
    part = set(shard_part(n, seed=2, rank=2, world=world).tolist())
    assert set(np.concatenate(extra).tolist()) == part  # one epoch of part 2, all of it
    assert set(shard_part(n, seed=2, rank=5, world=world).tolist()) == part
    assert not np.array_equal(np.concatenate(extra), np.concatenate(own))


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (dict(rank=-1, world=2), "rank"),
        (dict(world=0), "world"),
        (dict(batch_size=0), "batch_size"),
        (dict(batch_size=-3), "batch_size"),
        (dict(step=-1), "step"),
        (dict(mode="round_robin"), "sample, shard"),
        (dict(n=0), "empty"),
        (dict(n=3, world=4, rank=0, mode="shard"), "shard 3 examples over 4"),
    ],
)
def test_bad_arguments(args, match) -> None:
    call = dict(n=100, batch_size=4, seed=0, rank=0, world=1, step=0, mode="shard") | args
    with pytest.raises(ValueError, match=match):
        batch_indices(**call)
