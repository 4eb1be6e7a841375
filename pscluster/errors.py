"""Why a data-plane request is refused: the error codes on the wire and the exception that carries
one (part of the protocol: ``pscluster.protocol`` re-exports them)."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Why a request was refused; sent as a value in the reply, with the shard's version."""

    LATE = "late"  # sync: the gradient is for a version already applied; pull the current one
    DUPLICATE = (
        "duplicate"  # this worker already pushed for this version; a retry never counts twice
    )
    STALE = "stale"  # async: staleness above max_staleness
    WARMUP = "warmup"  # async: only rank 0 trains during warmup
    DONE = "done"  # the job reached its step count; no more updates
    FUTURE_VERSION = "future_version"  # base_version ahead of the shard: the client is confused
    BAD_FRAME = "bad_frame"  # not a [header, payload] msgpack body
    BAD_MESSAGE = "bad_message"  # fields missing or of the wrong type
    BAD_DTYPE = "bad_dtype"  # dtype not in WIRE_DTYPES, or not the shard's dtype
    BAD_SHAPE = "bad_shape"  # shape disagrees with the shard's array or the payload size
    NOT_FINITE = "not_finite"  # NaN or Inf in a gradient
    UNKNOWN_PARAMETER = "unknown_parameter"  # a name this shard does not hold
    MISSING_PARAMETER = "missing_parameter"  # a push must carry every array of the shard
    UNKNOWN_WORKER = "unknown_worker"  # the coordinator does not know this worker
    WRONG_SHARD = "wrong_shard"  # the message was meant for another shard index
    TOO_LARGE = "too_large"  # body over the size cap
    LENGTH_REQUIRED = "length_required"  # bodies must declare Content-Length
    UNAUTHORIZED = "unauthorized"  # missing or wrong cluster token
    NOT_READY = "not_ready"  # the cluster is still assembling; retry
    CLUSTER_FULL = "cluster_full"  # all N + k worker ranks are taken
    BUSY = "busy"  # too much work in flight; retry with backoff
    BAD_ID = "bad_id"  # a sparse id below 0 (ids are int64 >= 0)
    DUPLICATE_ID = "duplicate_id"  # an id named twice in one table's ids of one message
    TOO_MANY_IDS = "too_many_ids"  # more ids for one table than pscluster.sparse_wire.MAX_IDS
    REWOUND = "rewound"  # sync: the gradient is of another epoch (a rewind to a consistent cut)


class ProtocolError(Exception):
    """A request that is refused: carries the code and the HTTP status to answer with."""

    def __init__(self, code: ErrorCode, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
