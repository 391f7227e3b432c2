"""The `bench` scenarios, one function each: measure with the scenario's own module, record
the raw numbers, and turn them into the table's figures beside issue 8's goals.
cli/bench_suite.py runs them, with the servers and users they share (`Bench`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import httpx
import psycopg
from prometheus_client.parser import text_string_to_metric_families

import config
from cli import bench_fanout
from cli.bench import _pct, _socket, _start_server, batch_rates, listener_loss, replay_rates
from cli.bench_fanout import OWNERS, SOCKETS_PER_OWNER, Build, Result, Target
from cli.bench_floor import FLOOR, interleaved_latency
from cli.bench_options import Sizes
from cli.bench_quotes import measure_quotes
from cli.bench_report import Results, finite
from cli.bench_sessions import run_sessions
from cli.bench_workers import run_workers
from cli.bench_writers import run_writers

GOAL_SESSIONS = 10_000


@dataclass
class Bench:
    """What the scenarios share: the database, the bench's users, and the servers up."""

    url: str
    settings: config.Settings
    sizes: Sizes
    results: Results
    owners: list[tuple[int, str]] = field(default_factory=list)  # (user id, API token)
    staff: tuple[int, str] = (0, "")
    rows: dict[int, list[int]] = field(default_factory=dict)  # owner -> orders to update
    builds: list[Build] = field(default_factory=list)  # orderstream first, then naive
    port: int = 0  # orderstream's

    def build(self, name: str) -> Build:
        return next(b for b in self.builds if b.name == name)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _p(values: list[float], q: float) -> float | None:
    return finite(_pct(values, q))


# -- floor and latency -------------------------------------------------------------------


def floor_and_latency(bench: Bench) -> None:
    with_latency = "latency" in bench.results.scenarios_run
    with_floor = "floor" in bench.results.scenarios_run
    run = interleaved_latency(bench.url, bench.builds if with_latency else [],
                              bench.sizes.latency_updates, with_floor)
    samples = {clock: {name: [round(x, 4) for x in values] for name, values in by_name.items()}
               for clock, by_name in run["samples_ms"].items()}
    summary = {clock: {name: {"p50": _p(v, 0.5), "p99": _p(v, 0.99), "max": finite(max(v)),
                              "n": len(v)}
                       for name, v in by_name.items()}
               for clock, by_name in samples.items()}
    commit, sent = summary["commit_ms"], summary["sent_ms"]
    if with_floor:
        bench.results.record("floor", {
            "updates": bench.sizes.latency_updates,
            "summary_ms": {clock: by_name[FLOOR] for clock, by_name in summary.items()},
            "samples_ms": {clock: {FLOOR: by_name[FLOOR]} for clock, by_name in samples.items()},
            "heard_before_commit_returned": run["floor_heard_before_commit_returned"]})
        bench.results.figure("floor", "NOTIFY commit returned -> asyncpg, p50 / p99",
                             f"{_ms(commit[FLOOR]['p50'])} / {_ms(commit[FLOOR]['p99'])} ms")
        bench.results.figure("floor", "NOTIFY sent -> asyncpg callback, p50 / p99",
                             f"{_ms(sent[FLOOR]['p50'])} / {_ms(sent[FLOOR]['p99'])} ms")
    if not with_latency:
        return
    # The floor's samples too: the latency plot draws all three.
    bench.results.record("latency", {"updates": bench.sizes.latency_updates,
                                     "summary_ms": summary, "samples_ms": samples})
    ours, naive = commit["orderstream"], commit["naive"]
    bench.results.figure("latency", "orderstream p50, commit returned -> frame",
                         f"{_ms(ours['p50'])} ms", "<= 0.3 ms", _le(ours["p50"], 0.3))
    bench.results.figure("latency", "naive build p50 / p99, commit returned -> frame",
                         f"{_ms(naive['p50'])} / {_ms(naive['p99'])} ms")
    bench.results.figure("latency", "p99 orderstream / naive",
                         f"{_ms(ours['p99'])} / {_ms(naive['p99'])} ms = "
                         f"{_ratio(ours['p99'], naive['p99'])}", "<= 1.2x",
                         _le(_div(ours["p99"], naive["p99"]), 1.2))
    if with_floor:
        for name in ("orderstream", "naive"):
            bench.results.figure(
                "latency", f"{name} / floor, statement sent -> received, p50 and p99",
                f"{_ratio(sent[name]['p50'], sent[FLOOR]['p50'])} and "
                f"{_ratio(sent[name]['p99'], sent[FLOOR]['p99'])}")


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _ratio(a: float | None, b: float | None) -> str:
    value = _div(a, b)
    return "-" if value is None else f"{value:.2f}x"


def _le(value: float | None, limit: float) -> bool | None:
    return None if value is None else value <= limit


