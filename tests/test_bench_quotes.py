"""`server.py bench --quotes` runs end to end (small): sessions subscribed, quotes written and
delivered, the age percentiles reported, and the bench's user removed afterwards."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import psycopg
import pytest

from tests.conftest import ROOT
from tests.support.database import own_database


@pytest.mark.slow
def test_quotes_bench_reports_delivery_and_age(server_url: str) -> None:
    with own_database(server_url, "bench_quotes") as url:
        result = subprocess.run(
            [sys.executable, "server.py", "bench", "--quotes", "--sessions", "20",
             "--quote-rate", "50", "--seconds", "1"],
            cwd=ROOT, env={**os.environ, "DATABASE_URL": url, "ORDERSTREAM_LOG_LEVEL": "warning"},
            capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]
        out = result.stdout
        assert "20 sessions x 10 of 100 instruments subscribed" in out, out
        written = re.search(r"writer: (\d+) quotes", out)
        delivered = re.search(r"delivered: ([\d,]+) quote frames", out)
        assert written and delivered and int(written[1]) > 0, out
        assert int(delivered[1].replace(",", "")) > 0, out
        assert re.search(r"quote age at the client .* p50 [\d.]+ ms +p99 [\d.]+ ms", out), out
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM instruments WHERE symbol LIKE 'BQ%'"
                                ).fetchone() == (100,)
            assert conn.execute("SELECT count(*) FROM users WHERE username LIKE 'bench_quotes_%'"
                                ).fetchone() == (0,)
