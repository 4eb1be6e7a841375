"""The data plane's messages, one typed schema each: hello, push, pull, reply, refusal.

A message is parsed once, at the edge, from a decoded ``Frame`` (``pscluster.protocol``) into
one frozen object; everything behind the edge (the shard's handlers and state, the worker's loop)
takes that object and trusts it. ``parse`` is the only place a field is checked, and it refuses
with a ``ProtocolError`` carrying an ``ErrorCode``.

Every status on the wire is an enum member: ``Status`` for the answers that are not refusals
(``applied``, ``ok``) and ``ErrorCode`` for the rest. A reply's verdict travels one way, in its
frame header.

To add a field: give it a default (so older peers' messages still parse), read it in ``parse``
with the checkers below, and write it in ``header``. Arrays other than the gradients (ids of
sparse rows, say) travel in the same payload: name them in the frame and pick them out in
``parse``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from pscluster.protocol import ErrorCode, Frame, ProtocolError


class Status(StrEnum):
    """An answer that is not a refusal."""

    APPLIED = "applied"  # a push was accepted (summed into its step, or applied)
    OK = "ok"  # a pull, or a hello, was answered


ReplyStatus = Status | ErrorCode

_STATUSES: dict[str, ReplyStatus] = {
    **{member.value: member for member in Status},
    **{member.value: member for member in ErrorCode},
}


class Kind(StrEnum):
    """What a request on the data port asks for (its header's ``kind``)."""

    HELLO = "hello"  # the first message on a connection: the cluster token
    PUSH = "push"
    PULL = "pull"


_MISSING: Any = object()


def _refuse(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_MESSAGE, message)


def _int(header: Mapping[str, Any], name: str, default: int = _MISSING, minimum: int = 0) -> int:
    value = header.get(name, default)
    if type(value) is not int or value < minimum:
        raise _refuse(f"{name!r} must be an integer >= {minimum}")
    return value


def _str(header: Mapping[str, Any], name: str, default: str | None = _MISSING) -> str | None:
    value = header.get(name, default)
    if value is None and default is None:
        return None
    if not isinstance(value, str) or not value:
        raise _refuse(f"{name!r} must be a non-empty string")
    return value


def _bool(header: Mapping[str, Any], name: str, default: bool) -> bool:
    value = header.get(name, default)
    if not isinstance(value, bool):
        raise _refuse(f"{name!r} must be true or false")
    return value


def _float(header: Mapping[str, Any], name: str, default: float) -> float:
    value = header.get(name, default)
    if type(value) not in (int, float) or not value >= 0:  # NaN fails too
        raise _refuse(f"{name!r} must be a number >= 0")
    return float(value)


_KINDS: dict[object, Kind] = {kind.value: kind for kind in Kind}
# An enum member's ``.value`` is a descriptor call (about a microsecond): the hot paths look the
# plain strings up here instead.
WIRE_NAMES: dict[ReplyStatus | Kind, str] = {
    member: member.value for member in (*Status, *ErrorCode, *Kind)
}


def kind_of(frame: Frame) -> Kind:
    kind = _KINDS.get(frame.header.get("kind"))
    if kind is None:
        raise _refuse(f"'kind' must be one of {[k.value for k in Kind]}")
    return kind


_PUSH, _PULL = Kind.PUSH.value, Kind.PULL.value


@dataclass(frozen=True, slots=True)
class Hello:
    """Opens a data-port connection: the cluster token (None on an insecure cluster)."""

    token: str | None = None

    def header(self) -> dict[str, Any]:
        return {"kind": Kind.HELLO.value, "token": self.token}

    @classmethod
    def parse(cls, frame: Frame) -> Hello:
        token = frame.header.get("token")
        if token is not None and not isinstance(token, str):
            raise _refuse("'token' must be a string")
        return cls(token)


@dataclass(frozen=True, slots=True)
class Push:
    """A worker's gradients for one shard, computed from ``base_version``."""

    worker: str
    rank: int
    base_version: int
    step: int = 0
    shard: int = 0
    want_params: bool = True  # reply with the parameters (sync: those of the next version)
    # Views of the received body; validated against the shard's arrays by the shard.
    grads: Mapping[str, np.ndarray] = field(default_factory=dict)
    # sync: the consistent cut the worker's parameters descend from (None: not said)
    epoch: int | None = None

    def header(self) -> dict[str, Any]:
        return {
            "kind": _PUSH,
            "worker": self.worker,
            "rank": self.rank,
            "step": self.step,
            "base_version": self.base_version,
            "shard": self.shard,
            "want_params": self.want_params,
            "epoch": self.epoch,
        }

    def with_grads(self, grads: Mapping[str, np.ndarray]) -> Push:
        """The same push with its gradients replaced (by the validated ones)."""
        return Push(
            self.worker,
            self.rank,
            self.base_version,
            self.step,
            self.shard,
            self.want_params,
            grads,
            self.epoch,
        )

    @classmethod
    def parse(cls, frame: Frame) -> Push:
        header = frame.header
        worker = _str(header, "worker")
        assert worker is not None
        return cls(
            worker=worker,
            rank=_int(header, "rank"),
            step=_int(header, "step", 0),
            base_version=_int(header, "base_version"),
            shard=_int(header, "shard"),
            want_params=_bool(header, "want_params", False),
            grads=frame.arrays,
            epoch=None if header.get("epoch") is None else _int(header, "epoch"),
        )


@dataclass(frozen=True, slots=True)
class Pull:
    """The shard's parameters, long-polling up to ``wait_s`` for a version after ``after`` (or,
    in ssp mode with ``gate_for``, for that worker's clock gate to open)."""

    after: int = -1
    wait_s: float = 0.0
    gate_for: str | None = None
    # Sparse tables: the ids whose rows the reply should carry (``@t/want``, views of the body;
    # checked by the shard, ``pscluster.sparse_wire``).
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict)

    def header(self) -> dict[str, Any]:
        return {
            "kind": _PULL,
            "after": self.after,
            "wait_s": self.wait_s,
            "gate_for": self.gate_for,
        }

    @classmethod
    def parse(cls, frame: Frame) -> Pull:
        pull = cls.from_fields(frame.header)
        return cls(pull.after, pull.wait_s, pull.gate_for, frame.arrays)

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Pull:
        return cls(
            after=_int(fields, "after", -1, minimum=-1),
            wait_s=_float(fields, "wait_s", 0.0),
            gate_for=_str(fields, "gate_for", None),
        )

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> Pull:
        """From an HTTP pull's query string (``after``, ``wait``, ``worker``)."""
        try:
            after = int(query.get("after", -1))
        except ValueError:
            raise _refuse("query 'after' is not an integer") from None
        try:
            wait_s = float(query.get("wait", 0))
        except ValueError:
            raise _refuse("query 'wait' is not a number") from None
        fields = {"after": after, "wait_s": max(0.0, wait_s), "gate_for": query.get("worker")}
        return cls.from_fields(fields)


