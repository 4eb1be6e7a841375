"""A worker's sparse rows from step to step: the rows of the batch it computes, and those of the
next batch, which the replies to this step's pushes fill in (``pscluster.sparse_batches``).

The push that asks for parameters in its reply names the next batch's ids, so the step stays one
exchange per shard; a reply that carries no rows (a duplicate's, a refusal) is made up for by a
pull that names them, as is the first batch's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from pscluster.models.sparse import SparseModel
from pscluster.sparse_batches import BatchRows, SparseBatches


class WorkerRows:
    def __init__(self, model: SparseModel, num_shards: int) -> None:
        self.batches = SparseBatches(model, num_shards)
        self.current: BatchRows | None = None  # the batch being computed
        self.filling: BatchRows | None = None  # the next batch, as replies bring its rows

    def expect(self, x: Any) -> None:
        """The next batch is ``x``: the replies from here on carry its rows."""
        self.filling = self.batches.plan(x)

    def wants(self, index: int) -> dict[str, np.ndarray]:
        return self.batches.wants(self.filling, index)

    def absorb(self, index: int, arrays: Mapping[str, np.ndarray]) -> None:
        if self.filling is not None and arrays:
            self.batches.absorb(self.filling, index, arrays)

    def missing(self) -> list[int]:
        """Shards whose rows of the next batch have not come yet."""
        if self.filling is None:
            return []
        return [i for i in range(self.batches.num_shards) if i not in self.filling.filled]

    def advance(self) -> None:
        """The next batch's rows are all in: it becomes the batch to compute."""
        self.current, self.filling = self.filling, None

    def params(self, dense: Mapping[str, Any]) -> dict[str, Any]:
        assert self.current is not None, "rows of the batch were never pulled"
        return self.batches.params(self.current, dense)

    def push_arrays(self, grads: Mapping[str, Any], index: int, wire: str) -> dict[str, Any]:
        """Shard ``index``'s share of a push: this batch's row gradients, the next one's ids."""
        assert self.current is not None
        return {**self.batches.grads(self.current, grads, index, wire), **self.wants(index)}

    def is_table(self, name: str) -> bool:
        return name in self.batches.specs
