"""`server.py bench --fanout` runs end to end against the naive build: both builds deliver
every frame to all 100 sessions at a low rate, and the report gives the CPU ratio."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import psycopg
import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_fanout_bench_reports_both_builds_with_nothing_missing(db_url: str) -> None:
    result = subprocess.run(
        [sys.executable, "server.py", "bench", "--fanout", "--rates", "1000", "--seconds", "0.5",
         "--latency-updates", "20", "--bulk-rows", "2000", "--scale-sessions", "40"],
        cwd=ROOT, env={**os.environ, "DATABASE_URL": db_url, "ORDERSTREAM_LOG_LEVEL": "warning"},
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {match.group(1): int(match.group(2)) for match in re.finditer(
        r"^\s+1,000 (orderstream|naive)\s+[\d.]+\s+[\d.]+\s+(\d+)\s", result.stdout, re.M)}
    assert rows == {"orderstream": 0, "naive": 0}, result.stdout
    assert "CPU per frame orderstream / naive" in result.stdout
    latency = re.findall(r"^\s+(orderstream|naive)\s+p50\s+[\d.]+ ms\s+p99\s+[\d.]+ ms\s+\(n=20\)",
                         result.stdout, re.M)
    assert latency == ["orderstream", "naive"], result.stdout
    assert re.search(r"with our triggers / without = [\d.]+x", result.stdout), result.stdout
    assert re.search(r"many sessions \(40 sessions.*\n\s+failures 0\s+missing 0\s",
                     result.stdout), result.stdout
    with psycopg.connect(db_url) as conn:
        # The naive build's table and the bench's users are gone.
        assert conn.execute("SELECT to_regclass('bench_naive_orders')").fetchone() == (None,)
        assert conn.execute("SELECT to_regclass('bench_plain_orders')").fetchone() == (None,)
        assert conn.execute("SELECT count(*) FROM users WHERE username LIKE 'bench_fan_%'"
                            ).fetchone() == (0,)