@dataclass(frozen=True, slots=True)
class Reply:
    """A shard's answer to a push or a pull: its verdict, its version and, when asked for, its
    parameters (views of the received body)."""

    status: ReplyStatus
    version: int
    done: bool = False
    waited_s: float = 0.0  # how long the shard held the reply (sync step, ssp gate)
    gate_open: bool = True  # ssp: False when the worker must wait before its next step
    message: str = ""  # why, for a refusal
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict)
    # sync: the consistent cut the shard's parameters descend from (set by the shard's frame)
    epoch: int = 0
    # The frame carries the shard's parameters of ``version`` (set by the shard's frame; a
    # shard that holds no dense part sends none, yet its version counts).
    params: bool = False

    def fields(self) -> dict[str, Any]:
        """The reply's own header fields (a shard's reply frame adds them to its version's)."""
        fields: dict[str, Any] = {
            "status": WIRE_NAMES[self.status],
            "version": self.version,
            "done": self.done,
            "waited_s": self.waited_s,
            "gate_open": self.gate_open,
        }
        if self.message:
            fields["message"] = self.message
        return fields

    @property
    def accepted(self) -> bool:
        return self.status is Status.APPLIED or self.status is Status.OK

    @classmethod
    def parse(cls, frame: Frame) -> Reply:
        header = frame.header
        status = _STATUSES.get(str(header.get("status")))
        if status is None:
            raise _refuse(f"unknown status {header.get('status')!r}")
        message = header.get("message", "")
        return cls(
            status=status,
            version=_int(header, "version", -1, minimum=-1),
            done=_bool(header, "done", False),
            waited_s=_float(header, "waited_s", 0.0),
            gate_open=_bool(header, "gate_open", True),
            message=message if isinstance(message, str) else "",
            arrays=frame.arrays,
            epoch=_int(header, "epoch", 0),
            params=_bool(header, "params", False),
        )


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request refused before it reached the shard's rules: bad input, not ready, busy, a
    wrong token. Sent as a reply with no arrays."""

    code: ErrorCode
    message: str
    version: int = -1

    @classmethod
    def of(cls, exc: ProtocolError, version: int = -1) -> Refusal:
        return cls(exc.code, exc.message, version)

    def reply(self) -> Reply:
        return Reply(self.code, self.version, message=self.message)

    def header(self) -> dict[str, Any]:
        return self.reply().fields()

    @classmethod
    def parse(cls, frame: Frame) -> Refusal:
        reply = Reply.parse(frame)
        if not isinstance(reply.status, ErrorCode):
            raise _refuse(f"{reply.status.value!r} is not a refusal")
        return cls(reply.status, reply.message, reply.version)
