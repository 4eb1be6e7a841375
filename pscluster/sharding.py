"""The shard map: which rows of which parameter live on which parameter-server shard.

Computed by the coordinator from the model's parameter shapes, balancing bytes across shards. An
array much larger than the fair share of one shard is split into row ranges that go to several
shards, so one huge embedding cannot make one shard the bottleneck.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True, order=True)
class Part:
    """Rows [start, stop) of parameter ``param``; the whole array when it is not split."""

    param: str
    start: int
    stop: int
    split: bool = False

    @property
    def key(self) -> str:
        """The name the part goes by on the wire and on its shard."""
        return f"{self.param}[{self.start}:{self.stop}]" if self.split else self.param

    def shape(self, full_shape: Sequence[int]) -> tuple[int, ...]:
        return (self.stop - self.start, *full_shape[1:])

    def to_json(self) -> dict[str, Any]:
        return {"param": self.param, "start": self.start, "stop": self.stop, "split": self.split}

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> Part:
        return Part(str(data["param"]), int(data["start"]), int(data["stop"]), bool(data["split"]))


ShardMap = list[list[Part]]


def _rows(shape: Sequence[int]) -> int:
    return int(shape[0]) if shape else 1


def compute_shard_map(
    shapes: Mapping[str, Sequence[int]], num_shards: int, itemsize: int = 4
) -> ShardMap:
    """Assign parameter parts to ``num_shards`` shards, balancing bytes.

    Arrays over the per-shard fair share are split into near-equal row ranges of at most that
    share; then parts go largest first to the least loaded shard (a deterministic greedy
    "longest processing time" schedule, within 4/3 of the best balance).
    """
    if num_shards < 1:
        raise ValueError("num_shards must be at least 1")
    sizes = {name: int(np.prod(shape, dtype=np.int64)) * itemsize for name, shape in shapes.items()}
    fair_share = max(1, sum(sizes.values()) // num_shards)
    parts: list[tuple[int, Part]] = []
    for name, shape in shapes.items():
        rows = _rows(shape)
        pieces = min(rows, max(1, -(-sizes[name] // fair_share))) if len(shape) > 0 else 1
        if pieces == 1:
            parts.append((sizes[name], Part(name, 0, rows)))
            continue
        bounds = np.linspace(0, rows, pieces + 1).round().astype(int)
        row_bytes = sizes[name] // rows
        for start, stop in itertools.pairwise(bounds):
            parts.append(((stop - start) * row_bytes, Part(name, int(start), int(stop), True)))
    # Largest first; ties broken by the part itself so the map never depends on dict order.
    parts.sort(key=lambda item: (-item[0], item[1]))
    load: list[tuple[int, int]] = [(0, shard) for shard in range(num_shards)]
    heapq.heapify(load)
    shard_map: ShardMap = [[] for _ in range(num_shards)]
    for size, part in parts:
        used, shard = heapq.heappop(load)
        shard_map[shard].append(part)
        heapq.heappush(load, (used + size, shard))
    for shard_parts in shard_map:
        shard_parts.sort()
    return shard_map


def shard_bytes(
    shard_map: ShardMap, shapes: Mapping[str, Sequence[int]], itemsize: int = 4
) -> list[int]:
    """Bytes each shard holds, for balance checks and status pages."""
    return [
        sum(int(np.prod(p.shape(shapes[p.param]), dtype=np.int64)) * itemsize for p in parts)
        for parts in shard_map
    ]


def slice_part(array: np.ndarray, part: Part) -> np.ndarray:
    """The rows of ``array`` that ``part`` names: a view, never a copy."""
    return array[part.start : part.stop] if part.split else array


def allocate_full(shapes: Mapping[str, Sequence[int]]) -> dict[str, np.ndarray]:
    """Whole parameter arrays to assemble shard replies into, allocated once."""
    return {name: np.empty(tuple(shape), dtype=np.float32) for name, shape in shapes.items()}


def assemble_into(
    full: Mapping[str, np.ndarray], parts: Sequence[Part], arrays: Mapping[str, np.ndarray]
) -> None:
    """Copy one shard's parts (as received) into their places in the whole arrays."""
    for part in parts:
        np.copyto(slice_part(full[part.param], part), arrays[part.key])
