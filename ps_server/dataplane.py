"""A shard's answers to pushes and pulls, whatever carried them (the data port, or HTTP).

Each handler takes a parsed message (``pscluster.messages``) and returns the reply frame; the
transports only move bytes in and out. The verdict travels one way: in the reply's frame header.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

from ps_server.checkpoint import CheckpointStore
from ps_server.metrics import ShardMetrics
from ps_server.sparse.tables import dense_part
from ps_server.state import OFFLOAD_ELEMENTS, ShardState
from pscluster.faults import maybe_kill
from pscluster.jobspec import Registration
from pscluster.messages import Pull, Push, Refusal, Reply, ReplyStatus, Status
from pscluster.protocol import EncodedFrame, ErrorCode, ProtocolError, frame_buffers
from pscluster.settings import Mode, ShardSettings
from pscluster.settings.timeouts import MAX_PULL_WAIT_S

# The HTTP status of a reply (the data port has none): a refused verdict is a conflict.
ACCEPTED_HTTP, VERDICT_REFUSED_HTTP = 200, 409


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    """A reply frame, its status (for the metrics) and the HTTP status it goes with over HTTP."""

    frame: EncodedFrame
    http_status: int = ACCEPTED_HTTP
    status: ReplyStatus = Status.OK


class ShardSlot:
    """Holds the shard's state once the coordinator has handed it the job (the app's own mapping
    is frozen after start-up), and the count of pushes in flight."""

    def __init__(self, store: CheckpointStore | None = None) -> None:
        self.state: ShardState | None = None
        self.ready = asyncio.Event()
        self.inflight = 0
        self.store = store
        self.registration: Registration | None = None


class DataPlane:
    def __init__(self, slot: ShardSlot, settings: ShardSettings, metrics: ShardMetrics) -> None:
        self.slot = slot
        self.settings = settings
        self.metrics = metrics
        self.max_body_bytes = int(settings.max_body_mb * 2**20)

    def state(self) -> ShardState:
        state = self.slot.state
        if state is None:
            raise ProtocolError(ErrorCode.NOT_READY, "shard has not received its job yet", 503)
        if state.recovering:
            raise ProtocolError(
                ErrorCode.NOT_READY, "restarted: waiting for the consistent cut", 503
            )
        return state

    def refusal(self, exc: ProtocolError) -> Answer:
        state = self.slot.state
        refusal = Refusal.of(exc, state.version if state is not None else -1)
        return Answer(frame_buffers(refusal.header()), exc.status, exc.code)

    async def push(self, message: Push, nbytes: int) -> Answer:
        """Cap the pushes in flight (each holds its body in memory): over the cap, refuse
        'busy' and let the worker back off. Then, for fault-injection tests, die at the
        configured version."""
        slot = self.slot
        if slot.inflight >= self.settings.max_inflight_pushes:
            return self.refusal(ProtocolError(ErrorCode.BUSY, "too many pushes in flight", 503))
        slot.inflight += 1
        try:
            return await self._push(message, nbytes)
        finally:
            slot.inflight -= 1
            if slot.state is not None:
                maybe_kill(self.settings, slot.state.version)

    async def _push(self, message: Push, nbytes: int) -> Answer:
        try:
            state = self.state()
            self.metrics.bytes_received.inc(nbytes)
            if message.shard != state.index:
                raise ProtocolError(
                    ErrorCode.WRONG_SHARD, f"this is shard {state.index}, not {message.shard}"
                )
            # The body's buffer is this message's alone: the shard may keep the gradients as
            # they are. The finiteness check reads every byte: off the event loop when large.
            # Sparse tables: row gradients and the next batch's ids, checked apart.
            sparse = state.parse_sparse(message.grads)
            dense = message.grads if state.tables is None else dense_part(message.grads)
            if nbytes >= 4 * OFFLOAD_ELEMENTS:
                grads = await asyncio.to_thread(state.validate_gradients, dense, owned=True)
            else:
                grads = state.validate_gradients(dense, owned=True)
        except ProtocolError as exc:
            return self.refusal(exc)
        message = message.with_grads(grads)
        verdict = await state.push(message, sparse)
        gate_open = True
        started = time.perf_counter()
        if state.waits_at_gate(verdict):
            # ssp: hold the reply until the worker may start its next step (or ask it to poll).
            gate_open = await state.wait_for_start(message.worker, state.job.push_wait_s)
        elif verdict.accepted and message.want_params:
            # sync: hold the reply until the step completes, so it carries the next version.
            await state.wait_for_version(message.base_version, state.job.push_wait_s)
        elif (
            verdict.code is ErrorCode.LATE
            and message.want_params
            and state.holds_late_reply(message.worker)
        ):
            # sync with a deadline: a late worker starts the next step with the others.
            await state.wait_for_version(state.version, state.job.push_wait_s)
        waited = time.perf_counter() - started
        status = Status.APPLIED if verdict.code is None else verdict.code
        reply = Reply(status, state.version, state.done, waited_s=waited, gate_open=gate_open)
        # Parameters ride along with every reply but a duplicate's (that worker's gradient is
        # in the step; it long-polls for the result). A future_version reply means the shard
        # restarted from a checkpoint older than what the worker saw: the worker rewinds; a
        # rewound one that the shards rewound to a consistent cut (sync): it computes again.
        with_params = message.want_params and verdict.code is not ErrorCode.DUPLICATE
        frame = await state.reply_frame(reply, with_params=with_params, wants=sparse.wants)
        self.metrics.bytes_sent.inc(frame.nbytes)
        http_status = ACCEPTED_HTTP if verdict.accepted else VERDICT_REFUSED_HTTP
        return Answer(frame, http_status, status)

    async def pull(self, message: Pull) -> Answer:
        """The current parameters, long-polling until version > ``after`` (up to ``wait_s``),
        or in ssp mode with ``gate_for`` until that worker's gate opens."""
        try:
            state = self.state()
            wants = state.parse_sparse(message.arrays).wants
        except ProtocolError as exc:
            return self.refusal(exc)
        wait_s = min(MAX_PULL_WAIT_S, message.wait_s)
        gate_open = True
        started = time.perf_counter()
        if message.gate_for and state.job.mode is Mode.SSP:
            gate_open = await state.wait_for_start(message.gate_for, wait_s)
        elif wait_s > 0:
            await state.wait_for_version(message.after, wait_s)
        reply = Reply(
            Status.OK,
            state.version,
            state.done,
            waited_s=time.perf_counter() - started,
            gate_open=gate_open,
        )
        frame = await state.reply_frame(reply, with_params=True, wants=wants)
        self.metrics.bytes_sent.inc(frame.nbytes)
        return Answer(frame)
