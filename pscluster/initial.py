"""A shard's initial parameters, shipped by the coordinator: ``GET /initial/<shard>``.

One process builds the model: the coordinator. It already needs it for the shard map (the
shapes) and for evaluation, so it also draws the initial values, from the job's seed, and
hands each shard its parts as one msgpack frame (the data plane's format: bytes off JSON,
decoded as views). Shards never build a model: they hold named float32 arrays and stay NumPy,
never importing a user's code or torch. The same holds for every model, NumPy or PyTorch, so
there is one way, not two. A worker builds the model only to compute gradients; its parameters
always come from the shards.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import aiohttp
import numpy as np

from pscluster.protocol import ErrorCode, ProtocolError, all_finite, decode_frame, encode_frame
from pscluster.sharding import Part, slice_part


def initial_path(index: int) -> str:
    return f"/initial/{index}"


def initial_frame(
    full: Mapping[str, np.ndarray], parts: Sequence[Part], *, index: int, seed: int
) -> bytes:
    """Shard ``index``'s parts of the initial parameters ``full`` as one frame. Once per shard
    start, so the one copy into the body does not matter."""
    arrays = {part.key: slice_part(full[part.param], part) for part in parts}
    return encode_frame({"shard": index, "seed": seed}, arrays)


def parse_initial(
    body: bytes | bytearray | memoryview, parts: Sequence[Part], index: int
) -> dict[str, np.ndarray]:
    """The shard's own float32 copies of its parts, checked against its part of the shard map
    (names, dtype, rows, finite values); ``ProtocolError`` for anything else."""
    frame = decode_frame(body)
    if frame.header.get("shard") != index:
        raise ProtocolError(ErrorCode.WRONG_SHARD, f"initial values are not shard {index}'s")
    expected = {part.key: part for part in parts}
    if set(frame.arrays) != set(expected):
        raise ProtocolError(
            ErrorCode.BAD_SHAPE,
            f"initial values hold {sorted(frame.arrays)}, the shard map {sorted(expected)}",
        )
    params: dict[str, np.ndarray] = {}
    for key, part in expected.items():
        array = frame.arrays[key]
        if array.dtype != np.float32:
            raise ProtocolError(ErrorCode.BAD_DTYPE, f"{key}: initial values are {array.dtype}")
        if part.split and (array.ndim == 0 or array.shape[0] != part.stop - part.start):
            raise ProtocolError(ErrorCode.BAD_SHAPE, f"{key}: {array.shape[0]} rows")
        if not all_finite(array):
            raise ProtocolError(ErrorCode.NOT_FINITE, f"{key}: initial values not finite")
        # The shard updates its parameters in place: its own memory, not the (pooled) body's.
        params[key] = np.array(array, dtype=np.float32, copy=True)
    return params


async def fetch_initial(
    session: aiohttp.ClientSession, coordinator_url: str, parts: Sequence[Part], index: int
) -> dict[str, np.ndarray]:
    """Ask the coordinator for shard ``index``'s initial parameters (the session's timeout
    bounds the call)."""
    url = f"{coordinator_url.rstrip('/')}{initial_path(index)}"
    async with session.get(url) as resp:
        if resp.status != 200:
            raise ProtocolError(
                ErrorCode.NOT_READY, f"coordinator answered {resp.status} for initial values"
            )
        body = await resp.read()
    return parse_initial(body, parts, index)
