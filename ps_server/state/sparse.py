"""A shard's sparse tables inside its state: the rows of a push go where its dense gradients go
(held for the sync step, or applied at once) under the same lock, so a version is one update of
both; replies carry the rows their message asked for; checkpoints and ``/state`` include them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ps_server.sparse.tables import ShardTables, SparsePush
from ps_server.state.core import ShardCore
from pscluster.messages import Reply
from pscluster.protocol import EncodedFrame, ErrorCode, ProtocolError, frame_buffers, to_wire
from pscluster.sparse_wire import is_sparse_key

NO_ROWS = SparsePush()


class SparseRows(ShardCore):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tables: ShardTables | None = None  # set when the job's model has tables

    def parse_sparse(self, arrays: Mapping[str, np.ndarray]) -> SparsePush:
        """The checked sparse part of a message (refused with an ErrorCode otherwise)."""
        if self.tables is None:
            if any(is_sparse_key(key) for key in arrays):
                raise ProtocolError(ErrorCode.UNKNOWN_PARAMETER, "this job has no sparse tables")
            return NO_ROWS
        return self.tables.parse(arrays)

    def _hold_rows(self, rank: int, sparse: SparsePush) -> None:
        if self.tables is not None and sparse.grads:
            self.tables.hold(rank, sparse)

    def _close_rows(self, scale: float) -> None:
        """sync: the step's rows, as part of the update that makes the next version."""
        if self.tables is not None:
            self.tables.close_step(scale, self.version + 1)

    def _apply_rows_now(self, sparse: SparsePush, scale: float) -> None:
        if self.tables is not None and sparse.grads:
            self.tables.apply_now(sparse, scale, self.version + 1)

    def rows_reply(self, wants: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A reply's rows: those of ``wants``, as of the current version."""
        if self.tables is None or not wants:
            return {}
        return self.tables.rows_for(wants)

    async def frame_with_rows(
        self, reply: Reply, *, with_params: bool, wants: Mapping[str, np.ndarray]
    ) -> EncodedFrame:
        """A reply with the rows of ``wants`` and, ``with_params``, the dense parameters: the
        version's frame lent as a dense-only reply's is, the rows packed after it (they differ
        per message). While an update writes that frame (or none is made yet) the reply waits
        for the lock and copies the dense parameters."""
        snapshot = self._snapshot
        if with_params and snapshot is not None:
            # No await from here: an update takes the frame away before it changes anything,
            # so the lent parameters and the rows read now are of one version.
            return snapshot.lend_with(reply.fields(), self._wire_rows(wants))

        def build() -> EncodedFrame:
            # No await in here: with the math inline no update can run in the middle, so the
            # dense parameters and the rows are of one version. The parameters are copied (the
            # next update may write them in place while this is sent), in the wire dtype.
            wire = self.job.wire_dtype.value
            wired = {k: to_wire(p, wire) for k, p in self.params.items()} if with_params else {}
            arrays = {k: a.copy() if a is self.params[k] else a for k, a in wired.items()}
            arrays.update(self._wire_rows(wants))
            header = {**reply.fields(), **self._header(self.version), "params": with_params}
            return frame_buffers(header, arrays)

        if self._inline:
            return build()

        async def locked() -> EncodedFrame:
            return build()

        return await self._locked(locked)

    def _wire_rows(self, wants: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The rows of ``wants`` in the job's wire dtype (16-bit: half the bytes of a reply)."""
        wire = self.job.wire_dtype.value
        return {key: to_wire(rows, wire) for key, rows in self.rows_reply(wants).items()}

    def reset_tables(self) -> None:
        """Version 0 of the tables (a sync rewind to the start): every table empty."""
        if self.tables is not None:
            self.tables.reset()

    def sparse_summary(self) -> dict[str, Any]:
        return {} if self.tables is None else {"tables": self.tables.summary()}
