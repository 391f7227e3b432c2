"""`server.py bench --smoke` runs every scenario at tiny sizes and writes its results folder:
the table, results.json with every scenario's numbers, the two plots. It checks that the bench
works, never how fast: no figure here is compared with a goal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from cli.bench_options import SCENARIOS, SMOKE_SIZES
from cli.bench_report import FANOUT_PLOT, LATENCY_PLOT, PLOTS_HINT, write_plots
from server import _parser
from tests.conftest import ROOT
from tests.support.database import own_database

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_smoke_bench_runs_every_scenario_and_writes_its_results(server_url: str,
                                                                tmp_path: Path) -> None:
    out = tmp_path / "results"
    # A database of its own: the recovery scenario kills the listeners of its database.
    with own_database(server_url, "bench_smoke") as url:
        result = subprocess.run(
            [sys.executable, "server.py", "bench", "--smoke", "--out", str(out)],
            cwd=ROOT, env={**os.environ, "DATABASE_URL": url, "ORDERSTREAM_LOG_LEVEL": "warning"},
            capture_output=True, text=True, timeout=280)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
        with psycopg.connect(url) as conn:
            # Every scratch table, function and user is gone.
            for table in ("bench_naive_orders", "bench_plain_orders", "bench_writers_bare",
                          "bench_writers_plain"):
                assert conn.execute("SELECT to_regclass(%s)", (table,)).fetchone() == (None,)
            assert conn.execute("SELECT count(*) FROM pg_proc WHERE proname LIKE 'bench_%'"
                                ).fetchone() == (0,)
            assert conn.execute("SELECT count(*) FROM users WHERE username LIKE 'bench_%'"
                                ).fetchone() == (0,)
            assert conn.execute("SELECT count(*) FROM orders").fetchone() == (0,)

    printed = result.stdout
    assert "issue 8 goal" in printed and "FAILED" not in printed, printed
    for scenario in SCENARIOS:
        assert f"\n  {scenario} " in printed, (scenario, printed)
    assert printed.rstrip().endswith(f"results in {out}"), printed[-500:]

    data = json.loads((out / "results.json").read_text())
    assert data["scenarios_run"] == list(SCENARIOS)
    assert set(data["scenarios"]) == set(SCENARIOS)
    assert [name for name, s in data["scenarios"].items() if "error" in s] == []
    machine = data["machine"]
    assert machine["cpus"] >= 1 and machine["python"] and machine["postgresql"]
    assert "--smoke" in data["command"]
    assert data["sizes"]["latency_updates"] == SMOKE_SIZES.latency_updates
    s = data["scenarios"]

    updates = SMOKE_SIZES.latency_updates
    for clock in ("commit_ms", "sent_ms"):
        assert {name: len(v) for name, v in s["latency"]["samples_ms"][clock].items()} == {
            "floor": updates, "orderstream": updates, "naive": updates}
        assert len(s["floor"]["samples_ms"][clock]["floor"]) == updates
        assert s["latency"]["summary_ms"][clock]["orderstream"]["p99"] >= 0

    steps = s["fanout"]["steps"]
    assert sorted((step["build"], step["rate"]) for step in steps) == sorted(
        (build, rate) for build in ("orderstream", "naive") for rate in SMOKE_SIZES.rates)
    for step in steps:
        assert step["frames"] > 0 and step["missing"] == 0 and step["failures"] == 0, step
        assert step["p99"] is not None and step["cpu_us_per_frame"] > 0, step

    sessions = s["sessions"]
    assert sessions["sessions"] == SMOKE_SIZES.scale_sessions
    assert sessions["failures"] == 0 and sessions["missing"] == 0 and sessions["frames"] > 0
    assert sessions["rss_bytes"] > 0
    # The same sessions on `serve --workers 2`: memory summed over its processes, which
    # hold more than the supervisor alone.
    workers = sessions["workers_2"]
    assert workers["build"] == "orderstream --workers 2"
    assert workers["failures"] == 0 and workers["missing"] == 0 and workers["frames"] > 0
    assert workers["rss_bytes"] > sessions["rss_bytes"]

    assert s["batch"]["rows"] == SMOKE_SIZES.batch_rows
    assert s["batch"]["events_per_s"]["plain"] > 0 and s["batch"]["events_per_s"]["batch"] > 0
    assert s["replay"]["rows"] == SMOKE_SIZES.batch_rows
    assert s["replay"]["events_per_s"]["staff"] > 0 and s["replay"]["events_per_s"]["owner"] > 0
    assert len(s["recovery"]["healthy_ms"]) == SMOKE_SIZES.recovery_rounds
    assert len(s["recovery"]["missed_write_delivered_ms"]) == SMOKE_SIZES.recovery_rounds
    for state in ("dead_rows", "vacuumed"):
        bulk = s["bulk"][state]
        assert [len(v) for v in bulk["seconds"].values()] == [SMOKE_SIZES.rounds] * 2
        assert bulk["ratio"] > 0

    writers = s["writers"]
    assert writers["writers"] == SMOKE_SIZES.writers
    assert all(len(v) == SMOKE_SIZES.rounds and min(v) > 0 for v in writers["tps"].values())
    assert writers["ours_vs_bare"] > 0 and writers["ours_vs_none"] > 0

    setups = s["workers"]["setups"]
    assert [setup["setup"] for setup in setups] == ["one process", "--workers 2",
                                                    "two processes"]
    for setup in setups:
        assert setup["exactly_once"] and setup["frames"] > 0, setup
        assert setup["sessions_exactly_once"] == setup["sessions"] == 100, setup

    quotes = s["quotes"]
    assert quotes["sessions"] == SMOKE_SIZES.quote_sessions
    assert quotes["quotes_written"] > 0 and quotes["frames_delivered"] > 0
    assert quotes["server_cpu_us_per_frame"] > 0

    for plot in (LATENCY_PLOT, FANOUT_PLOT):
        assert (out / plot).read_bytes()[:8] == PNG_SIGNATURE, plot
        assert f"plot: {plot}" in printed


def test_without_matplotlib_the_plots_are_skipped_with_the_way_to_get_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    samples = {"commit_ms": {"floor": [0.1], "orderstream": [0.2]}}
    notes = write_plots({"latency": {"samples_ms": samples}}, tmp_path)
    assert notes == [f"plots skipped: matplotlib is not installed ({PLOTS_HINT} draws them)"]
    assert list(tmp_path.iterdir()) == []


def test_scenario_and_size_flags() -> None:
    from cli.bench_options import DEFAULT_SIZES, scenarios_from_args, sizes_from_args

    parse = _parser().parse_args
    everything = parse(["bench"])
    assert scenarios_from_args(everything) == list(SCENARIOS)
    assert sizes_from_args(everything) == DEFAULT_SIZES
    picked = parse(["bench", "--only", "writers,floor", "--smoke", "--rates", "7000",
                    "--updates", "9", "--sessions", "30"])
    assert scenarios_from_args(picked) == ["floor", "writers"]  # the suite's order
    sizes = sizes_from_args(picked)
    assert (sizes.rates, sizes.latency_updates, sizes.quote_sessions) == ((7000,), 9, 30)
    assert sizes.seconds == SMOKE_SIZES.seconds
    assert scenarios_from_args(parse(["bench", "--skip", "sessions,quotes"])) == [
        name for name in SCENARIOS if name not in ("sessions", "quotes")]


def test_an_unknown_scenario_is_refused_with_the_known_ones(capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    with pytest.raises(SystemExit) as exited:
        _parser().parse_args(["bench", "--only", "floor,fanuot"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "unknown scenario 'fanuot'" in err and ",".join(SCENARIOS).replace(",", ", ") in err


def test_a_results_folder_that_cannot_be_written_is_refused_before_measuring(
        server_url: str, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with own_database(server_url, "bench_unwritable") as url:
        result = subprocess.run(
            [sys.executable, "server.py", "bench", "--smoke", "--out", str(blocker / "results")],
            cwd=ROOT, env={**os.environ, "DATABASE_URL": url, "ORDERSTREAM_LOG_LEVEL": "warning"},
            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip() == (f"server.py bench: error: cannot write the results to"
                                      f" {blocker / 'results'}: Not a directory")
    assert "Traceback" not in result.stderr and "orderstream bench" not in result.stdout
