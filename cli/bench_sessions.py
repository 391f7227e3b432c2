"""`bench --fanout --scale-sessions N`: N sessions at once against orderstream, one update
per owner per second, so every update is a burst of identical frames to half the sessions.

The clients are the lean ones of cli/bench_client.py. Server CPU is counted from the first
update to the last frame received; the sockets close after that.
"""

from __future__ import annotations

import psycopg

from cli.bench_fanout import Build, Result, Target, run_writes

# One client process for all sessions: with four, on 2 CPUs, the same server spent 15-19 us
# per frame and its p99 was 102-106 ms, against 13-16 us and 79-95 ms with one (three
# interleaved rounds, docs/benchmarks.md): waking four readers costs the sender more.
CLIENT_PROCESSES = 1


def run_sessions(db: psycopg.Connection, build: Build, targets: list[Target],
                 seconds: float, interval: float,
                 processes: int = CLIENT_PROCESSES) -> Result:
    """Open `targets` from `processes` client processes (offering permessage-deflate, as
    browsers do), then update one row every `interval` seconds, owner after owner, for
    `seconds`: each update reaches every session of its owner."""
    return run_writes(db, build, targets, len(targets), 1, interval, seconds, processes,
                      offer_deflate=True)
