"""`bench`'s results: the figures beside issue 8's goals (the table printed at the end), the
raw numbers (results.json) and the plots (PNG). The plots need matplotlib, from the optional
`bench` extra; without it the bench still runs, writes its numbers and says how to get them.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
LATENCY_PLOT = "latency_cdf.png"
FANOUT_PLOT = "fanout_p99.png"
PLOTS_HINT = "pip install -e '.[bench]'"


@dataclass
class Figure:
    """One line of the table: a figure, and issue 8's goal for it where there is one."""

    scenario: str
    label: str
    value: str
    goal: str = ""  # e.g. "<= 0.8x"
    met: bool | None = None  # None: no goal, or nothing to judge


@dataclass
class Results:
    """What a bench run measured: per scenario its raw numbers (or its error), and the
    figures for the table."""

    command: list[str]
    sizes: dict[str, Any]
    scenarios_run: list[str]
    machine: dict[str, Any] = field(default_factory=dict)
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    scenarios: dict[str, dict[str, Any]] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per scenario

    def record(self, scenario: str, data: dict[str, Any]) -> None:
        self.scenarios[scenario] = data

    def figure(self, scenario: str, label: str, value: str, goal: str = "",
               met: bool | None = None) -> None:
        self.figures.append(Figure(scenario, label, value, goal, met))

    def failed(self, scenario: str, error: str) -> None:
        self.scenarios[scenario] = {"error": error}
        self.figure(scenario, "FAILED", error)

    @property
    def errors(self) -> list[str]:
        return [name for name, data in self.scenarios.items() if "error" in data]

    def as_json(self) -> dict[str, Any]:
        finished = datetime.now(UTC)
        return {
            "command": self.command,
            "started": self.started.isoformat(timespec="seconds"),
            "finished": finished.isoformat(timespec="seconds"),
            "wall_seconds": round((finished - self.started).total_seconds(), 1),
            "machine": self.machine,
            "sizes": self.sizes,
            "scenarios_run": self.scenarios_run,
            "scenario_seconds": {name: round(s, 1) for name, s in self.seconds.items()},
            "scenarios": self.scenarios,
            "figures": [vars(f) for f in self.figures],
        }


def machine_info(url: str, database: str) -> dict[str, Any]:
    """CPUs, OS, Python, PostgreSQL, the commit: what a figure needs beside it to be read."""
    with psycopg.connect(url) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        full = conn.execute("SELECT version()").fetchone()
    return {
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "postgresql": version[0] if version else None,
        "postgresql_build": full[0] if full else None,
        "database": database,
        **_commit(),
    }


def _commit() -> dict[str, Any]:
    """The checkout's commit and whether it has changes; nothing outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,  # noqa: S607
                              text=True, timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],  # noqa: S607
                                cwd=ROOT, capture_output=True, text=True, timeout=10,
                                check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": head, "uncommitted_changes": bool(status.strip())}


def table(results: Results) -> str:
    """The figures, one a line, scenario by scenario, with the goal and whether it is met."""
    m = results.machine
    commit = m.get("commit", "")[:10] + (" + changes" if m.get("uncommitted_changes") else "")
    lines = [f"orderstream bench: {m.get('cpus')} CPUs {m.get('machine', '')}, PostgreSQL "
             f"{m.get('postgresql')} ({m.get('database')}), Python {m.get('python')}"
             + (f", commit {commit}" if commit else ""),
             f"  {'scenario':9} {'figure':50} {'value':>24}   issue 8 goal"]
    for f in results.figures:
        verdict = {True: "met", False: "NOT met", None: ""}[f.met]
        goal = f"{f.goal}: {verdict}" if f.goal and verdict else f.goal
        value = f.value if f.label != "FAILED" else ""
        label = f.label if f.label != "FAILED" else f"FAILED: {f.value}"
        lines.append(f"  {f.scenario:9} {label:50} {value:>24}   {goal}".rstrip())
    return "\n".join(lines)


def write(results: Results, folder: Path) -> list[str]:
    """results.json and the plots into `folder`; returns one line per thing to tell."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(
        json.dumps(_finite_numbers(results.as_json()), indent=1, allow_nan=False) + "\n")
    return write_plots(results.scenarios, folder)


