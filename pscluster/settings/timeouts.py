"""Timeouts and intervals that are no setting of their own, named in one place."""

from __future__ import annotations

# Longest a worker's pull asks a shard to hold it waiting for a newer version (seconds); a
# worker's request timeout must be longer, or every long-poll would time out.
PULL_LONG_POLL_S = 10.0
