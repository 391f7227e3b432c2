"""`bench` scenario workers: scale-out. The fan-out workload (100 sessions, 2 owners x 50
sockets, an SQL writer committing one multi-row UPDATE every 10 ms) against one `serve`
process, against `serve --workers 2`, and against two `serve` processes on the same database
with each owner's sessions split between them. Per setup: frames/s delivered, p50/p99 from
trigger to frame received, the servers' CPU, and whether every session got every event
exactly once, counted per session by seq: a missing or duplicate event, or a resync, is a
failure.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from typing import Any

import psutil
import psycopg
import websockets

import config
from cli.bench import _pct, _start_server
from cli.bench_fanout import (
    BATCH_INTERVAL,
    ROWS_PER_OWNER,
    Target,
    _open,
    spawn_clients,
    write_batches,
)
from cli.process_cpu import cpu_seconds
from web.frames import event_ts

SETUPS = ("one process", "--workers 2", "two processes")
CLIENT_PROCESSES = 2
LATE_DUPLICATES_S = 0.2  # after the last expected event, how long to listen for repeats
DELIVERY_TIMEOUT_S = 10.0


def _seq(frame: str) -> int | None:
    """The `seq` of an order event frame, without decoding it; None for any other frame."""
    if '"order"' not in frame[:20]:
        return None
    start = frame.find('"seq"')
    if start < 0:
        return None
    return int(frame[start + 5:frame.find(",", start)].lstrip(" :"))


async def _client(pipe: Connection, all_targets: list[Target]) -> None:
    opened = await asyncio.gather(*(_open(t) for t in all_targets), return_exceptions=True)
    sessions = [(t, ws) for t, ws in zip(all_targets, opened, strict=True)
                if not isinstance(ws, BaseException)]
    failures = len(all_targets) - len(sessions)
    seen: list[set[int]] = [set() for _ in sessions]
    duplicates = [0] * len(sessions)
    resyncs = [0] * len(sessions)
    latencies: list[float] = []
    last_received = [0.0]

    async def read(index: int, ws: websockets.ClientConnection) -> None:
        while True:
            try:
                frame = await ws.recv()
            except websockets.ConnectionClosed:
                return  # the server went away: what it did not send counts as missing
            assert isinstance(frame, str)
            seq = _seq(frame)
            if seq is None:
                resyncs[index] += '"resync"' in frame[:30]
                continue
            now = time.time()
            last_received[0] = now
            ts = event_ts(frame)
            if ts is not None:
                latencies.append(now * 1000 - ts)
            if seq in seen[index]:
                duplicates[index] += 1
            else:
                seen[index].add(seq)

    readers = [asyncio.create_task(read(i, ws)) for i, (_, ws) in enumerate(sessions)]
    pipe.send(("ready", failures))
    expected, timeout = await asyncio.get_running_loop().run_in_executor(None, pipe.recv)
    deadline = time.monotonic() + timeout
    # Polling keeps the readers free of bookkeeping; it costs them nothing measurable.
    while time.monotonic() < deadline and any(  # noqa: ASYNC110
            len(seen[i]) < expected[target.owner] for i, (target, _) in enumerate(sessions)):
        await asyncio.sleep(0.05)
    await asyncio.sleep(LATE_DUPLICATES_S)  # a repeat would come right behind the original
    for reader in readers:
        reader.cancel()
    per_session = [(target.owner, len(seen[i]), duplicates[i], resyncs[i])
                   for i, (target, _) in enumerate(sessions)]
    pipe.send((per_session, latencies, last_received[0]))
    for _, ws in sessions:
        await ws.close()


def _client_main(pipe: Connection, targets: list[Target]) -> None:
    asyncio.run(_client(pipe, targets))


@dataclass
class SetupResult:
    setup: str
    rate: int  # frames/s asked for
    written_per_s: float  # frames/s the writer's commits made, over its writing time
    frames: int  # delivered, all sessions
    frames_per_s: float  # delivered, from the first commit to the last frame received
    p50: float
    p99: float
    cpu_us_per_frame: float  # the servers' user + system time
    server_cores: float  # the servers' CPU time over the run's wall time
    sessions: int
    failures: int  # sockets that could not be opened
    sessions_exactly_once: int
    missing: int
    duplicates: int
    resyncs: int

    @property
    def exactly_once(self) -> bool:
        return (self.failures == 0 and self.sessions_exactly_once == self.sessions
                and self.missing == self.duplicates == self.resyncs == 0)


def _measure(db: psycopg.Connection, setup: str, servers: list[subprocess.Popen[bytes]],
             targets: list[Target], rows: dict[int, list[int]], rate: int,
             seconds: float) -> SetupResult:
    clients = spawn_clients(_client_main, targets, CLIENT_PROCESSES)
    try:
        return _write_and_count(db, setup, servers, targets, rows, rate, seconds, clients)
    finally:
        for process, _ in clients:
            if process.is_alive():  # only after a failure: they end by themselves
                process.terminate()


def _write_and_count(db: psycopg.Connection, setup: str, servers: list[subprocess.Popen[bytes]],
                     targets: list[Target], rows: dict[int, list[int]], rate: int,
                     seconds: float, clients: list[tuple[Any, Connection]]) -> SetupResult:
    sockets_per_owner = len(targets) // len(rows)
    failures = sum(pipe.recv()[1] for _, pipe in clients)
    owners = sorted(rows)
    # Events per batch, each to one owner's sockets; one row at most once per statement, so
    # that every row updated is exactly one event.
    per_batch = min(max(1, round(rate / sockets_per_owner * BATCH_INTERVAL)),
                    ROWS_PER_OWNER * len(owners))
    processes = [psutil.Process(server.pid) for server in servers]
    cpu_before = sum(cpu_seconds(p) for p in processes)
    wall_started, started = time.time(), time.perf_counter()
    committed = write_batches(db, "orders", rows, per_batch, BATCH_INTERVAL, seconds)
    writing = time.perf_counter() - started
    for _, pipe in clients:
        pipe.send((committed, DELIVERY_TIMEOUT_S))
    per_session: list[tuple[int, int, int, int]] = []
    latencies: list[float] = []
    last = wall_started
    for process, pipe in clients:
        sessions, values, last_received = pipe.recv()
        per_session += sessions
        latencies += values
        last = max(last, last_received)
        process.join(10)
    cpu = sum(cpu_seconds(p) for p in processes) - cpu_before
    frames = sum(distinct + repeats for _, distinct, repeats, _ in per_session)
    missing = sum(max(committed[owner] - distinct, 0) for owner, distinct, _, _ in per_session)
    exact = sum(1 for owner, distinct, repeats, resyncs in per_session
                if distinct == committed[owner] and repeats == 0 and resyncs == 0)
    elapsed = max(last - wall_started, 1e-9)
    written = sum(committed.values()) * sockets_per_owner / writing
    return SetupResult(setup, rate, written, frames, frames / elapsed, _pct(latencies, 0.5),
                       _pct(latencies, 0.99), cpu / max(frames, 1) * 1e6, cpu / elapsed,
                       len(targets), failures, exact, missing,
                       sum(repeats for _, _, repeats, _ in per_session),
                       sum(resyncs for _, _, _, resyncs in per_session))


def _targets(ports: list[int], owners: list[tuple[int, str]],
             sockets_per_owner: int) -> list[Target]:
    """Each owner's sockets, spread over `ports` in turn."""
    return [Target(f"ws://127.0.0.1:{ports[i % len(ports)]}/ws",
                   {"Authorization": f"Bearer {token}"}, True, owner)
            for owner, token in owners for i in range(sockets_per_owner)]