def _finite_numbers(value: Any) -> Any:
    """`value` with every NaN or infinity (nothing measured) as null: JSON has neither."""
    if isinstance(value, float):
        return finite(value)
    if isinstance(value, dict):
        return {key: _finite_numbers(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_numbers(item) for item in value]
    return value


def finite(value: float | None) -> float | None:
    """A number for JSON: NaN and infinities (nothing measured) become null."""
    return value if value is not None and math.isfinite(value) else None


def write_plots(scenarios: dict[str, dict[str, Any]], folder: Path) -> list[str]:
    """latency_cdf.png and fanout_p99.png, for the scenarios that ran."""
    try:
        import matplotlib
    except ImportError:
        return [f"plots skipped: matplotlib is not installed ({PLOTS_HINT} draws them)"]
    matplotlib.use("Agg")  # files only: no display on servers and in CI
    from matplotlib import pyplot

    notes = []
    latency = (scenarios.get("latency") or scenarios.get("floor") or {}).get("samples_ms")
    if latency:
        _latency_cdf(pyplot, latency, folder / LATENCY_PLOT)
        notes.append(f"plot: {LATENCY_PLOT}")
    steps = scenarios.get("fanout", {}).get("steps")
    if steps:
        _fanout_p99(pyplot, steps, folder / FANOUT_PLOT)
        notes.append(f"plot: {FANOUT_PLOT}")
    return notes


CLOCK_TITLES = {"commit_ms": "commit returned -> received (ms)",
                "sent_ms": "statement sent -> received (ms)"}


def _latency_cdf(pyplot: Any, samples: dict[str, dict[str, list[float]]], path: Path) -> None:
    """One panel per clock (cli/bench_floor.py), a CDF per build and the floor in each."""
    figure, panels = pyplot.subplots(1, len(samples), figsize=(6 * len(samples), 4.5),
                                     squeeze=False)
    for axes, (clock, by_name) in zip(panels[0], samples.items(), strict=True):
        p99s = [0.0]
        for name, values in by_name.items():
            if not values:
                continue
            ordered = sorted(values)
            fractions = [(i + 1) / len(ordered) for i in range(len(ordered))]
            axes.step(ordered, fractions, where="post", label=f"{name} (n={len(ordered)})")
            p99s.append(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))])
        axes.set_xlabel(CLOCK_TITLES.get(clock, clock) + ", cut past 1.5x the highest p99")
        axes.set_ylabel("fraction of events")
        axes.set_ylim(0, 1.01)
        # A few outliers of several ms would squeeze the body of the curves to one edge.
        axes.set_xlim(0, max(p99s) * 1.5 or None)
        axes.grid(True, alpha=0.3)
        axes.legend(loc="lower right")
    figure.suptitle("Single-event latency, interleaved in one run")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def _fanout_p99(pyplot: Any, steps: list[dict[str, Any]], path: Path) -> None:
    figure, axes = pyplot.subplots(figsize=(8, 5))
    for build in dict.fromkeys(step["build"] for step in steps):
        mine = sorted((s for s in steps if s["build"] == build and s["p99"] is not None),
                      key=lambda s: s["rate"])
        axes.plot([s["frames_per_s"] for s in mine], [s["p99"] for s in mine], marker="o",
                  label=build)
    axes.axhline(50, color="grey", linestyle="--", linewidth=1, label="held: p99 <= 50 ms")
    axes.set_xlabel("frames/s delivered (100 sessions)")
    axes.set_ylabel("p99 trigger -> frame received (ms)")
    axes.set_title("Fan-out steps, interleaved in one run")
    # Log scale: a step past capacity is seconds, and the 50 ms line must stay readable.
    axes.set_yscale("log")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def command_line() -> list[str]:
    """How this bench was started, as typed (the script path relative to the checkout)."""
    return [Path(sys.executable).name, *sys.argv]
