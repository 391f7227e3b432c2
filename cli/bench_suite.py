"""`server.py bench`: run the chosen scenarios (cli/bench_options.py) in order, each measured
by its own module, and hand their numbers to the report (cli/bench_report.py).

The scenarios that need orderstream share one server (and the naive build, for latency and
fan-out); bulk and writers run with no server up, so that nothing else uses the CPUs while a
writer is timed; workers and quotes start their own servers.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import psycopg

import config
from cli import bench_fanout, naive_build
from cli.bench import _free_port, _start_server
from cli.bench_fanout import OWNERS, SOCKETS_PER_OWNER, Build, Target
from cli.bench_options import SCENARIOS, scenarios_from_args, sizes_from_args
from cli.bench_report import Results, command_line, machine_info, table, write
from cli.bench_scenarios import SERVED, UNSERVED, Bench, floor_and_latency
from cli.users import create_token, create_user
from web.passwords import Passwords

ROOT = Path(__file__).resolve().parent.parent
NEEDS_ORDERSTREAM = {"latency", *SERVED}
NEEDS_NAIVE = {"latency", "fanout"}


def run_suite(args: argparse.Namespace, settings: config.Settings, url: str) -> int:
    """Run the scenarios `args` picks at the sizes it gives; print the table; write the
    results folder. Exit status 1 when a scenario failed or an event was lost or repeated."""
    sizes = sizes_from_args(args)
    chosen = scenarios_from_args(args)
    out = _out_folder(args, settings)
    problem = _unwritable(out)
    if problem:  # before minutes of measuring, not after
        print(f"server.py bench: error: cannot write the results to {out}: {problem}",
              file=sys.stderr)
        return 2
    results = Results(command_line(), asdict(sizes), chosen)
    results.machine = machine_info(url, "DATABASE_URL" if settings.database_url else "embedded")
    print(f"orderstream bench{' --smoke' if args.smoke else ''}: {', '.join(chosen)}; "
          f"{os.cpu_count()} CPUs; results to {out}", flush=True)
    bench = Bench(url, settings, sizes, results)
    with _users(bench):
        try:
            with _servers(bench, chosen):
                # The floor and latency are one loop, interleaved: each update times all three.
                timed_together = [name for name in ("floor", "latency") if name in chosen]
                if timed_together:
                    _run(bench, "+".join(timed_together), floor_and_latency)
                for name in chosen:
                    if name in SERVED:
                        _run(bench, name, SERVED[name])
        except Exception as exc:  # a server did not start (_run catches the scenarios' own)
            traceback.print_exc()
            for name in chosen:
                if (name in SERVED or name in ("floor", "latency")) and \
                        name not in results.scenarios:
                    results.failed(name, f"{type(exc).__name__}: {str(exc).strip()[:300]}")
        for name in chosen:
            if name in UNSERVED:
                _run(bench, name, UNSERVED[name])
    print()
    print(table(results))
    try:
        lines = write(results, out)
    except OSError as exc:  # the folder went away, or the disk filled, while we measured
        fallback = Path(tempfile.mkdtemp(prefix="orderstream-bench-"))
        print(f"server.py bench: error: cannot write the results to {out}: {exc};"
              f" writing them to {fallback} instead", file=sys.stderr)
        out = fallback
        lines = write(results, out)
    for line in lines:
        print(line)
    print(f"results in {out}")
    lost = any(not step["exactly_once"]
               for step in results.scenarios.get("workers", {}).get("setups", []))
    return 1 if results.errors or lost else 0


def _unwritable(folder: Path) -> str | None:
    """Why results cannot go into `folder` (made if missing), or None if they can."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _out_folder(args: argparse.Namespace, settings: config.Settings) -> Path:
    if args.out:
        return Path(args.out).expanduser().resolve()
    if args.smoke:
        return Path(tempfile.mkdtemp(prefix="orderstream-bench-smoke-"))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return (settings.data_path / "bench" / stamp).resolve()


