"""Measure the dashboard in a real Chromium: one user with 10,000 orders, 200 SQL updates/s.

Not a test (pytest does not collect it). It creates a scratch database on the PostgreSQL server
named by DATABASE_URL (default postgresql://postgres@127.0.0.1/postgres), starts `server.py serve`
on it, drives Debian's chromium, prints the numbers as Markdown for docs/benchmarks.md, and drops
the database. Usage:

    DATABASE_URL=postgresql://postgres@127.0.0.1/postgres .venv/bin/python tests/perf_dashboard.py
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import secrets
import statistics
import sys
import tempfile
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from playwright.async_api import async_playwright  # noqa: E402

from cli.users import create_user  # noqa: E402
from db.embedded import database_url  # noqa: E402
from db.migrate import migrate  # noqa: E402
from tests.conftest import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    FAST_PASSWORDS,
    ServerProcess,
    User,
    browser_login,
)

# In the page before its scripts: when the first order rows appear, frames (rAF), long tasks,
# and the commit-to-arrival latency of every order event (the same clock the page's meter uses).
PERF_JS = """
(() => {
  const perf = window.__perf = {
    firstRowsAt: null, start: performance.now(), frames: [], longTasks: [], latencies: [],
    reset() {
      this.start = performance.now();
      this.frames = []; this.longTasks = []; this.latencies = [];
    },
  };
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) perf.longTasks.push([e.startTime, e.duration]);
  }).observe({ type: 'longtask', buffered: true });
  const tick = (t) => { perf.frames.push(t); requestAnimationFrame(tick); };
  requestAnimationFrame(tick);
  const NativeSocket = window.WebSocket;
  window.WebSocket = class extends NativeSocket {
    constructor(...args) {
      super(...args);
      this.addEventListener('message', (msg) => {
        const at = performance.timeOrigin + performance.now();
        const frame = JSON.parse(msg.data);
        if (frame.type === 'order') perf.latencies.push(at - Number(frame.ts));
      });
    }
  };
  document.addEventListener('DOMContentLoaded', () => {
    const body = document.querySelector('#orders tbody');
    if (!body) return;
    const seen = new MutationObserver(() => {
      if (body.rows.length && perf.firstRowsAt === null) {
        perf.firstRowsAt = performance.now();
        seen.disconnect();
      }
    });
    seen.observe(body, { childList: true });
  });
})();
"""

COLLECT_JS = """() => {
  const p = window.__perf;
  const frames = p.frames.filter((t) => t >= p.start);
  const gaps = frames.slice(1).map((t, i) => t - frames[i]);
  const tasks = p.longTasks.filter(([t]) => t >= p.start).map(([, d]) => d);
  const text = (sel) => document.querySelector(sel).textContent;
  return {
    seconds: (performance.now() - p.start) / 1000, frames: frames.length, gaps, tasks,
    latencies: p.latencies,
    meterP50: text('#latency [data-p50]'), meterP99: text('#latency [data-p99]'),
    heapMB: performance.memory ? performance.memory.usedJSHeapSize / 1e6 : null,
    rows: document.querySelectorAll('#orders tbody tr').length,
    monitorRows: document.querySelectorAll('#monitor tbody tr').length,
  };
}"""

INSTRUMENTS = ["ACME", "GLOBEX", "INITECH", "HOOLI", "UMBRELLA", "STARK", "WAYNE", "TYRELL"]


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


class Writer(threading.Thread):
    """A psql-like writer: one autocommit UPDATE per event, paced at `rate` per second."""

    def __init__(self, url: str, ids: list[int], rate: float) -> None:
        super().__init__(daemon=True)
        self.url, self.ids, self.rate = url, ids, rate
        self.stop_event = threading.Event()
        self.done = 0
        self.elapsed = 0.0

    def run(self) -> None:
        rng = random.Random(7)
        steps = [Decimal("0.01"), Decimal("-0.01")]
        with psycopg.connect(self.url, autocommit=True) as conn:
            start = time.monotonic()
            while not self.stop_event.is_set():
                delay = start + self.done / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                conn.execute("UPDATE orders SET price = price + %s WHERE id = %s",
                             (rng.choice(steps), rng.choice(self.ids)))
                self.done += 1
            self.elapsed = time.monotonic() - start

    def stop(self) -> float:
        self.stop_event.set()
        self.join()
        return self.done / self.elapsed


async def time_to_first_rows(browser: Any, server: ServerProcess, user: User,
                             path: str = "/") -> dict[str, float]:
    """A fresh context: log in (or open `path` logged in) and time the first order rows."""
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        page = await context.new_page()
        await page.add_init_script(PERF_JS)
        started = time.monotonic()
        await browser_login(page, server, user)
        if path != "/":
            started = time.monotonic()
            await page.goto(server.base_url + path)
        await page.wait_for_function("() => window.__perf.firstRowsAt !== null", timeout=30_000)
        wall = (time.monotonic() - started) * 1000
        timing = await page.evaluate("""() => ({
          firstRows: window.__perf.firstRowsAt,
          api: performance.getEntriesByType('resource')
                 .filter((e) => e.name.includes('/api/orders?')).map((e) => e.duration)[0] ?? null,
          rows: document.querySelectorAll('#orders tbody tr').length })""")
        return {"wall": wall, **timing}
    finally:
        await context.close()


async def stream_phase(browser: Any, server: ServerProcess, user: User, url: str,
                       ids: list[int], rate: float, seconds: float) -> dict[str, Any]:
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        page = await context.new_page()
        await page.add_init_script(PERF_JS)
        await browser_login(page, server, user)
        await page.wait_for_function(
            "() => document.getElementById('conn-status').textContent === 'live'"
            " && document.querySelectorAll('#orders tbody tr').length > 0", timeout=30_000)
        writer = Writer(url, ids, rate)
        writer.start()
        try:
            return await stream_window(page, writer, seconds)
        finally:
            writer.stop()
    finally:
        await context.close()


async def stream_window(page: Any, writer: Writer, seconds: float) -> dict[str, Any]:
    """The window opens with the first event on the page and lasts `seconds`."""
    await page.wait_for_function("() => window.__perf.latencies.length > 0", timeout=10_000)
    await page.evaluate("window.__perf.reset()")
    await asyncio.sleep(seconds)
    result = await page.evaluate(COLLECT_JS)
    result["rate"] = writer.stop()
    return result


def summarize(name: str, r: dict[str, Any]) -> list[str]:
    gaps, tasks, lat = r["gaps"], r["tasks"], r["latencies"]
    return [
        f"| {name} | {r['rate']:.0f}/s | {len(lat) / r['seconds']:.0f}/s"
        f" | {r['frames'] / r['seconds']:.0f} | {max(gaps):.0f} | {sum(g > 50 for g in gaps)}"
        f" | {len(tasks)} ({sum(tasks):.0f} ms, max {max(tasks, default=0):.0f})"
        f" | {pct(lat, 50):.1f} / {pct(lat, 99):.1f} / {max(lat):.1f}"
        f" | {r['meterP50']} / {r['meterP99']} | {r['heapMB']:.1f} |",
    ]


async def measure(url: str, orders: int, rate: float, seconds: float) -> str:
    password = secrets.token_urlsafe(12)
    username = "perf_trader"
    user_id = create_user(url, FAST_PASSWORDS, username, password, False)
    user = User(user_id, username, password, "", False)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO orders (owner_id, instrument, side, quantity, price)"
            " SELECT %s, (%s::text[])[1 + i %% 8], CASE WHEN i %% 3 = 0 THEN 'sell' ELSE 'buy' END,"
            " 1 + i %% 500, 50 + (i %% 1000) / 10.0 FROM generate_series(1, %s) AS i",
            (user_id, INSTRUMENTS, orders))
        ids = [row[0] for row in conn.execute(
            "SELECT id FROM orders WHERE owner_id = %s ORDER BY id", (user_id,))]
        conn.execute("VACUUM ANALYZE orders")
    visible = ids[-25:]  # the first page: the dashboard sorts by -id

    with tempfile.TemporaryDirectory(prefix="orderstream-perf-") as data_dir:
        server = ServerProcess(url, Path(data_dir))
        server.start()
        try:
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(executable_path=str(CHROMIUM),
                                                           args=CHROMIUM_ARGS)
                await time_to_first_rows(browser, server, user)  # warm-up (server caches, JIT)
                cold = [await time_to_first_rows(browser, server, user) for _ in range(5)]
                again = [await time_to_first_rows(browser, server, user, "/?size=25")
                         for _ in range(3)]
                big = [await time_to_first_rows(browser, server, user, "/?size=250")
                       for _ in range(3)]
                spread = await stream_phase(browser, server, user, url, ids, rate, seconds)
                on_page = await stream_phase(browser, server, user, url, visible, rate, seconds)
                # Time to first rows while another writer keeps 200 events/s going.
                writer = Writer(url, ids, rate)
                writer.start()
                try:
                    busy = [await time_to_first_rows(browser, server, user) for _ in range(3)]
                finally:
                    writer.stop()
                await browser.close()
        finally:
            server.stop()

    med = statistics.median
    lines = [
        f"{orders:,} orders for one user, {rate:.0f} SQL updates/s (one autocommit UPDATE each),"
        f" {seconds:.0f} s per run; server, PostgreSQL, writer and headless Chromium on one"
        f" {os.cpu_count()}-CPU machine ({platform.machine()}).",
        "",
        "Time to first rows (median of 5 or 3 fresh browser contexts). *Wall*: from opening"
        " /login (or from `goto` when already logged in) to the first order row in the DOM, as"
        " the test driver sees it. *Page clock*: navigation start to first rows; after the login"
        " form that navigation is the POST /login and its redirect. Either way the page opens the"
        " WebSocket, waits for `subscribed`, then fetches the page of orders:",
        "",
        "| page | wall | page clock | GET /api/orders | rows |",
        "|---|---|---|---|---|",
        f"| 25 rows, straight after the login form | {med([c['wall'] for c in cold]):.0f} ms"
        f" | {med([c['firstRows'] for c in cold]):.0f} ms | {med([c['api'] for c in cold]):.0f} ms"
        f" | {cold[0]['rows']} |",
        f"| 25 rows (`/`, logged in) | {med([c['wall'] for c in again]):.0f} ms"
        f" | {med([c['firstRows'] for c in again]):.0f} ms"
        f" | {med([c['api'] for c in again]):.0f} ms | {again[0]['rows']} |",
        f"| 250 rows (`/?size=250`, logged in) | {med([c['wall'] for c in big]):.0f} ms"
        f" | {med([c['firstRows'] for c in big]):.0f} ms | {med([c['api'] for c in big]):.0f} ms"
        f" | {big[0]['rows']} |",
        f"| 25 rows, while {rate:.0f} events/s stream | {med([c['wall'] for c in busy]):.0f} ms"
        f" | {med([c['firstRows'] for c in busy]):.0f} ms | {med([c['api'] for c in busy]):.0f} ms"
        f" | {busy[0]['rows']} |",
        "",
        "While the stream runs (fps from requestAnimationFrame; jank = frame gaps over 50 ms;"
        " long tasks from the Long Tasks API; latency = trigger `ts` -> WebSocket message in the"
        " page, all events in the window, then the page's own meter over its last 1000):",
        "",
        "| updates hit | written | received | fps | worst frame gap ms | gaps > 50 ms"
        " | long tasks | latency p50 / p99 / max ms | `#latency` p50 / p99 | JS heap MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *summarize(f"random orders of {orders:,}", spread),
        *summarize("only the 25 rows on screen", on_page),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    if not CHROMIUM.exists():
        sys.exit("needs Debian's chromium (apt-get install -y chromium)")
    server_url = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1/postgres")
    name = f"orderstream_perf_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = database_url(server_url, name)
        migrate(url)
        print(asyncio.run(measure(url, args.orders, args.rate, args.seconds)))
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
