"""The shard map: every row of every parameter on exactly one shard, bytes balanced."""

from __future__ import annotations

import numpy as np
import pytest

from pscluster.sharding import (
    allocate_full,
    assemble_into,
    compute_shard_map,
    shard_bytes,
    slice_part,
)


def covered_rows(shard_map, shapes) -> dict[str, list[int]]:
    counts = {name: [0] * (shape[0] if shape else 1) for name, shape in shapes.items()}
    for parts in shard_map:
        for part in parts:
            for row in range(part.start, part.stop):
                counts[part.param][row] += 1
    return counts


@pytest.mark.parametrize("num_shards", [1, 2, 3, 4, 7])
def test_every_row_on_exactly_one_shard(num_shards: int) -> None:
    shapes = {"w1": (64, 64), "b1": (64,), "w2": (64, 10), "b2": (10,), "s": ()}
    shard_map = compute_shard_map(shapes, num_shards)
    assert len(shard_map) == num_shards
    for name, counts in covered_rows(shard_map, shapes).items():
        assert set(counts) == {1}, name


def test_a_huge_array_is_split_and_bytes_balance() -> None:
    shapes = {"embedding": (100_000, 64), "w": (64, 64), "b": (64,)}
    shard_map = compute_shard_map(shapes, 4)
    sizes = shard_bytes(shard_map, shapes)
    # The embedding alone is 99% of the model: it must be spread over all four shards.
    assert sum(1 for parts in shard_map for p in parts if p.param == "embedding") == 4
    assert max(sizes) / min(sizes) < 1.01
    assert sum(sizes) == (100_000 * 64 + 64 * 64 + 64) * 4


def test_map_is_deterministic_and_independent_of_dict_order() -> None:
    a = {"x": (10, 3), "y": (20, 3), "z": (5,)}
    b = dict(reversed(list(a.items())))
    assert compute_shard_map(a, 3) == compute_shard_map(b, 3)


def test_refuses_zero_shards() -> None:
    with pytest.raises(ValueError):
        compute_shard_map({"x": (2,)}, 0)


def test_assemble_puts_parts_back_together() -> None:
    shapes = {"w": (9, 4), "b": (4,)}
    shard_map = compute_shard_map(shapes, 3)
    original = {"w": np.arange(36, dtype=np.float32).reshape(9, 4), "b": np.ones(4, np.float32)}
    full = allocate_full(shapes)
    for parts in shard_map:
        assemble_into(full, parts, {p.key: slice_part(original[p.param], p).copy() for p in parts})
    for name in shapes:
        np.testing.assert_array_equal(full[name], original[name])