# -- fan-out and sessions ------------------------------------------------------------------


def _step(result: Result, seconds: float) -> dict[str, object]:
    return {"build": result.build, "rate": result.rate, "frames": result.frames,
            "frames_per_s": result.frames / seconds, "missing": result.missing,
            "failures": result.failures, "p50": finite(result.p50), "p99": finite(result.p99),
            "cpu_us_per_frame": result.cpu_us_per_frame, "rss_bytes": result.rss,
            "held": result.held}


def _fanout(bench: Bench) -> None:
    seconds = bench.sizes.seconds
    steps = []
    with psycopg.connect(bench.url, autocommit=True) as db:
        for rate in bench.sizes.rates:
            for build in bench.builds:  # interleaved: both builds at this rate, then the next
                result = bench_fanout._run_rate(db, build, rate, seconds)
                steps.append(_step(result, seconds))
                print(f"  {rate:>7,} frames/s {build.name:12} p50 {_ms(steps[-1]['p50'])} ms"
                      f"  p99 {_ms(steps[-1]['p99'])} ms  missing {result.missing}", flush=True)
    bench.results.record("fanout", {"sessions": OWNERS * SOCKETS_PER_OWNER, "seconds": seconds,
                                    "held_p99_ms": bench_fanout.HELD_P99_MS, "steps": steps})
    by_rate: dict[int, dict[str, dict]] = {}
    for step in steps:
        by_rate.setdefault(step["rate"], {})[step["build"]] = step  # type: ignore[index]
    for rate, builds in by_rate.items():
        ours, naive = builds["orderstream"], builds["naive"]
        bench.results.figure(
            "fanout", f"{rate:,} frames/s p99 orderstream / naive",
            f"{_ms(ours['p99'])} / {_ms(naive['p99'])} ms")
        bench.results.figure(
            "fanout", f"{rate:,} frames/s missing orderstream / naive",
            f"{ours['missing']} / {naive['missing']}", "0", ours["missing"] == 0)
        bench.results.figure(
            "fanout", f"{rate:,} frames/s CPU/frame vs naive",
            _ratio(ours["cpu_us_per_frame"], naive["cpu_us_per_frame"]), "<= 0.8x",
            _le(_div(ours["cpu_us_per_frame"], naive["cpu_us_per_frame"]), 0.8))
    held = {name: max((s["rate"] for s in steps if s["build"] == name and s["held"]),
                      default=0) for name in ("orderstream", "naive")}
    bench.results.figure("fanout", "highest rate held (p99 <= 50 ms, none missing)",
                         f"{held['orderstream']:,} (naive {held['naive']:,}) frames/s",
                         ">= 50,000 and >= naive",
                         held["orderstream"] >= max(50_000, held["naive"]))


class FullPasses(NamedTuple):
    """The server's full garbage-collector passes: how many, their seconds in all, and how
    many took over a quarter of a second (docs/benchmarks.md, "Garbage")."""

    count: float
    seconds: float
    over_quarter: float

    def __sub__(self, earlier: FullPasses) -> FullPasses:
        return FullPasses(*(a - b for a, b in zip(self, earlier, strict=True)))


