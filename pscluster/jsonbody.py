"""Control-plane JSON bodies, parsed once at the edge: an object, nested no deeper than a
control message needs, or a refusal with ``bad_message``.

``json.loads`` recurses once per nesting level, so a body of a few kilobytes of ``[[[[...`` raises
``RecursionError``, which is no ``ValueError`` and would surface as a 500. The depth is checked
on the parsed value without recursion, and a recursion error becomes a refusal like any other.
"""

from __future__ import annotations

import json
from typing import Any

from pscluster.protocol import ErrorCode, ProtocolError

# The deepest control message (a heartbeat: body -> stats -> value) has depth 3; a little room
# for fields that grow, and nowhere near what a recursive parser or printer would choke on.
MAX_JSON_DEPTH = 8

# A worker's stats are one flat object of counters and labels; this many keys is far beyond what
# a worker reports and keeps a worker from growing the coordinator's memory through them.
MAX_STATS_KEYS = 64

# Keys the coordinator sets itself in /status next to a worker's stats.
RESERVED_STATS_KEYS = frozenset({"worker_id", "rank", "live", "expired"})


def _depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0), iteratively."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth + 1)
        if deepest > MAX_JSON_DEPTH:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


def parse_json_object(body: bytes | bytearray) -> dict[str, Any]:
    """The body as a JSON object, or ``ProtocolError(bad_message)``."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        # ValueError covers bad UTF-8 and bad JSON alike.
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "body is not JSON") from None
    if not isinstance(payload, dict):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "body is not a JSON object")
    if _depth(payload) > MAX_JSON_DEPTH:
        raise ProtocolError(
            ErrorCode.BAD_MESSAGE, f"body is nested deeper than {MAX_JSON_DEPTH} levels"
        )
    return payload


def parse_worker_stats(value: Any) -> dict[str, Any]:
    """A worker's reported stats: an object whose values are scalars (numbers, strings,
    booleans, nulls) or objects of scalars (``phase_seconds``, ``pushes``).

    Missing stats are an empty object; anything else is refused, so /status and the summary
    only ever show what a worker can report.
    """
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "'stats' must be an object")
    if len(value) > MAX_STATS_KEYS:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"'stats' has over {MAX_STATS_KEYS} keys")
    for key, item in value.items():
        if key in RESERVED_STATS_KEYS:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"'stats' may not set {key!r}")
        inner = item.values() if isinstance(item, dict) else (item,)
        if len(inner) > MAX_STATS_KEYS or not all(_is_scalar(x) for x in inner):
            raise ProtocolError(
                ErrorCode.BAD_MESSAGE,
                f"'stats' value {key!r} is neither a scalar nor an object of scalars",
            )
    return dict(value)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, int | float | str | bool)
