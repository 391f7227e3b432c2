"""/metrics from prometheus-client (added up across `--workers`), and one log format for the
app and uvicorn (text or JSON)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path

import httpx
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ServerProcess, User, insert_order, open_socket


async def _families(server: ServerProcess) -> dict[str, dict[str, float]]:
    """{family: {sample name with labels: value}} from the server's /metrics."""
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(response.text):
        samples = families.setdefault(family.name, {})
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return families


async def test_metrics_count_events_frames_latency_and_the_process(
        own_server: ServerProcess, make_user, sql: psycopg.Connection) -> None:
    user: User = make_user()
    async with open_socket(own_server, user) as ws:
        await ws.subscribe_orders()
        insert_order(sql, user.id)
        await ws.recv_type("order")
        families = await _families(own_server)
    assert families["orderstream_events_received"]["orderstream_events_received_total"] >= 1
    assert families["orderstream_frames_sent"]["orderstream_frames_sent_total"] >= 1
    assert families["orderstream_sessions"]["orderstream_sessions"] == 1
    assert families["orderstream_listener_up"]["orderstream_listener_up"] == 1
    for name in ("orderstream_listener_reconnects", "orderstream_catch_ups",
                 "orderstream_resyncs_sent", "orderstream_forged_notifications"):
        assert name in families, name
    # The first frame of the process is always sampled.
    delivery = families["orderstream_delivery_seconds"]
    assert delivery["orderstream_delivery_seconds_count"] >= 1
    assert 0 <= delivery["orderstream_delivery_seconds_sum"] < 5
    assert families["process_resident_memory_bytes"]["process_resident_memory_bytes"] > 0


async def test_metrics_time_the_garbage_collector(own_server: ServerProcess,
                                                  make_user) -> None:
    user: User = make_user()
    async with contextlib.AsyncExitStack() as stack:
        # Objects that stay (each socket keeps about 190) are what makes the collector run:
        # 700 more than it has freed start a pass of the youngest generation.
        for _ in range(10):
            ws = await stack.enter_async_context(open_socket(own_server, user))
            await ws.subscribe_orders()
        # Passes reach the histogram with the next sync of the counters (every second).
        assert await _wait_for(own_server, "orderstream_gc_pause_seconds",
                               "orderstream_gc_pause_seconds_count{generation=0}", 1,
                               at_least=True) >= 1
        pauses = (await _families(own_server))["orderstream_gc_pause_seconds"]
    assert 0 < pauses["orderstream_gc_pause_seconds_sum{generation=0}"] < 5
    for generation in "12":  # a series from the start, even before its first pass
        assert f"orderstream_gc_pause_seconds_count{{generation={generation}}}" in pauses


async def _wait_for(server: ServerProcess, family: str, sample: str, want: float,
                    timeout: float = 8.0, at_least: bool = False) -> float:
    """Scrapes until `sample` reaches `want` (or passes it, `at_least`): counters arrive
    within the next sync (every second), the other worker's too under --workers."""
    deadline = time.monotonic() + timeout
    value = -1.0
    while time.monotonic() < deadline:
        value = (await _families(server)).get(family, {}).get(sample, -1.0)
        if value == want or (at_least and value >= want):
            return value
        await asyncio.sleep(0.2)
    return value


async def test_metrics_under_workers_add_up_every_process(
        db_url: str, tmp_path: Path, make_user, sql: psycopg.Connection) -> None:
    server = ServerProcess(db_url, tmp_path, workers=2)
    server.start()
    try:
        user: User = make_user()
        async with contextlib.AsyncExitStack() as stack:
            sockets = [await stack.enter_async_context(open_socket(server, user))
                       for _ in range(8)]
            for ws in sockets:
                await ws.subscribe_orders()
            insert_order(sql, user.id)
            for ws in sockets:
                await ws.recv_type("order")
            # Whichever worker answers the scrape, it counts both workers' sessions and frames.
            assert await _wait_for(server, "orderstream_sessions", "orderstream_sessions",
                                   8) == 8
            frames = await _wait_for(server, "orderstream_frames_sent",
                                     "orderstream_frames_sent_total", 16)
            # 8 `subscribed` acknowledgements and 8 events at least.
            assert frames == 16
            assert await _wait_for(server, "orderstream_listener_up",
                                   "orderstream_listener_up", 2) == 2
    finally:
        server.stop()


async def test_json_log_format_covers_uvicorn_and_the_app(db_url: str, tmp_path: Path) -> None:
    server = ServerProcess(db_url, tmp_path, extra_env={"ORDERSTREAM_LOG_FORMAT": "json",
                                                        "ORDERSTREAM_LOG_LEVEL": "info"})
    server.start()
    try:
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            assert (await client.get("/healthz")).status_code == 200
    finally:
        server.stop()
    records = []
    for line in (tmp_path / f"server-{server.port}.log").read_text().splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
        else:
            # The only plain lines are what the command prints for people, not log records.
            assert not line[:4].isdigit(), f"a log record in text format: {line!r}"
    loggers = {record["logger"] for record in records}
    assert "uvicorn.error" in loggers, loggers
    assert "uvicorn.access" in loggers, loggers
    assert all({"time", "level", "logger", "message"} <= record.keys() for record in records)


def test_an_unknown_log_format_is_refused_in_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.conftest import ROOT

    result = subprocess.run([sys.executable, str(ROOT / "server.py"), "serve"],
                            env={"PATH": "/usr/bin:/bin", "ORDERSTREAM_LOG_FORMAT": "xml",
                                 "ORDERSTREAM_DATA_DIR": str(tmp_path)},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "log_format" in result.stderr and "'xml'" in result.stderr
    assert "Traceback" not in result.stderr



async def test_refusals_are_counted_by_status(own_server: ServerProcess, make_user) -> None:
    user: User = make_user()
    oversized = b"{" + b" " * (70 * 1024) + b"}"  # past the 64 KiB body cap
    counted = []
    async with httpx.AsyncClient(base_url=own_server.base_url, headers=user.auth) as client:
        for _ in range(2):
            response = await client.post("/api/orders", content=oversized,
                                         headers={"Content-Type": "application/json"})
            assert response.status_code == 413
            families = await _families(own_server)
            counted.append(families["orderstream_http_refusals"]
                           ["orderstream_http_refusals_total{status=413}"])
    assert counted == [1, 2]