def _full_passes(port: int) -> FullPasses:
    """The server's full passes so far, from its /metrics (which gets them within a second)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    count = seconds = quick = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != "orderstream_gc_pause_seconds":
            continue
        for sample in family.samples:
            if sample.labels.get("generation") != "2":
                continue
            if sample.name.endswith("_count"):
                count = sample.value
            elif sample.name.endswith("_sum"):
                seconds = sample.value
            elif sample.name.endswith("_bucket") and sample.labels.get("le") == "0.25":
                quick = sample.value  # buckets count the passes up to their bound
    return FullPasses(count, seconds, count - quick)


def _sessions(bench: Bench) -> None:
    count = bench.sizes.scale_sessions
    seconds = max(bench.sizes.seconds, 3.0)  # a few bursts: one per owner per second
    with psycopg.connect(bench.url, autocommit=True) as db:
        # Issue 8's setup: the sessions split between the owners, one update per owner per
        # second, so each update is a burst to half the sessions. The same lean clients as
        # `bench --fanout --scale-sessions`.
        passes_before = _full_passes(bench.port)
        result = run_sessions(db, bench.build("orderstream"), _many(bench.port, bench.owners,
                                                                     count),
                              seconds, interval=1.0 / OWNERS)
        passes = _full_passes(bench.port) - passes_before
        # The same on `serve --workers 2`: each burst shared by two processes.
        proc, port = _start_server(bench.url, bench.settings, 2,
                                   ORDERSTREAM_MAX_SOCKETS_PER_USER="0")
        try:
            workers = run_sessions(db, Build("orderstream --workers 2", proc, "orders", [],
                                             bench.rows),
                                   _many(port, bench.owners, count), seconds,
                                   interval=1.0 / OWNERS)
        finally:
            proc.terminate()
            proc.wait(15)
    data = _step(result, seconds) | {"sessions": count - count % OWNERS, "seconds": seconds,
                                     "full_gc_passes": passes.count,
                                     "full_gc_seconds": passes.seconds,
                                     "full_gc_passes_over_250ms": passes.over_quarter,
                                     "workers_2": _step(workers, seconds)}
    bench.results.record("sessions", data)
    sessions = data["sessions"]
    if sessions < GOAL_SESSIONS:
        bench.results.figure("sessions", f"ran {sessions:,} sessions, not issue 8's "
                             f"{GOAL_SESSIONS:,}", f"--scale-sessions {GOAL_SESSIONS}")
    judged = sessions >= GOAL_SESSIONS
    for label, run in (("", result), ("--workers 2: ", workers)):
        bench.results.figure("sessions", f"{label}{sessions:,} sessions open at once, failures",
                             f"{run.failures}", "0", run.failures == 0)
        bench.results.figure("sessions", f"{label}events missing", f"{run.missing}", "0",
                             run.missing == 0)
        bench.results.figure("sessions", f"{label}p99 at {sessions:,} frames/s",
                             f"{_ms(finite(run.p99))} ms", "<= 100 ms at 10,000 frames/s",
                             _le(finite(run.p99), 100.0) if judged else None)
        bench.results.figure("sessions", f"{label}server RSS", f"{run.rss / 2**20:,.0f} MiB",
                             "<= 1 GiB", run.rss <= 2**30)
        bench.results.figure("sessions", f"{label}server CPU per frame",
                             f"{run.cpu_us_per_frame:.1f} us")
    # Each full pass stops every socket; most come while the sessions open.
    bench.results.figure("sessions", "server's full GC passes, seconds in all (over 0.25 s)",
                         f"{passes.count:.0f}, {passes.seconds:.2f} s"
                         f" ({passes.over_quarter:.0f})")


def _many(port: int, owners: list[tuple[int, str]], count: int) -> list[Target]:
    """`count` sessions on the server at `port`, split between the owners."""
    return [Target(f"ws://127.0.0.1:{port}/ws", {"Authorization": f"Bearer {token}"}, True,
                   owner)
            for owner, token in owners for _ in range(count // OWNERS)]


# -- big statements and recovery -----------------------------------------------------------


def _batch(bench: Bench) -> None:
    rows = bench.sizes.batch_rows

    async def measure() -> dict[str, float]:
        async with await psycopg.AsyncConnection.connect(bench.url, autocommit=True) as db:
            return await batch_rates(db, bench.port, bench.staff[1], bench.owners[0][0], rows)

    rates = asyncio.run(measure())
    bench.results.record("batch", {"rows": rows, "events_per_s": rates})
    bench.results.figure("batch", f"{rows:,}-row UPDATE to one socket, plain frames",
                         f"{rates['plain']:,.0f} events/s")
    bench.results.figure("batch", "the same with \"batch\": true",
                         f"{rates['batch']:,.0f} events/s", ">= 200,000 events/s",
                         rates["batch"] >= 200_000)


def _replay(bench: Bench) -> None:
    rows = bench.sizes.batch_rows
    owner, token = bench.owners[0]

    async def measure() -> dict[str, float]:
        async with await psycopg.AsyncConnection.connect(bench.url, autocommit=True) as db:
            return await replay_rates(db, bench.port, bench.staff[1], token, owner, rows)

    rates = asyncio.run(measure())
    bench.results.record("replay", {"rows": rows, "events_per_s": rates})
    bench.results.figure("replay", f"resume over a {rows:,}-row UPDATE, staff \"*\"",
                         f"{rates['staff']:,.0f} events/s")
    bench.results.figure("replay", "the same for the orders' owner",
                         f"{rates['owner']:,.0f} events/s ="
                         f" {rates['owner'] / rates['staff']:.2f}x staff")


def _recovery(bench: Bench) -> None:
    owner, token = bench.owners[0]

    async def measure() -> list[tuple[float, float]]:
        async with await psycopg.AsyncConnection.connect(bench.url, autocommit=True) as db:
            ws = await _socket(bench.port, token)
            try:
                return await listener_loss(db, ws, bench.port, bench.rows[owner][1],
                                           bench.sizes.recovery_rounds)
            finally:
                await ws.close()

    rounds = asyncio.run(measure())
    bench.results.record("recovery", {"healthy_ms": [h for h, _ in rounds],
                                      "missed_write_delivered_ms": [d for _, d in rounds]})
    bench.results.figure("recovery", "listener killed: healthy again after (max)",
                         f"{max(h for h, _ in rounds):.0f} ms")
    bench.results.figure("recovery", "the missed write delivered after (max)",
                         f"{max(d for _, d in rounds):.0f} ms")


SERVED: dict[str, Callable[[Bench], None]] = {
    "fanout": _fanout, "sessions": _sessions, "recovery": _recovery, "batch": _batch,
    "replay": _replay}


# -- without a server: writer cost ---------------------------------------------------------


def _bulk(bench: Bench) -> None:
    rows = bench.sizes.bulk_rows
    record: dict[str, Any] = {"rows": rows}
    with psycopg.connect(bench.url, autocommit=True) as db:
        for state, vacuum, label in (("dead_rows", False, "the last round's dead rows"),
                                     ("vacuumed", True, "each table just vacuumed")):
            seconds, checkpoints = bench_fanout._bulk_update_seconds(
                db, bench.owners[0][0], rows, bench.sizes.rounds, vacuum)
            ours, plain = (sorted(v)[len(v) // 2] for v in seconds.values())
            record[state] = {"seconds": seconds, "ratio": ours / plain,
                             "checkpoints": checkpoints}
            bench.results.figure("bulk", f"{rows:,}-row UPDATE, ours / none, {label}",
                                 f"{ours:.3f} / {plain:.3f} s = {ours / plain:.2f}x",
                                 "<= 2.5x", ours / plain <= 2.5)
    bench.results.record("bulk", record)


def _writers(bench: Bench) -> None:
    s = bench.sizes
    data = run_writers(bench.url, bench.owners[0][0], s.writers, s.writer_seconds, s.rounds)
    bench.results.record("writers", data)
    mean = data["mean_tps"]
    bench.results.figure("writers", f"{s.writers} writers, tx/s ours / bare / none",
                         f"{mean['ours']:,.0f} / {mean['bare']:,.0f} / {mean['none']:,.0f}")
    bench.results.figure("writers", "ours / bare pg_notify trigger",
                         f"{data['ours_vs_bare']:.2f}x", ">= 0.85x",
                         data["ours_vs_bare"] >= 0.85)
    bench.results.figure("writers", "ours / no trigger", f"{data['ours_vs_none']:.2f}x")
    bench.results.figure("writers", "writers were", data["tool"].split(" (")[0].split(" -")[0])


# -- own servers: workers and quotes ------------------------------------------------------


def _workers(bench: Bench) -> None:
    s = bench.sizes
    data = run_workers(bench.url, bench.settings, bench.owners, bench.rows, s.workers_rate,
                       s.seconds)
    bench.results.record("workers", data)
    one = data["setups"][0]["frames_per_s"]
    for setup in data["setups"]:
        bench.results.figure(
            "workers", f"{setup['setup']}: frames/s delivered (written), p99",
            f"{setup['frames_per_s']:,.0f} ({setup['written_per_s']:,.0f}), "
            f"{_ms(setup['p99'])} ms")
        if setup is not data["setups"][0]:
            bench.results.figure("workers", f"{setup['setup']}: frames/s against one process",
                                 f"{setup['frames_per_s'] / one:.2f}x")
        verdict = ("yes" if setup["exactly_once"] else
                   f"FAIL: {setup['missing']} missing, {setup['duplicates']} repeated, "
                   f"{setup['resyncs']} resync, {setup['failures']} not opened")
        bench.results.figure(
            "workers", f"{setup['setup']}: {setup['sessions']} sessions got each event once",
            verdict, "exactly once", setup["exactly_once"])
        bench.results.figure("workers", f"{setup['setup']}: servers' CPU",
                             f"{setup['server_cores']:.2f} cores, "
                             f"{setup['cpu_us_per_frame']:.1f} us/frame")


def _quotes(bench: Bench) -> None:
    s = bench.sizes
    data = measure_quotes(bench.url, bench.settings, s.quote_sessions, rate=s.quote_rate,
                          seconds=s.seconds)
    data = {key: finite(value) if isinstance(value, float) else value
            for key, value in data.items()}
    bench.results.record("quotes", data)
    bench.results.figure("quotes", f"{data['sessions']:,} sessions, quote frames delivered",
                         f"{data['frames_per_s']:,.0f}/s")
    bench.results.figure("quotes", "sent of what an unconflated feed would send",
                         f"{data['sent_of_unconflated']:.0%}")
    bench.results.figure("quotes", "quote age p50 / p99",
                         f"{_ms(data['age_p50_ms'])} / {_ms(data['age_p99_ms'])} ms")
    bench.results.figure("quotes", "server CPU per quote frame",
                         f"{data['server_cpu_us_per_frame']:.1f} us")


UNSERVED: dict[str, Callable[[Bench], None]] = {
    "bulk": _bulk, "writers": _writers, "workers": _workers, "quotes": _quotes}
