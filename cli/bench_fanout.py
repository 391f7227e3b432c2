"""`bench --fanout`: orderstream against the naive build (cli/naive_build.py), interleaved in
one run. 100 sessions (2 owners x 50 sockets), an SQL writer committing one batch every
10 ms, at rising rates of frames/s; per build and rate: p50/p99 from trigger to frame
received, frames missing, and server CPU per frame. A rate is held when p99 <= 50 ms and
nothing is missing.

The sockets live in two client processes, so the bench's own Python does not share a core
with them, and are the lean clients of cli/bench_client.py: with websockets' client (a
reader task and a frame object per frame) the clients were the bottleneck at 40,000 and
50,000 frames/s on a slower 2-CPU machine (ours p99 31-61 ms at 50,000, against 9-35 ms
with the lean clients; docs/benchmarks.md, "Session 11").
"""

from __future__ import annotations

import asyncio
import functools
import json
import multiprocessing
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import websockets

import config
from cli import naive_build
from cli.bench import _free_port, _pct, _start_server
from cli.bench_client import client_main
from cli.process_cpu import cpu_seconds
from cli.users import create_token, create_user
from web.frames import event_ts
from web.passwords import Passwords

ROOT = Path(__file__).resolve().parent.parent
OWNERS = 2
SOCKETS_PER_OWNER = 50
ROWS_PER_OWNER = 50
BATCH_INTERVAL = 0.010  # seconds between the writer's commits
HELD_P99_MS = 50.0
CLIENT_PROCESSES = 2


@dataclass
class Target:
    """One socket to open: its URL, headers, whether to subscribe (orderstream), its owner."""

    url: str
    headers: dict[str, str]
    subscribe: bool
    owner: int


@dataclass
class Result:
    build: str
    rate: int
    frames: int
    missing: int
    p50: float
    p99: float
    cpu_us_per_frame: float
    failures: int = 0  # sockets that could not be opened
    rss: int = 0  # the server's resident memory at the end, bytes

    @property
    def held(self) -> bool:
        return self.failures == 0 and self.missing == 0 and self.p99 <= HELD_P99_MS


async def _open(target: Target) -> websockets.ClientConnection:
    ws = await websockets.connect(target.url, additional_headers=target.headers,
                                  max_size=2**24, compression=None, open_timeout=30)
    if target.subscribe:
        await ws.send(json.dumps({"op": "subscribe", "channel": "orders"}))
        if '"subscribed"' not in await asyncio.wait_for(ws.recv(), 30):
            raise RuntimeError("no subscribed frame")
    return ws


