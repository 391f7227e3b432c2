"""Shared fixtures: a fresh database per test run, the real server on a real port, users,
and real WebSocket / HTTP clients."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import websockets

from cli.users import create_token, create_user
from db.embedded import database_url
from db.migrate import migrate
from web.passwords import Passwords

ROOT = Path(__file__).resolve().parent.parent
# Cheap hashes: the tests create many users; verifying reads the cost from the hash.
FAST_PASSWORDS = Passwords(time_cost=1, memory_cost_kib=8192)
_names = itertools.count(1)


def _server_url() -> tuple[str, Any]:
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        return url, None
    from db.embedded import EmbeddedPostgres

    embedded = EmbeddedPostgres(ROOT / "var" / "pg")
    return embedded.start(), embedded




@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """The PostgreSQL server the tests use (TEST_DATABASE_URL or the embedded one)."""
    url, embedded = _server_url()
    yield url
    if embedded is not None:
        embedded.stop()


@pytest.fixture(scope="session")
def db_url(server_url: str) -> Iterator[str]:
    """A database created (and migrated) for this test run, dropped at the end."""
    name = f"orderstream_test_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = database_url(server_url, name)
    migrate(url)
    yield url
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalAddress:
    """The URLs of something serving orderstream on 127.0.0.1:`port` (a server, a proxy)."""

    port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"


async def healthz_until(address: LocalAddress, says: Callable[[dict[str, Any]], bool],
                        timeout: float = 30.0) -> dict[str, Any]:
    """Until /healthz's body satisfies `says`; that body."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=address.base_url, timeout=5) as http:
        while True:
            body = (await http.get("/healthz")).json()
            if says(body):
                return body
            assert time.monotonic() < deadline, f"/healthz stayed {body}"
            await asyncio.sleep(0.05)


