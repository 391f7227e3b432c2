"""`bench --fanout --scale-sessions N`: N sessions at once against orderstream, one update
per owner per second, so every update is a burst of identical frames to half the sessions.

The clients are the lean ones of cli/bench_client.py. Server CPU is counted from the first
update to the last frame received; the sockets close after that.
"""

from __future__ import annotations

import time

import psutil
import psycopg

from cli.bench import _pct
from cli.bench_client import client_main
from cli.bench_fanout import (
    ROWS_PER_OWNER,
    Build,
    Result,
    Target,
    gather,
    spawn_clients,
)
from cli.process_cpu import cpu_seconds

# One client process for all sessions: with four, on 2 CPUs, the same server spent 15-19 us
# per frame and its p99 was 102-106 ms, against 13-16 us and 79-95 ms with one (three
# interleaved rounds, docs/benchmarks.md): waking four readers costs the sender more.
CLIENT_PROCESSES = 1


def run_sessions(db: psycopg.Connection, build: Build, targets: list[Target],
                 seconds: float, interval: float,
                 processes: int = CLIENT_PROCESSES) -> Result:
    """Open `targets` from `processes` client processes, then update one row every
    `interval` seconds, owner after owner, for `seconds`: each update reaches every
    session of its owner."""
    clients = spawn_clients(client_main, targets, processes)
    failures = sum(pipe.recv()[1] for _, pipe in clients)
    owners = sorted(build.rows)
    sessions_of = {owner: sum(t.owner == owner for t in targets) for owner in owners}
    committed = dict.fromkeys(owners, 0)
    server = psutil.Process(build.proc.pid)
    cpu_before = cpu_seconds(server)
    started = time.perf_counter()
    for update in range(int(seconds / interval)):
        owner = owners[update % len(owners)]
        row = build.rows[owner][update // len(owners) % ROWS_PER_OWNER]
        db.execute(f"UPDATE {build.table} SET quantity = quantity %% 9 + 1"  # noqa: S608
                   " WHERE id = %s", (row,))
        committed[owner] += 1
        pause = started + (update + 1) * interval - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
    received, latencies = gather(clients, committed)
    cpu = cpu_seconds(server) - cpu_before
    # Every process of the server: with --workers, each worker holds its own sockets.
    rss = sum(p.memory_info().rss for p in [server, *server.children(recursive=True)])
    for process, pipe in clients:
        pipe.send("close")
        process.join(30)
    expected = sum(committed[owner] * sessions_of[owner] for owner in owners)
    return Result(build.name, len(targets), received, expected - received,
                  _pct(latencies, 0.5), _pct(latencies, 0.99),
                  cpu / max(received, 1) * 1e6, failures, rss)
