"""What a data-plane message costs to frame, decode and parse, in microseconds per message.

Each message of ``pscluster.messages`` as the data port carries it: a push of P float32
gradients, a pull, a reply with P parameters, a refusal. ``frame`` is the sender's work
(``frame_buffers``: the header packed, the arrays as views), ``decode`` the receiver's
(``decode_frame``: the header unpacked, the arrays as views) and ``parse`` the typed message
built and checked from the decoded frame. CPU time, medians of ``--repeats`` timings of
``--min-time``.

    python -m bench.messages --params 1e3,1e6
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import Column, counts, format_table, write_json
from pscluster.messages import Pull, Push, Refusal, Reply, Status
from pscluster.protocol import ErrorCode, decode_frame, frame_buffers


def microseconds(fn: Callable[[], Any], repeats: int, min_s: float) -> float:
    """CPU microseconds per call (process time: a busy neighbour's share of the clock does not
    count), the median of ``repeats`` timings of at least ``min_s``."""
    times = []
    for _ in range(repeats):
        calls, started = 0, time.process_time()
        while calls < 10 or time.process_time() - started < min_s:
            fn()
            calls += 1
        times.append((time.process_time() - started) / calls * 1e6)
    return statistics.median(times)


def rows_for(params: int, repeats: int, min_s: float) -> list[dict[str, Any]]:
    arrays = {"w": np.ones(params, np.float32)}
    messages: list[tuple[str, dict[str, Any], dict[str, np.ndarray], Callable[[Any], Any]]] = [
        ("push", Push("w0", 0, 7, 7, 0).header(), arrays, Push.parse),
        ("pull", Pull(6, 30.0).header(), {}, Pull.parse),
        ("reply", Reply(Status.APPLIED, 8).fields(), arrays, Reply.parse),
        ("refusal", Refusal(ErrorCode.LATE, "late", 8).header(), {}, Refusal.parse),
    ]
    rows = []
    for kind, header, payload, parse in messages:
        body = np.frombuffer(frame_buffers(header, payload).tobytes(), np.uint8).copy().data
        frame = decode_frame(body)

        def framed(header: dict[str, Any] = header, payload: Any = payload) -> Any:
            return frame_buffers(header, payload)

        def decoded(body: memoryview = body) -> Any:
            return decode_frame(body)

        def parsed(parse: Callable[[Any], Any] = parse, frame: Any = frame) -> Any:
            return parse(frame)

        rows.append(
            {
                "message": kind,
                "params": params if payload else 0,
                "frame_us": microseconds(framed, repeats, min_s),
                "decode_us": microseconds(decoded, repeats, min_s),
                "parse_us": microseconds(parsed, repeats, min_s),
            }
        )
    return rows


COLUMNS = [
    Column("message", "message"),
    Column("params", "P", "{:.0e}"),
    Column("frame_us", "frame us", "{:.1f}"),
    Column("decode_us", "decode us", "{:.1f}"),
    Column("parse_us", "parse us", "{:.1f}"),
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.messages", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--params", type=counts, default="1e3,1e6", help="P values")
    parser.add_argument("--repeats", type=int, default=5, help="timings per figure")
    parser.add_argument("--min-time", type=float, default=0.1, help="seconds per timing")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    rows = [row for params in args.params for row in rows_for(params, args.repeats, args.min_time)]
    print(f"microseconds per message (median of {args.repeats})")
    print(format_table(rows, COLUMNS))
    write_json(args.json, "messages", rows, repeats=args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
