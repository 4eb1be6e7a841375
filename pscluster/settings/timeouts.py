"""Timeouts and intervals that are no setting of their own, named in one place (seconds).

Those a user may want to tune are settings (``request_timeout_s``, ``heartbeat_interval_s``,
``push_wait_s``, ...); these are the fixed ones, each with why it has its value.
"""

from __future__ import annotations

# --- every service ------------------------------------------------------------------------------

# How long in-flight requests may take to finish once a service stops accepting new ones.
SHUTDOWN_GRACE_S = 10.0
# A container's health check (``python -m pscluster.healthcheck``): a live service answers
# /healthz at once; the orchestrator retries on its own interval.
HEALTHCHECK_TIMEOUT_S = 3.0
# An idle pooled connection stays open this long, so the next step reuses it.
KEEPALIVE_S = 60.0
# Retried calls (``pscluster.client.retry``): exponential backoff with full jitter from this
# first delay up to this cap.
RETRY_BASE_S = 0.05
RETRY_CAP_S = 2.0
# A control-plane call inside a loop that must go on if it fails: a heartbeat, telling a shard
# the membership, polling a shard's state.
CONTROL_CALL_TIMEOUT_S = 5.0

# --- shard --------------------------------------------------------------------------------------

# Longest a pull may long-poll, whatever it asks (workers ask for PULL_LONG_POLL_S).
MAX_PULL_WAIT_S = 60.0
# A shard without its job yet (the coordinator not up, or refusing) registers again this soon:
# workers wait for every shard. Once it has the job, it re-announces every register_interval_s.
SHARD_JOIN_RETRY_S = 0.2

# --- worker -------------------------------------------------------------------------------------

# Longest a worker's pull asks a shard to hold it waiting for a newer version; a worker's
# request timeout must be longer, or every long-poll would time out.
PULL_LONG_POLL_S = 10.0
# Attempts per call to a shard, with the backoff above (capped at RETRY_CAP_S): enough to ride
# out a shard restart.
SHARD_CALL_ATTEMPTS = 30
# Registration with the coordinator retries from this first delay up to this cap, until the
# worker's register_timeout_s.
REGISTER_BACKOFF_BASE_S = 0.05
REGISTER_BACKOFF_CAP_S = 1.0
# The goodbye on exit: short, the worker is leaving either way.
DEREGISTER_TIMEOUT_S = 2.0
# A shard that does not know this worker yet refused its push: the heartbeat re-registers it;
# the pause keeps the worker from spinning meanwhile.
UNKNOWN_WORKER_PAUSE_S = 0.1

# --- coordinator --------------------------------------------------------------------------------

# Every call of the coordinator's session, an evaluation's pull of a whole shard included.
COORDINATOR_REQUEST_TIMEOUT_S = 30.0

# --- the command (launcher/) --------------------------------------------------------------------

# A started service writes its ready file within this, or the launch fails naming its log.
SERVICE_READY_TIMEOUT_S = 60.0
# How often the launcher looks for a ready file, and for the coordinator's /status while a job
# runs (and again after a /status that did not answer).
READY_POLL_S = 0.02
STATUS_POLL_S = 0.1
STATUS_RETRY_S = 0.2
# One /status call.
STATUS_TIMEOUT_S = 5.0
# Once the job is done: workers leave by themselves within this; then SIGTERM, and SIGKILL for
# a service that outlives the stop grace.
WORKERS_LEAVE_S = 15.0
STOP_GRACE_S = 15.0
