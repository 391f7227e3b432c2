"""The flags of `server.py bench`: which scenarios run, and at what sizes.

Standard library only: `server.py bench --help` must stay fast and work on an install
without the bench's optional extra.
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

# Name -> what it measures, in the order the suite runs them (the help lists them so).
# Recovery comes before batch: the batch scenario's big statements keep the server's listener
# busy for a while after their last frame.
SCENARIOS: dict[str, str] = {
    "floor": "raw NOTIFY -> asyncpg callback on a scratch channel: PostgreSQL's own latency",
    "latency": "single event, commit returned -> frame received, orderstream against the"
               " naive build (interleaved with the floor)",
    "fanout": "100 sessions (2 owners x 50) at rising frames/s, orderstream against the"
              " naive build, step by step",
    "sessions": "N sessions at once (issue 8: 10,000), one update per owner per second",
    "recovery": "the server's LISTEN connection killed: time to healthy and to the missed"
                " write",
    "batch": "one big UPDATE to one staff socket, plain frames against \"batch\": true",
    "replay": "sockets away during an UPDATE of one owner's --batch-rows orders resume with"
              " `after` and \"batch\": true: staff \"*\" against the owner",
    "bulk": "a big UPDATE with our triggers against the same table without triggers",
    "writers": "8 concurrent single-row writers: ours against one bare pg_notify row trigger"
               " and against no trigger",
    "workers": "the fan-out workload on one process, on `serve --workers 2` and on two"
               " `serve` processes; every session gets every event exactly once",
    "quotes": "market data: sessions on 10 of 100 instruments each, quotes conflated",
}


@dataclass(frozen=True)
class Sizes:
    """How big each scenario is. The defaults finish in under 5 minutes on 2 CPUs."""

    latency_updates: int = 2000  # per build (and the floor), interleaved: p99 is the 20th
    # worst, where with 500 (the 5th) one scheduler hiccup moved the ratio from 1.0x to 1.4x
    rates: tuple[int, ...] = (10_000, 20_000, 40_000, 50_000)  # fan-out steps, frames/s
    seconds: float = 2.0  # of writing per fan-out step and build, workers setup, quotes
    scale_sessions: int = 10_000  # the sessions scenario
    batch_rows: int = 100_000
    bulk_rows: int = 50_000
    rounds: int = 3  # interleaved rounds of bulk and writers
    writers: int = 8
    writer_seconds: float = 3.0  # per round and table
    workers_rate: int = 20_000  # frames/s offered to each setup of the workers scenario
    recovery_rounds: int = 5
    quote_sessions: int = 1000
    quote_rate: float = 1000.0


DEFAULT_SIZES = Sizes()
# `bench --smoke`: every scenario, tiny, to check that the bench works (not how fast).
SMOKE_SIZES = Sizes(latency_updates=20, rates=(5000,), seconds=0.5, scale_sessions=40,
                    batch_rows=2000, bulk_rows=2000, rounds=1, writer_seconds=0.5,
                    workers_rate=5000, recovery_rounds=2, quote_sessions=20, quote_rate=50.0)


def scenario_list(text: str) -> list[str]:
    """argparse type: comma-separated scenario names, each one of SCENARIOS."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown scenario {', '.join(map(repr, unknown)) or repr(text)}; expected some of "
            f"{', '.join(SCENARIOS)}")
    return names