def _run(bench: Bench, name: str, scenario: Callable[[Bench], None]) -> None:
    """One scenario, timed; its failure is recorded and the next one runs."""
    names = name.split("+")
    print(f"[{name}] " + "; ".join(SCENARIOS[n] for n in names), flush=True)
    started = time.monotonic()
    try:
        scenario(bench)
    except Exception as exc:  # one scenario's failure must not lose the others' figures
        traceback.print_exc()
        for n in names:
            bench.results.failed(n, f"{type(exc).__name__}: {str(exc).strip()[:300]}")
    bench.results.seconds[name] = time.monotonic() - started


@contextlib.contextmanager
def _users(bench: Bench) -> Iterator[None]:
    """Two owners (the fan-out's) with 50 orders each, a staff user; all removed after."""
    passwords = Passwords(1, 8192)  # cheap hashes: nobody logs in with these
    ids = []
    try:
        for _ in range(OWNERS):
            name = f"bench_fan_{os.urandom(4).hex()}"
            ids.append(create_user(bench.url, passwords, name, os.urandom(12).hex(), False))
            bench.owners.append((ids[-1], create_token(bench.url, name)))
        name = f"bench_staff_{os.urandom(4).hex()}"
        ids.append(create_user(bench.url, passwords, name, os.urandom(12).hex(), True))
        bench.staff = (ids[-1], create_token(bench.url, name))
        with psycopg.connect(bench.url, autocommit=True) as db:
            bench.rows = {owner: bench_fanout._rows(db, "orders", owner)
                          for owner, _ in bench.owners}
        yield
    finally:
        with psycopg.connect(bench.url, autocommit=True) as db:
            db.execute("DELETE FROM orders WHERE owner_id = ANY(%s)", (ids,))
            db.execute("DELETE FROM users WHERE id = ANY(%s)", (ids,))


@contextlib.contextmanager
def _servers(bench: Bench, chosen: list[str]) -> Iterator[None]:
    """orderstream (and the naive build) while the scenarios that need them run."""
    procs: list[subprocess.Popen[bytes]] = []
    naive_installed = False
    try:
        if NEEDS_ORDERSTREAM & set(chosen):
            # Two synthetic users hold all the sessions: lift the per-user socket cap.
            proc, bench.port = _start_server(bench.url, bench.settings,
                                             ORDERSTREAM_MAX_SOCKETS_PER_USER="0")
            procs.append(proc)
            bench.builds.append(Build(
                "orderstream", proc, "orders",
                [Target(f"ws://127.0.0.1:{bench.port}/ws", {"Authorization": f"Bearer {token}"},
                        True, owner)
                 for owner, token in bench.owners for _ in range(SOCKETS_PER_OWNER)],
                bench.rows))
        if NEEDS_NAIVE & set(chosen):
            with psycopg.connect(bench.url, autocommit=True) as db:
                naive_build.install(db)
                naive_installed = True
                naive_rows = {owner: bench_fanout._rows(db, naive_build.TABLE, owner)
                              for owner, _ in bench.owners}
            port = _free_port()
            proc = subprocess.Popen(  # noqa: S603 (our own fixed argv)
                [sys.executable, "-m", "cli.naive_build", "--port", str(port), "--dsn",
                 bench.url], cwd=ROOT, env=os.environ.copy())
            procs.append(proc)
            bench_fanout._wait_healthy(f"http://127.0.0.1:{port}/", proc)
            bench.builds.append(Build(
                "naive", proc, naive_build.TABLE,
                [Target(f"ws://127.0.0.1:{port}/ws?owner={owner}", {}, False, owner)
                 for owner, _ in bench.owners for _ in range(SOCKETS_PER_OWNER)],
                naive_rows))
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(15)
        bench.builds.clear()
        if naive_installed:
            with psycopg.connect(bench.url, autocommit=True) as db:
                naive_build.uninstall(db)
