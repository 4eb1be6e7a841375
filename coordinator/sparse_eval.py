"""Scoring the held-out set, and for a model with sparse tables the rows it needs first: only
the ids the held-out set names, pulled from the shards that hold them (``POST /rows``), never
whole tables. A binary model with ``predict`` is scored by AUC too."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
import numpy as np

from pscluster.models import Model
from pscluster.models.sparse import SparseModel, is_sparse
from pscluster.protocol import MSGPACK, ErrorCode, ProtocolError, decode_frame, encode_frame
from pscluster.ranking import auc
from pscluster.receive import read_frame_body
from pscluster.sparse_batches import BatchRows, SparseBatches

MAX_ROWS_BYTES = 1 << 30


class HeldOutRows:
    """The held-out set's rows: which ids on which shard (planned once), fetched per eval."""

    def __init__(self, model: SparseModel, x_test: np.ndarray, num_shards: int) -> None:
        self.batches = SparseBatches(model, num_shards)
        self.plan: BatchRows = self.batches.plan(x_test)

    async def fetch(
        self, session: aiohttp.ClientSession, urls: Sequence[str | None]
    ) -> dict[str, Any]:
        """The tables' part of the parameters: each table's rows of the held-out ids."""
        self.plan.filled.clear()

        async def one(index: int, url: str) -> None:
            body = encode_frame({"shard": index}, self.batches.wants(self.plan, index))
            headers = {"Content-Type": MSGPACK}
            async with session.post(f"{url}/rows", data=body, headers=headers) as resp:
                data = await read_frame_body(resp.content, resp.content_length, MAX_ROWS_BYTES)
                status = resp.status
            frame = decode_frame(data)
            if status != 200 or not self.batches.absorb(self.plan, index, frame.arrays):
                code = str(frame.header.get("status", "no rows"))
                raise ProtocolError(ErrorCode.NOT_READY, f"shard {index} answered {code}")

        await asyncio.gather(*(one(i, url) for i, url in enumerate(urls) if url))
        return self.batches.params(self.plan, {})


def score(
    model: Model, params: Mapping[str, Any], x: np.ndarray, y: np.ndarray
) -> dict[str, float]:
    """Held-out loss and accuracy, and AUC for a model that scores binary labels."""
    loss, accuracy = model.evaluate(params, x, y)
    scores: dict[str, float] = {"loss": float(loss), "accuracy": float(accuracy)}
    if is_sparse(model) and len(np.unique(y)) == 2:
        scores["auc"] = auc(model.predict(params, x), y)
    return scores