def rate_list(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated frames/s, each above 0."""
    try:
        rates = tuple(int(rate) for rate in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None
    if not rates or min(rates) <= 0:
        raise argparse.ArgumentTypeError(f"rates must be above 0, got {text!r}")
    return rates


def add_bench_flags(p: argparse.ArgumentParser,
                    positive: Callable[[type], Callable[[str], Any]]) -> None:
    """The `bench` command's flags; `positive(int)` and `positive(float)` are the argparse
    types of server.py for numbers above zero. Size flags default to None: the suite's
    defaults (or --smoke's) apply unless given; --fanout and --quotes keep their own."""
    # Written out line by line: the scenarios read best as a list.
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = "\n".join([
        "Run the benchmark scenarios (all of them by default: under 5 minutes on 2 CPUs), print",
        "a table of the figures beside issue 8's goals, and write results.json (and the plots,",
        "with matplotlib: pip install -e '.[bench]') to a results folder. docs/benchmarks.md",
        "has the details.",
        "",
        "scenarios, in the order they run:",
        *(textwrap.fill(what, 90, initial_indent=f"  {name:9} ", subsequent_indent=" " * 12)
          for name, what in SCENARIOS.items())])
    pick = p.add_argument_group("what to run")
    pick.add_argument("--only", type=scenario_list, metavar="LIST",
                      help=f"only these scenarios, comma-separated: {','.join(SCENARIOS)}")
    pick.add_argument("--skip", type=scenario_list, metavar="LIST",
                      help="every scenario but these")
    pick.add_argument("--smoke", action="store_true",
                      help="every scenario (or --only's) at tiny sizes, in about a minute: "
                           "checks that the bench works, not how fast")
    pick.add_argument("--out", metavar="DIR",
                      help="results folder (default <data_dir>/bench/<UTC time>; with --smoke, "
                           "a temporary folder)")
    pick.add_argument("--fanout", action="store_true",
                      help="instead: only the fan-out report of earlier versions (100 sessions "
                           "at rising frames/s against the naive build, single-event latency, "
                           "the big UPDATE, --scale-sessions), printed, no results folder")
    pick.add_argument("--quotes", action="store_true",
                      help="instead: only the market-data report, printed, no results folder")
    size = p.add_argument_group("sizes (defaults: the full run's; --smoke's are tiny)")
    positive_int, positive_float = positive(int), positive(float)
    size.add_argument("--latency-updates", "--updates", dest="latency_updates",
                      type=positive_int, metavar="N",
                      help=f"latency, floor: single-row updates per build "
                           f"(default {DEFAULT_SIZES.latency_updates}; --fanout: 300)")
    size.add_argument("--rates", type=rate_list, metavar="LIST",
                      help="fanout: frames/s steps, comma-separated (default "
                           + ",".join(map(str, DEFAULT_SIZES.rates)) + ")")
    size.add_argument("--seconds", type=positive_float, metavar="S",
                      help=f"fanout, workers: seconds of writing per step and build; quotes: "
                           f"seconds of writing (default {DEFAULT_SIZES.seconds:g}; --fanout "
                           "and --quotes: 3)")
    size.add_argument("--scale-sessions", type=positive_int, metavar="N",
                      help=f"sessions: how many at once (default "
                           f"{DEFAULT_SIZES.scale_sessions}); with --fanout: also run them")
    size.add_argument("--batch-rows", type=positive_int, metavar="N",
                      help=f"batch and replay: rows of the UPDATE (default"
                           f" {DEFAULT_SIZES.batch_rows})")
    size.add_argument("--bulk-rows", type=positive_int, metavar="N",
                      help=f"bulk: rows of the UPDATE (default {DEFAULT_SIZES.bulk_rows})")
    size.add_argument("--rounds", type=positive_int, metavar="N",
                      help=f"bulk, writers: interleaved rounds (default {DEFAULT_SIZES.rounds})")
    size.add_argument("--writers", type=positive_int, metavar="N",
                      help=f"writers: concurrent writer connections (default "
                           f"{DEFAULT_SIZES.writers})")
    size.add_argument("--writer-seconds", type=positive_float, metavar="S",
                      help=f"writers: seconds per round and table (default "
                           f"{DEFAULT_SIZES.writer_seconds:g})")
    size.add_argument("--workers-rate", type=positive_int, metavar="N",
                      help=f"workers: frames/s offered to each setup (default "
                           f"{DEFAULT_SIZES.workers_rate})")
    size.add_argument("--recovery-rounds", type=positive_int, metavar="N",
                      help=f"recovery: times the listener is killed (default "
                           f"{DEFAULT_SIZES.recovery_rounds})")
    size.add_argument("--sessions", type=positive_int, metavar="N",
                      help=f"quotes: sessions (default {DEFAULT_SIZES.quote_sessions})")
    size.add_argument("--quote-rate", type=positive_float, metavar="N",
                      help=f"quotes: quotes written per second (default "
                           f"{DEFAULT_SIZES.quote_rate:g})")


# Flag name (argparse dest) -> Sizes field, where they differ.
_FLAG_FIELDS = {"sessions": "quote_sessions"}


def sizes_from_args(args: argparse.Namespace) -> Sizes:
    """The suite's sizes: --smoke's or the defaults, then every size flag given."""
    base = SMOKE_SIZES if args.smoke else DEFAULT_SIZES
    names = {field.name for field in fields(Sizes)}
    given = {}
    for dest, value in vars(args).items():
        name = _FLAG_FIELDS.get(dest, dest)
        if name in names and value is not None:
            given[name] = value
    return replace(base, **given)


def scenarios_from_args(args: argparse.Namespace) -> list[str]:
    """The scenarios to run, in the suite's order."""
    chosen = set(args.only or SCENARIOS) - set(args.skip or ())
    return [name for name in SCENARIOS if name in chosen]