@dataclass
class ServerProcess(LocalAddress):
    """`python server.py serve` in a subprocess, as a user would run it."""

    db_url: str
    data_dir: Path
    port: int = 0
    workers: int = 1
    process: subprocess.Popen[bytes] | None = None
    extra_env: dict[str, str] | None = None

    def start(self, timeout: float = 30.0) -> None:
        self.port = self.port or free_port()
        env = {
            **os.environ,
            "DATABASE_URL": self.db_url,
            "ORDERSTREAM_DATA_DIR": str(self.data_dir),
            "ORDERSTREAM_LOG_LEVEL": "warning",
            **(self.extra_env or {}),
        }
        with (self.data_dir / f"server-{self.port}.log").open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(ROOT / "server.py"), "serve", "--port", str(self.port),
                 "--workers", str(self.workers)],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}: {self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base_url + "/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"server did not become healthy: {self.log()}")

    def log(self) -> str:
        path = self.data_dir / f"server-{self.port}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        self.process = None
        return code


@pytest.fixture(scope="session")
def server(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The real server on a real port, shared by the tests of this run."""
    proc = ServerProcess(db_url, tmp_path_factory.mktemp("server"))
    proc.start()
    yield proc
    proc.stop()


@dataclass(frozen=True)
class User:
    id: int
    username: str
    password: str
    token: str
    is_staff: bool

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture(scope="session")
def make_user(db_url: str):  # type: ignore[no-untyped-def]
    """make_user(staff=False) -> a new user with a password and an API token."""

    def make(staff: bool = False, prefix: str = "user") -> User:
        username = f"{prefix}{next(_names)}_{secrets.token_hex(2)}"
        password = secrets.token_urlsafe(12)
        user_id = create_user(db_url, FAST_PASSWORDS, username, password, staff)
        return User(user_id, username, password, create_token(db_url, username), staff)

    return make


@pytest.fixture
def sql(db_url: str) -> Iterator[psycopg.Connection]:
    """A separate autocommit psycopg connection: a writer like psql."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        yield conn


def insert_order(conn: psycopg.Connection, owner_id: int, instrument: str = "ACME",
                 quantity: str = "10", price: str = "101.5") -> int:
    row = conn.execute(
        "INSERT INTO orders (owner_id, instrument, quantity, price) VALUES (%s, %s, %s, %s)"
        " RETURNING id", (owner_id, instrument, quantity, price)).fetchone()
    assert row is not None
    return int(row[0])


# -- WebSocket helpers --------------------------------------------------------


class Socket:
    """A websockets client with JSON helpers that wait for events, never sleep."""

    def __init__(self, conn: websockets.ClientConnection) -> None:
        self.conn = conn

    async def send(self, message: dict[str, Any]) -> None:
        await self.conn.send(json.dumps(message))

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        return json.loads(await asyncio.wait_for(self.conn.recv(), timeout))

    async def recv_type(self, kind: str, timeout: float = 5.0) -> dict[str, Any]:
        """The next frame of type `kind`, failing on any other frame first."""
        frame = await self.recv(timeout)
        assert frame.get("type") == kind, f"expected a {kind!r} frame, got {frame!r}"
        return frame

    async def assert_silent(self, timeout: float = 0.3) -> None:
        """Prove nothing arrives: wait `timeout` for a frame and expect none."""
        try:
            frame = await asyncio.wait_for(self.conn.recv(), timeout)
        except TimeoutError:
            return
        raise AssertionError(f"expected no frame, got {frame!r}")

    async def subscribe_orders(self, **extra: Any) -> dict[str, Any]:
        await self.send({"op": "subscribe", "channel": "orders", **extra})
        return await self.recv_type("subscribed")


@contextlib.asynccontextmanager
async def open_socket(server: ServerProcess, user: User | None = None,
                      headers: dict[str, str] | None = None) -> AsyncIterator[Socket]:
    all_headers = {**(user.auth if user else {}), **(headers or {})}
    async with websockets.connect(server.ws_url, additional_headers=all_headers,
                                  open_timeout=5, max_size=2**22) as conn:
        yield Socket(conn)


@pytest.fixture
async def http(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        yield client


async def login(client: httpx.AsyncClient, user: User) -> str:
    """Log in with the form like a browser; returns the session's CSRF token."""
    page = await client.get("/login")
    token = _csrf_from(page.text)
    response = await client.post("/login", data={"username": user.username,
                                                 "password": user.password,
                                                 "csrf_token": token, "next": "/"})
    assert response.status_code == 303, response.text
    dashboard = await client.get("/")
    assert dashboard.status_code == 200
    return _csrf_from(dashboard.text)


def _csrf_from(html: str) -> str:
    marker = 'name="csrf-token" content="'
    start = html.index(marker) + len(marker)
    return html[start:html.index('"', start)]


# The server processes' LISTEN connections on the current database (each names itself).
TERMINATE_LISTENERS = ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                       " WHERE application_name = 'orderstream-listener'"
                       " AND datname = current_database()")


def terminate_listeners(sql: psycopg.Connection) -> int:
    """Kill every server's LISTEN connection on `sql`'s database, as a crash or a network
    cut would; how many there were."""
    return len(sql.execute(TERMINATE_LISTENERS).fetchall())


@contextlib.contextmanager
def running_server(db_url: str, data_dir: Path, **env: str) -> Iterator[ServerProcess]:
    """A server of its own with extra ORDERSTREAM_* settings, stopped however the block ends."""
    proc = ServerProcess(db_url, data_dir, extra_env=env)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def own_server(db_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    """A server of the test's own (on the run's database): for tests that kill, flood or
    stop it."""
    proc = ServerProcess(db_url, tmp_path)
    proc.start()
    yield proc
    proc.stop()


async def metrics(server: ServerProcess) -> dict[str, float]:
    """The server's /metrics as {name: value}."""
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        text = (await client.get("/metrics")).text
    return {line.split()[0]: float(line.split()[1])
            for line in text.splitlines() if line and not line.startswith("#")}


# -- browser ------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    # Without these, Chromium keeps calling home; this machine's network refuses it.
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Any]:
    """Debian's Chromium driven by Playwright (never a downloaded browser)."""
    if not CHROMIUM.exists():
        message = "browser tests need Debian's chromium (apt-get install -y chromium)"
        if os.environ.get("ORDERSTREAM_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM),
                                                   args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


async def browser_login(page: Any, server: ServerProcess, user: User) -> None:
    """Log in through the real login form."""
    await page.goto(server.base_url + "/login")
    await page.fill("input[name=username]", user.username)
    await page.fill("input[name=password]", user.password)
    async with page.expect_navigation():
        await page.click("form [type=submit]")
    assert not page.url.startswith(server.base_url + "/login"), page.url


# Installed before any page script: counts `subscribed` (orders) frames, keeps every frame
# received, records the connection indicator's changes, and notes when an /api/orders page fetched
# after the latest `subscribed` is on screen. The page sets the table synchronously once
# `await res.json()` resolves, so a timer queued there runs after the render.
LIVE_PROBE_JS = """
(() => {
  const probe = window.__probe = { subscribed: 0, loadedAfter: 0, frames: [], statuses: [] };
  const NativeSocket = window.WebSocket;
  window.WebSocket = class extends NativeSocket {
    constructor(...args) {
      super(...args);
      this.addEventListener('message', (msg) => {
        let frame;
        try { frame = JSON.parse(msg.data); } catch { return; }
        probe.frames.push(frame);
        if (frame.type === 'subscribed' && frame.channel === 'orders') probe.subscribed += 1;
      });
    }
  };
  const nativeFetch = window.fetch;
  window.fetch = function (input, init) {
    const url = String(input instanceof Request ? input.url : input);
    const answer = nativeFetch.call(this, input, init);
    if (!url.startsWith('/api/orders?')) return answer;
    const seen = probe.subscribed;
    return answer.then((res) => { res.__subscribedBefore = seen; return res; });
  };
  const nativeJson = Response.prototype.json;
  Response.prototype.json = function () {
    return nativeJson.call(this).then((data) => {
      const seen = this.__subscribedBefore;
      if (seen === undefined) return data;
      setTimeout(() => { probe.loadedAfter = Math.max(probe.loadedAfter, seen); }, 0);
      return data;
    });
  };
  document.addEventListener('DOMContentLoaded', () => {
    const status = document.getElementById('conn-status');
    if (!status) return;
    new MutationObserver(() => probe.statuses.push(status.textContent))
      .observe(status, { childList: true });
  });
})();
"""


async def wait_live(page: Any, timeout: float = 10_000, after: int = 0) -> int:
    """Until the page is live: its orders subscription confirmed (more than `after` times), and a
    page of data fetched after that confirmation on screen, so any later commit reaches the table
    through the stream. Returns how many subscriptions were confirmed so far (for `after`)."""
    await page.wait_for_function(
        "(after) => { const p = window.__probe; return p && p.subscribed > after"
        " && p.loadedAfter === p.subscribed"
        " && document.getElementById('conn-status').textContent === 'live'; }",
        arg=after, timeout=timeout)
    return await page.evaluate("window.__probe.subscribed")


async def open_live_page(browser: Any, server: ServerProcess, user: User, path: str = "/",
                         viewport: dict[str, int] | None = None) -> tuple[Any, Any]:
    """A new browser context logged in as `user`, showing `path`, live (see wait_live).
    Returns (context, page); the caller closes the context."""
    context = await browser.new_context(viewport=viewport or {"width": 1280, "height": 800})
    page = await context.new_page()
    await page.add_init_script(LIVE_PROBE_JS)
    await browser_login(page, server, user)
    if path != "/":
        await page.goto(server.base_url + path)
    await wait_live(page)
    return context, page


@pytest.fixture
async def contexts() -> AsyncIterator[list[Any]]:
    """Browser contexts a test opened (append them); closed however the test ends."""
    opened: list[Any] = []
    yield opened
    for context in opened:
        await context.close()


# The rows an orders table shows (fading-out rows excluded), to compare with the database.
ROWS_JS = """(table) => [...document.querySelectorAll(`${table} tbody tr[data-id]:not(.removing)`)]
  .map((tr) => {
    const cell = (col) => tr.querySelector(`[data-col=${col}]`)?.dataset.value ?? null;
    return { id: Number(tr.dataset.id), version: Number(tr.dataset.version),
             status: tr.dataset.status, instrument: cell('instrument'), side: cell('side'),
             quantity: cell('quantity'), price: cell('price') };
  })"""


def db_page(conn: psycopg.Connection, owner_id: int, limit: int = 25) -> list[dict[str, Any]]:
    """The owner's first page of orders in the tables' default order (-id), shaped like ROWS_JS."""
    cur = conn.execute(
        "SELECT id, version, status, instrument, side, quantity::text, price::text FROM orders"
        " WHERE owner_id = %s ORDER BY id DESC LIMIT %s", (owner_id, limit))
    names = ["id", "version", "status", "instrument", "side", "quantity", "price"]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


async def shown_rows(page: Any, table: str = "#orders") -> list[dict[str, Any]]:
    return await page.evaluate(f"({ROWS_JS})({table!r})")


async def wait_table_is(page: Any, want: list[dict[str, Any]], table: str = "#orders",
                        timeout: float = 2000) -> None:
    """Until `table` shows exactly `want` (ids, versions, values, in order)."""
    try:
        await page.wait_for_function(
            f"([table, want]) => JSON.stringify(({ROWS_JS})(table)) === JSON.stringify(want)",
            arg=[table, want], timeout=timeout)
    except Exception:
        assert await shown_rows(page, table) == want  # fails with a readable diff
        raise


async def wait_row(page: Any, order_id: int, condition: str, table: str = "#orders",
                   timeout: float = 2000) -> None:
    """Until the order's row in `table` satisfies `condition`, a JS expression over `tr` and
    `cell(col)` (the row's cell element for a column)."""
    await page.wait_for_function(
        f"""([table, id]) => {{
          const tr = document.querySelector(`${{table}} tbody tr[data-id='${{id}}']`);
          if (!tr) return false;
          const cell = (col) => tr.querySelector(`[data-col=${{col}}]`);
          return {condition};
        }}""", arg=[table, order_id], timeout=timeout)


async def settle(page: Any) -> None:
    """Until no highlight or fade runs (they last 1.5 s): a stable picture for a screenshot."""
    await page.wait_for_function(
        "() => !document.querySelector('.flash, .flash-up, .flash-down, .flash-new, .removing')",
        timeout=5000)