def run_workers(url: str, settings: config.Settings, owners: list[tuple[int, str]],
                rows: dict[int, list[int]], rate: int, seconds: float,
                sockets_per_owner: int = 50) -> dict[str, Any]:
    """Each setup in turn: its servers started, the workload measured, the servers stopped.
    `owners` are (user id, API token) pairs; `rows` their orders to update."""
    results = []
    with psycopg.connect(url, autocommit=True) as db:
        for setup in SETUPS:
            # Two synthetic users hold all the sessions: lift the per-user socket cap.
            start = [(2 if setup == "--workers 2" else 1)] * (2 if setup == "two processes"
                                                                 else 1)
            servers: list[subprocess.Popen[bytes]] = []
            try:
                ports = []
                for workers in start:
                    server, port = _start_server(url, settings, workers,
                                                 ORDERSTREAM_MAX_SOCKETS_PER_USER="0")
                    servers.append(server)
                    ports.append(port)
                results.append(_measure(db, setup, servers,
                                        _targets(ports, owners, sockets_per_owner), rows, rate,
                                        seconds))
            finally:
                for server in servers:
                    server.terminate()
                for server in servers:
                    server.wait(15)
    return {"rate": rate, "seconds": seconds,
            "setups": [{**asdict(r), "exactly_once": r.exactly_once} for r in results]}