def _wait_healthy(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError(f"{url}: the server did not start")


class Build:
    """A server under test: how to write to it and how to reach its sockets."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], table: str,
                 targets: list[Target], rows: dict[int, list[int]]) -> None:
        self.name = name
        self.proc = proc
        self.table = table
        self.targets = targets
        self.rows = rows


def spawn_clients(main: Callable[[Connection, list[Any]], None], targets: list[Any],
                  processes: int) -> list[tuple[multiprocessing.process.BaseProcess, Connection]]:
    """`processes` client processes running `main`, each with every processes-th target (or
    whatever a client takes one of per session) and its end of a pipe; (process, our end)
    each."""
    context = multiprocessing.get_context("spawn")
    clients = []
    for i in range(processes):
        parent, child = context.Pipe()
        process = context.Process(target=main, args=(child, targets[i::processes]), daemon=True)
        process.start()
        clients.append((process, parent))
    return clients


def gather(clients: list[tuple[multiprocessing.process.BaseProcess, Connection]],
           committed: dict[int, int], timeout: float = 10.0) -> tuple[int, list[float]]:
    """Tell every client what each owner committed (it waits for those events, `timeout`
    seconds at most); the frames they received and the latencies, over all of them."""
    for _, pipe in clients:
        pipe.send((committed, timeout))
    received, latencies = 0, []
    for _, pipe in clients:
        count, values = pipe.recv()
        received += count
        latencies.extend(values)
    return received, latencies


def _run_rate(db: psycopg.Connection, build: Build, rate: int, seconds: float,
              targets: list[Target] | None = None, processes: int = CLIENT_PROCESSES,
              interval: float = BATCH_INTERVAL) -> Result:
    """`rate` frames/s to `targets` (the build's 100 sessions unless given), one SQL batch
    every `interval` seconds, for `seconds`."""
    targets = build.targets if targets is None else targets
    sockets_per_owner = len(targets) // len(build.rows)
    # Events per batch: each event reaches the owner's sockets.
    per_batch = max(1, round(rate / sockets_per_owner * interval))
    # Without permessage-deflate, as before the lean clients: the naive build would
    # otherwise compress every frame, and ours compresses none this small.
    return run_writes(db, build, targets, rate, per_batch, interval, seconds, processes,
                      offer_deflate=False)


def write_batches(db: psycopg.Connection, table: str, rows: dict[int, list[int]],
                  per_batch: int, interval: float, seconds: float) -> dict[int, int]:
    """Update `per_batch` of `rows` (owner -> ids) in one statement every `interval` seconds
    for `seconds`, the owners taking turns event by event; the events each owner got.
    `table` is one of the builds' fixed names, never input."""
    owners = sorted(rows)
    committed = dict.fromkeys(owners, 0)
    started = time.perf_counter()
    for batch in range(int(seconds / interval)):
        ids = []
        for k in range(batch * per_batch, (batch + 1) * per_batch):
            owner = owners[k % len(owners)]
            ids.append(rows[owner][k // len(owners) % ROWS_PER_OWNER])
            committed[owner] += 1
        db.execute(f"UPDATE {table} SET quantity = quantity %% 9 + 1"  # noqa: S608
                   " WHERE id = ANY(%s)", (ids,))
        pause = started + (batch + 1) * interval - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
    return committed


def run_writes(db: psycopg.Connection, build: Build, targets: list[Target], label: int,
               per_batch: int, interval: float, seconds: float, processes: int,
               offer_deflate: bool) -> Result:
    """Open `targets` with the lean clients from `processes` processes (offering
    permessage-deflate or not), then update `per_batch` rows in one statement every
    `interval` seconds for `seconds`, owner after owner, and wait for every event at every
    socket of its owner. Server CPU runs from the first write to the last frame received
    (the sockets close after it is read); RSS is summed over the server's processes (with
    --workers, each holds its own sockets). `label` is the Result's `rate`."""
    clients = spawn_clients(functools.partial(client_main, offer_deflate=offer_deflate),
                            targets, processes)
    failures = sum(pipe.recv()[1] for _, pipe in clients)
    owners = sorted(build.rows)
    sessions_of = {owner: sum(t.owner == owner for t in targets) for owner in owners}
    server = psutil.Process(build.proc.pid)
    cpu_before = cpu_seconds(server)
    committed = write_batches(db, build.table, build.rows, per_batch, interval, seconds)
    received, latencies = gather(clients, committed)
    cpu = cpu_seconds(server) - cpu_before
    rss = sum(p.memory_info().rss for p in [server, *server.children(recursive=True)])
    for process, pipe in clients:
        pipe.send("close")
        process.join(30)
    expected = sum(committed[owner] * sessions_of[owner] for owner in owners)
    return Result(build.name, label, received, expected - received, _pct(latencies, 0.5),
                  _pct(latencies, 0.99), cpu / max(received, 1) * 1e6, failures, rss)


@dataclass
class Extras:
    """What `bench --fanout` measures beside the rates: single-event latency of each build
    (commit returned -> frame received), and the writer's cost of a big UPDATE."""

    latency_ms: dict[str, list[float]]
    bulk_rows: int
    bulk_seconds: dict[str, list[float]]
    sessions: Result | None = None  # many sessions at once (orderstream only)


async def _single_event_latency(url: str, builds: list[Build],
                                updates: int) -> dict[str, list[float]]:
    """One socket per build; single-row UPDATEs, alternating builds update by update."""
    spans: dict[str, list[float]] = {build.name: [] for build in builds}
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as db:
        sockets = []
        for build in builds:
            target = build.targets[0]
            ws = await websockets.connect(target.url, additional_headers=target.headers,
                                          max_size=2**24, compression=None)
            if target.subscribe:
                await ws.send(json.dumps({"op": "subscribe", "channel": "orders"}))
                assert '"subscribed"' in await ws.recv()
            sockets.append((build, ws, build.rows[target.owner][0]))
        try:
            for _ in range(updates):
                for build, ws, row in sockets:
                    await db.execute(f"UPDATE {build.table} SET quantity = quantity %% 9 + 1"  # noqa: S608
                                     " WHERE id = %s", (row,))
                    committed = time.perf_counter()
                    while event_ts(await asyncio.wait_for(ws.recv(), 10)) is None:  # type: ignore[arg-type]
                        pass
                    spans[build.name].append((time.perf_counter() - committed) * 1000)
        finally:
            for _, ws, _ in sockets:
                await ws.close()
    return spans


def _bulk_update_seconds(db: psycopg.Connection, owner: int, rows: int,
                         rounds: int = 3, vacuum: bool = False
                         ) -> tuple[dict[str, list[float]], bool]:
    """The same `rows`-row UPDATE on orders (our triggers) and on a copy without triggers,
    interleaved `rounds` times: what the triggers cost the writer of a big statement.
    Returns the seconds per table and round, and whether the checkpoints ran.

    Each statement follows a CHECKPOINT, so each pays the full-page images of the pages it
    dirties (else whichever came after PostgreSQL's own checkpoint paid them). The tables
    keep the previous round's dead rows, the same in both; with `vacuum`, each statement
    starts on a freshly vacuumed table instead: both gain about the same time (new row
    versions fill freed space instead of extending the table), a bigger share of the
    untriggered statement. Neither updates in place (HOT): the live rows fill their pages."""
    db.execute("DROP TABLE IF EXISTS bench_plain_orders")
    db.execute("CREATE TABLE bench_plain_orders (LIKE orders INCLUDING ALL)")
    db.execute("INSERT INTO orders (owner_id, instrument, quantity, price)"
               " SELECT %s, 'BULK', 1, 100 FROM generate_series(1, %s)", (owner, rows))
    db.execute("INSERT INTO bench_plain_orders OVERRIDING SYSTEM VALUE SELECT * FROM orders"
               " WHERE owner_id = %s"
               " AND instrument = 'BULK'", (owner,))
    db.execute("ANALYZE orders")
    db.execute("ANALYZE bench_plain_orders")
    seconds: dict[str, list[float]] = {"orders (our triggers)": [], "no triggers": []}
    checkpoints = True
    try:
        for _ in range(rounds):
            for name, table in (("orders (our triggers)", "orders"),
                                ("no triggers", "bench_plain_orders")):
                if vacuum:
                    db.execute(f"VACUUM {table}")  # one of two fixed names
                # A role without pg_checkpoint gets noisier figures, not wrong ones
                # (results.json says whether the checkpoints ran).
                try:
                    db.execute("CHECKPOINT")
                except psycopg.errors.InsufficientPrivilege:
                    checkpoints = False
                started = time.perf_counter()
                db.execute(f"UPDATE {table} SET price = price + 1"  # noqa: S608
                           " WHERE owner_id = %s AND instrument = 'BULK'", (owner,))
                seconds[name].append(time.perf_counter() - started)
    finally:
        db.execute("DROP TABLE IF EXISTS bench_plain_orders")
        db.execute("DELETE FROM orders WHERE owner_id = %s AND instrument = 'BULK'", (owner,))
    return seconds, checkpoints


def run_fanout(url: str, ours: subprocess.Popen[bytes], port: int,
               owners: list[tuple[int, str]], rates: list[int], seconds: float,
               latency_updates: int = 300, bulk_rows: int = 50_000,
               scale_sessions: int = 0) -> tuple[list[Result], Extras]:
    """Measure orderstream (serving on `port`; `owners` are (user id, API token) pairs)
    against the naive build, which this starts and stops, rate by rate, interleaved; then
    single-event latency of both, and the triggers' cost to a `bulk_rows`-row UPDATE."""
    with psycopg.connect(url, autocommit=True) as db:
        naive_build.install(db)
        owner_ids = [owner for owner, _ in owners]
        our_rows = {owner: _rows(db, "orders", owner) for owner in owner_ids}
        naive_rows = {owner: _rows(db, naive_build.TABLE, owner) for owner in owner_ids}
        naive_port = _free_port()
        naive = subprocess.Popen(  # noqa: S603 (our own fixed argv)
            [sys.executable, "-m", "cli.naive_build", "--port", str(naive_port), "--dsn", url],
            cwd=ROOT, env=os.environ.copy())
        try:
            _wait_healthy(f"http://127.0.0.1:{naive_port}/", naive)
            ours_targets = [Target(f"ws://127.0.0.1:{port}/ws",
                                   {"Authorization": f"Bearer {token}"}, True, owner)
                            for owner, token in owners for _ in range(SOCKETS_PER_OWNER)]
            naive_targets = [Target(f"ws://127.0.0.1:{naive_port}/ws?owner={owner}", {}, False,
                                    owner)
                             for owner in owner_ids for _ in range(SOCKETS_PER_OWNER)]
            builds = [Build("orderstream", ours, "orders", ours_targets, our_rows),
                      Build("naive", naive, naive_build.TABLE, naive_targets, naive_rows)]
            results = []
            for rate in rates:
                for build in builds:
                    results.append(_run_rate(db, build, rate, seconds))
            latency = asyncio.run(_single_event_latency(url, builds, latency_updates))
            bulk, _ = _bulk_update_seconds(db, owner_ids[0], bulk_rows)
            sessions = None
            if scale_sessions:
                # Issue 8's setup: the owners' sessions split evenly, one update per owner per
                # second, so every update is a burst to half the sessions.
                many = [Target(f"ws://127.0.0.1:{port}/ws",
                               {"Authorization": f"Bearer {token}"}, True, owner)
                        for owner, token in owners for _ in range(scale_sessions // OWNERS)]
                from cli.bench_sessions import run_sessions  # it imports this module

                sessions = run_sessions(db, builds[0], many, max(seconds, 5.0),
                                        interval=1.0 / OWNERS)
            return results, Extras(latency, bulk_rows, bulk, sessions)
        finally:
            naive.terminate()
            naive.wait(10)
            naive_build.uninstall(db)


def _rows(db: psycopg.Connection, table: str, owner: int) -> list[int]:
    db.execute(f"DELETE FROM {table} WHERE owner_id = %s", (owner,))  # noqa: S608
    return [int(row[0]) for row in db.execute(
        f"INSERT INTO {table} (owner_id, instrument, quantity, price)"  # noqa: S608
        " SELECT %s, 'FAN', 1, 100 FROM generate_series(1, %s) RETURNING id",
        (owner, ROWS_PER_OWNER)).fetchall()]


def report(results: list[Result], extras: Extras) -> None:
    print("fan-out: 100 sessions (2 owners x 50), one SQL batch every 10 ms,"
          f" held = p99 <= {HELD_P99_MS:g} ms and nothing missing")
    print(f"  {'frames/s':>9} {'build':12} {'p50 ms':>8} {'p99 ms':>8} {'missing':>8}"
          f" {'CPU us/frame':>13}  held")
    by_rate: dict[int, dict[str, Result]] = {}
    for r in results:
        by_rate.setdefault(r.rate, {})[r.build] = r
        print(f"  {r.rate:9,d} {r.build:12} {r.p50:8.2f} {r.p99:8.2f} {r.missing:8d}"
              f" {r.cpu_us_per_frame:13.1f}  {'yes' if r.held else 'no'}"
              + (f" ({r.failures} sockets failed to open)" if r.failures else ""))
    for rate, pair in by_rate.items():
        if "orderstream" in pair and "naive" in pair:
            ratio = pair["orderstream"].cpu_us_per_frame / pair["naive"].cpu_us_per_frame
            print(f"  at {rate:,d} frames/s: CPU per frame orderstream / naive = {ratio:.2f}x")
    for build in ("orderstream", "naive"):
        held = [r.rate for r in results if r.build == build and r.held]
        print(f"  highest rate held by {build}: {max(held):,d} frames/s" if held
              else f"  {build} held none of the rates")
    print("single event, commit returned -> frame received (one socket each, interleaved):")
    p99 = {}
    for build, spans in extras.latency_ms.items():
        p99[build] = _pct(spans, 0.99)
        print(f"  {build:12} p50 {_pct(spans, 0.5):6.3f} ms   p99 {p99[build]:6.3f} ms"
              f"   (n={len(spans)})")
    if p99.get("naive"):
        print(f"  p99 orderstream / naive = {p99['orderstream'] / p99['naive']:.2f}x")
    print(f"UPDATE of {extras.bulk_rows:,d} rows in one statement (interleaved, seconds):")
    medians = {}
    for name, values in extras.bulk_seconds.items():
        medians[name] = sorted(values)[len(values) // 2]
        print(f"  {name:22} median {medians[name]:6.3f}   all "
              + " ".join(f"{v:.3f}" for v in values))
    plain = medians.get("no triggers")
    if plain:
        print(f"  with our triggers / without = {medians['orders (our triggers)'] / plain:.2f}x")
    many = extras.sessions
    if many is not None:
        print(f"many sessions ({many.rate:,d} sessions, one update per owner per second,"
              f" {many.rate:,d} frames/s):")
        print(f"  failures {many.failures}   missing {many.missing}   p50 {many.p50:.1f} ms"
              f"   p99 {many.p99:.1f} ms   CPU {many.cpu_us_per_frame:.1f} us/frame"
              f"   server RSS {many.rss / 2**20:.0f} MiB")


def run_fanout_bench(url: str, settings: config.Settings, rates: list[int],
                     seconds: float, latency_updates: int = 300, bulk_rows: int = 50_000,
                     scale_sessions: int = 0) -> int:
    """`bench --fanout`: start orderstream, make two owners, measure, report, clean up."""
    owners = []
    for _ in range(OWNERS):
        name = f"bench_fan_{os.urandom(4).hex()}"
        owners.append((create_user(url, Passwords(1, 8192), name, os.urandom(12).hex(), False),
                       create_token(url, name)))
    # Two synthetic users hold all the sessions: the per-user socket cap (a defence against
    # one account hogging a server) would refuse most of them.
    proc, port = _start_server(url, settings, ORDERSTREAM_MAX_SOCKETS_PER_USER="0")
    print(f"orderstream bench --fanout: server pid {proc.pid} on port {port},"
          f" {os.cpu_count()} CPUs, {seconds:g} s per rate and build")
    try:
        report(*run_fanout(url, proc, port, owners, rates, seconds, latency_updates,
                           bulk_rows, scale_sessions))
    finally:
        proc.terminate()
        proc.wait(15)
        with psycopg.connect(url, autocommit=True) as conn:
            ids = [owner for owner, _ in owners]
            conn.execute("DELETE FROM orders WHERE owner_id = ANY(%s)", (ids,))
            conn.execute("DELETE FROM users WHERE id = ANY(%s)", (ids,))
    return 0
