"""Sparse rows on the wire: how a push's row gradients, its next batch's ids and a reply's rows
are named inside the ordinary ``[header, payload]`` frame (``pscluster.protocol``), and the
checks every id array passes at the edge.

A table ``t`` adds up to three arrays to a frame: ``@t/ids`` (int64 [n], distinct, >= 0) with
``@t/rows`` ([n, dim], float32 or the job's wire dtype) in a push, the gradient of each row;
``@t/want`` (int64 [m]) in a push or pull, the ids whose rows the reply should carry; and
``@t/rows`` in the reply, the rows of ``@t/want`` in that order. Dense arrays keep their names
("@" starts no parameter name).
"""

from __future__ import annotations

import numpy as np

from pscluster.protocol import ErrorCode, ProtocolError

PREFIX = "@"
# Ids per table in one message. A batch names at most a few 1e5 distinct ids; the cap keeps a
# hostile push from making a shard sort or hash a billion of them.
MAX_IDS = 1 << 20


def ids_key(table: str) -> str:
    return f"{PREFIX}{table}/ids"


def rows_key(table: str) -> str:
    return f"{PREFIX}{table}/rows"


def want_key(table: str) -> str:
    return f"{PREFIX}{table}/want"


def is_sparse_key(key: str) -> bool:
    return key.startswith(PREFIX)


def split_key(key: str) -> tuple[str, str]:
    """("table", "ids" | "rows" | "want") of a sparse array's name."""
    table, _, kind = key[len(PREFIX) :].rpartition("/")
    if not table or kind not in ("ids", "rows", "want"):
        raise ProtocolError(ErrorCode.UNKNOWN_PARAMETER, f"{key!r} names no table array")
    return table, kind


def check_ids(name: str, ids: np.ndarray, *, distinct: bool = True) -> np.ndarray:
    """``ids`` if they are an int64 vector of at most MAX_IDS ids >= 0, distinct; else refuse."""
    if ids.dtype != np.int64:
        raise ProtocolError(ErrorCode.BAD_DTYPE, f"{name!r}: ids must be int64, not {ids.dtype}")
    if ids.ndim != 1:
        raise ProtocolError(ErrorCode.BAD_SHAPE, f"{name!r}: ids must be a vector: {ids.shape}")
    if len(ids) > MAX_IDS:
        raise ProtocolError(
            ErrorCode.TOO_MANY_IDS, f"{name!r}: {len(ids)} ids, at most {MAX_IDS} a message", 413
        )
    if len(ids) == 0:
        return ids
    if int(ids.min()) < 0:
        raise ProtocolError(ErrorCode.BAD_ID, f"{name!r}: ids must be >= 0, got {int(ids.min())}")
    if distinct and len(ids) > 1:
        # Sorted ids (what workers send) are checked in one pass; others are sorted first.
        ordered = ids if bool((ids[1:] > ids[:-1]).all()) else np.sort(ids)
        repeated = ordered[1:] == ordered[:-1]
        if repeated.any():
            first = int(ordered[1:][repeated][0])
            raise ProtocolError(ErrorCode.DUPLICATE_ID, f"{name!r}: id {first} is repeated")
    return ids
