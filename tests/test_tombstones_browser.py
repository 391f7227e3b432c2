"""Versioned tombstones in a real Chromium (docs/protocol.md, "Versions and tombstones"): an
order staff move to another owner and back reappears on the owner's dashboard and on the admin
page with its new price, without a reload; a delete that commits after a newer update stays
deleted, live and through a listener gap; and the rule itself, checked on static/js/version-book.js
and on frames fed to the dashboard's socket."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from tests.conftest import (
    LIVE_PROBE_JS,
    browser_login,
    db_page,
    insert_order,
    metrics,
    open_live_page,
    shown_rows,
    terminate_listeners,
    wait_live,
    wait_row,
    wait_table_is,
)
from tests.support.database import allow_connections
from tests.test_admin_browser import filter_by_owner

pytestmark = pytest.mark.browser

ADMIN = "#admin-orders"

# Run in the page once it is live: a marker a navigation would lose, and a count of the
# /api/orders pages fetched from now on (a re-inserted row must come from the stream, not a load).
WATCH_PAGE_JS = """() => {
  window.__sameDocument = true;
  window.__loads = 0;
  const nativeFetch = window.fetch;
  window.fetch = function (input, init) {
    const url = String(input instanceof Request ? input.url : input);
    if (url.startsWith('/api/orders?')) window.__loads += 1;
    return nativeFetch.call(this, input, init);
  };
}"""


async def order_events(page: Any, order_id: int) -> list[tuple[str, int]]:
    """(op, version) of every order event the page's socket received for `order_id`."""
    return [tuple(e) for e in await page.evaluate(
        "(id) => window.__probe.frames.filter((f) => f.type === 'order' && f.order.id === id)"
        ".map((f) => [f.op, f.order.version])", order_id)]


async def assert_row_stays_away(page: Any, order_id: int, table: str = "#orders") -> None:
    """The order's row is not shown, and does not come back within a short wait."""
    with pytest.raises(PlaywrightTimeoutError):
        await page.wait_for_selector(f"{table} tr[data-id='{order_id}']:not(.removing)",
                                     timeout=500)


async def move_away_and_back(page: Any, sql: psycopg.Connection, order_id: int, owner_id: int,
                             other_id: int, table: str) -> None:
    """Staff move the order to `other_id` (it leaves the page), then back with a new price in
    another UPDATE (it comes back, from the stream alone)."""
    await page.evaluate(WATCH_PAGE_JS)
    sql.execute("UPDATE orders SET owner_id = %s WHERE id = %s", (other_id, order_id))
    await page.wait_for_selector(f"{table} tr[data-id='{order_id}']", state="detached",
                                 timeout=2000 + 600)  # + the fade-out
    await wait_table_is(page, db_page(sql, owner_id), table=table)

    sql.execute("UPDATE orders SET owner_id = %s, price = 123.45 WHERE id = %s",
                (owner_id, order_id))
    await wait_row(page, order_id, "cell('price').dataset.value === '123.45'"
                                   " && tr.classList.contains('flash-new')", table=table)
    await wait_table_is(page, db_page(sql, owner_id), table=table)
    # The move away reached this view as a delete at the move's version, the move back as an
    # insert above it (docs/protocol.md).
    assert await order_events(page, order_id) == [("delete", 2), ("insert", 3)]
    assert await page.evaluate("window.__sameDocument === true")  # no navigation
    assert await page.evaluate("window.__loads") == 0  # and no page load: the stream did it


async def test_order_moved_away_and_back_reappears_on_the_dashboard(
        browser, server, make_user, sql, contexts):
    alice, bob = make_user(), make_user()
    ids = [insert_order(sql, alice.id, "ACME", str(q), "100") for q in (1, 2, 3)]
    context, page = await open_live_page(browser, server, alice)
    contexts.append(context)

    await move_away_and_back(page, sql, ids[1], alice.id, bob.id, "#orders")
    assert await page.get_attribute("#table-info", "data-total") == "3"


async def test_moved_back_while_paused_shows_after_the_reload(
        browser, server, make_user, sql, contexts):
    """The page reloads its data (realtime back on): a row above the tombstone is shown."""
    alice, bob = make_user(), make_user()
    ids = [insert_order(sql, alice.id, "ACME", str(q), "100") for q in (1, 2)]
    context, page = await open_live_page(browser, server, alice)
    contexts.append(context)

    sql.execute("UPDATE orders SET owner_id = %s WHERE id = %s", (bob.id, ids[0]))
    await page.wait_for_selector(f"#orders tr[data-id='{ids[0]}']", state="detached",
                                 timeout=2000 + 600)
    subscriptions = await page.evaluate("window.__probe.subscribed")
    await page.uncheck("#realtime")
    await page.wait_for_function(
        "() => window.__probe.frames.some((f) => f.type === 'unsubscribed')")
    sql.execute("UPDATE orders SET owner_id = %s, price = 99.5 WHERE id = %s",
                (alice.id, ids[0]))
    await page.check("#realtime")
    await wait_live(page, after=subscriptions)
    await wait_table_is(page, db_page(sql, alice.id))
    assert [row["price"] for row in await shown_rows(page)] == ["100", "99.5"]


async def test_order_moved_away_and_back_reappears_on_the_admin_page(
        browser, server, make_user, sql, contexts):
    staff, alice, bob = make_user(staff=True), make_user(), make_user()
    ids = [insert_order(sql, alice.id, "ACME", str(q), "100") for q in (1, 2, 3)]
    context, admin = await open_live_page(browser, server, staff, "/admin")
    contexts.append(context)
    await filter_by_owner(admin, alice.id)  # the admin page's own owner view: same rule
    await wait_table_is(admin, db_page(sql, alice.id), table=ADMIN)

    await move_away_and_back(admin, sql, ids[1], alice.id, bob.id, ADMIN)

    # Moved to bob again: alice's view holds a tombstone at the move's version (4). Bob's view,
    # picked next, shows the order at that very version: the tombstone was alice's view's.
    sql.execute("UPDATE orders SET owner_id = %s WHERE id = %s", (bob.id, ids[1]))
    await admin.wait_for_selector(f"{ADMIN} tr[data-id='{ids[1]}']", state="detached",
                                  timeout=2000 + 600)
    await filter_by_owner(admin, bob.id)
    await wait_table_is(admin, db_page(sql, bob.id), table=ADMIN)
    assert [(row["id"], row["version"]) for row in await shown_rows(admin, ADMIN)] == [(ids[1], 4)]


def delete_after_newer_update(db_url: str, order_id: int,
                              before_commits: Callable[[], None] | None = None) -> None:
    """Transaction A takes its xid first; B updates the order (version 2); A's delete waits for
    B's row lock; B commits, so A deletes version 2 and commits. In transaction order A's delete
    comes first, in commit order last. `before_commits()` runs just before B commits."""
    with (psycopg.connect(db_url) as a, psycopg.connect(db_url) as b,
          psycopg.connect(db_url, autocommit=True) as watch,
          ThreadPoolExecutor(1) as pool):
        a.execute("SELECT pg_current_xact_id()")
        b.execute("UPDATE orders SET price = 200 WHERE id = %s", (order_id,))
        deleting = pool.submit(a.execute, "DELETE FROM orders WHERE id = %s", (order_id,))
        deadline = time.monotonic() + 5
        while watch.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                            (a.info.backend_pid,)).fetchone() != ("Lock",):
            assert time.monotonic() < deadline, "the delete did not wait for the update's lock"
            time.sleep(0.005)
        if before_commits is not None:
            before_commits()
        b.commit()
        assert deleting.result(timeout=5).rowcount == 1
        a.commit()


async def both_events_or_resync(page: Any, order_id: int) -> None:
    await page.wait_for_function(
        """(id) => {
          const frames = window.__probe.frames;
          const mine = frames.filter((f) => f.type === 'order' && f.order.id === id);
          return frames.some((f) => f.type === 'resync')
            || (mine.some((f) => f.op === 'delete') && mine.some((f) => f.op === 'update'));
        }""", arg=order_id, timeout=10_000)


async def test_delete_committed_after_a_newer_update_stays_deleted(
        browser, server, db_url, make_user, sql, contexts):
    alice = make_user()
    keep, doomed = (insert_order(sql, alice.id, "ACME", str(q), "100") for q in (1, 2))
    context, page = await open_live_page(browser, server, alice)
    contexts.append(context)

    await asyncio.to_thread(delete_after_newer_update, db_url, doomed)
    await both_events_or_resync(page, doomed)
    await assert_row_stays_away(page, doomed)
    await wait_table_is(page, db_page(sql, alice.id))
    assert [row["id"] for row in await shown_rows(page)] == [keep]
    assert sorted(await order_events(page, doomed)) == [("delete", 2), ("update", 2)]


async def test_delete_committed_after_a_newer_update_stays_deleted_through_a_listener_gap(
        browser, own_server, server_url, db_url, make_user, sql, contexts):
    """Both commits happen while the server's listener is gone and cannot come back (the
    database refuses new connections meanwhile): they reach the page only through the
    listener's recovery, which replays them in transaction order today (delete first)."""
    alice = make_user()
    keep, doomed = (insert_order(sql, alice.id, "ACME", str(q), "100") for q in (1, 2))
    context, page = await open_live_page(browser, own_server, alice)
    contexts.append(context)
    reconnects = (await metrics(own_server))["orderstream_listener_reconnects_total"]

    killed: list[int] = []

    def kill_listener() -> None:
        allow_connections(server_url, db_url, False)
        killed.append(terminate_listeners(sql))

    try:
        await asyncio.to_thread(delete_after_newer_update, db_url, doomed, kill_listener)
    finally:
        allow_connections(server_url, db_url, True)
    assert killed and killed[0] >= 1  # own_server's listener (and the shared server's, if up)
    await both_events_or_resync(page, doomed)
    await assert_row_stays_away(page, doomed)
    await wait_table_is(page, db_page(sql, alice.id))
    assert [row["id"] for row in await shown_rows(page)] == [keep]
    # Delivered by the recovery, not live: the listener reconnected after the commits.
    assert (await metrics(own_server))["orderstream_listener_reconnects_total"] > reconnects

    # Live again afterwards.
    sql.execute("UPDATE orders SET price = 1 WHERE id = %s", (keep,))
    await wait_row(page, keep, "cell('price').dataset.value === '1'")


# -- the rule itself ------------------------------------------------------------

VERSION_BOOK_JS = """async () => {
  const { VersionBook } = await import('/static/js/version-book.js');
  const order = (version) => ({ id: 7, version, price: String(version) });
  const out = {};
  let book = new VersionBook();
  book.record(order(1));
  out.deleteThenSameVersionUpdate = [
    book.recordDelete(7, 2), book.record(order(2)), book.isDeleted(7)];
  out.deleteAgain = [book.recordDelete(7, 2), book.recordDelete(7, 1)];
  out.insertAbove = [book.record(order(3)), book.isDeleted(7)];
  out.staleAfterComeback = [book.recordDelete(7, 2), book.record(order(3)), book.isDeleted(7)];
  out.deleteAtShownVersion = [book.recordDelete(7, 3), book.isDeleted(7)];

  book = new VersionBook();
  out.shownIsNewer = [book.record(order(2), 4), book.recordDelete(7, 3, 4)];

  book = new VersionBook();
  book.recordDelete(7, 2);
  const shown = (version) => book.reconcile(order(version))?.version ?? null;
  out.reconcile = [shown(1), shown(2), shown(3)];
  out.afterReconcile = [book.record(order(3)), book.record(order(4)), shown(3)];
  return out;
}"""


async def test_version_book_rule(browser, server):
    context = await browser.new_context()
    try:
        page = await context.new_page()
        await page.goto(server.base_url + "/login")
        assert await page.evaluate(VERSION_BOOK_JS) == {
            # delete@2 then update@2 (transaction order): stays deleted
            "deleteThenSameVersionUpdate": [True, False, True],
            "deleteAgain": [False, False],  # duplicates and older deletes change nothing
            "insertAbove": [True, False],  # insert@3 brings it back
            "staleAfterComeback": [False, False, False],  # replayed delete@2, duplicate @3
            "deleteAtShownVersion": [True, True],  # a delete of the version held applies
            "shownIsNewer": [False, False],  # the row on screen counts as known
            # a page row at or below the tombstone stays hidden, above it is shown
            "reconcile": [None, None, 3],
            "afterReconcile": [False, True, 4],  # the newer event wins over an older page row
        }
    finally:
        await context.close()


# Installed after the probe: keeps the page's sockets, so a test can feed it frames as if the
# server had sent them (the replay order a listener gap may produce, deterministically).
KEEP_SOCKETS_JS = """
(() => {
  const sockets = window.__sockets = [];
  const Probed = window.WebSocket;
  window.WebSocket = class extends Probed {
    constructor(...args) { super(...args); sockets.push(this); }
  };
})();
"""

FEED_JS = """(frames) => {
  const ws = window.__sockets[window.__sockets.length - 1];
  for (const frame of frames) {
    ws.dispatchEvent(new MessageEvent('message', { data: JSON.stringify(frame) }));
  }
}"""


def frame(op: str, order: dict[str, Any], version: int, **changes: Any) -> dict[str, Any]:
    return {"type": "order", "op": op, "seq": 0, "ts": time.time() * 1000, "cursor": "",
            "order": {**order, **changes, "version": version}}


async def test_dashboard_applies_replayed_frames_by_the_rule(browser, server, make_user, sql,
                                                             contexts):
    """Frames in transaction order, fed to the dashboard's socket: delete@2 then update@2 leaves
    the row away; insert@3 brings it back without a reload; a replayed delete@2 does not take it."""
    alice = make_user()
    order_id = insert_order(sql, alice.id, "ACME", "10", "100")
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    contexts.append(context)
    page = await context.new_page()
    await page.add_init_script(LIVE_PROBE_JS)
    await page.add_init_script(KEEP_SOCKETS_JS)
    await browser_login(page, server, alice)
    await wait_live(page)
    await page.evaluate(WATCH_PAGE_JS)
    order = (await page.evaluate(
        "(id) => fetch(`/api/orders/${id}`).then((r) => r.json())", order_id))
    assert order["version"] == 1

    await page.evaluate(FEED_JS, [frame("delete", order, 2), frame("update", order, 2, price="7")])
    await page.wait_for_selector(f"#orders tr[data-id='{order_id}']", state="detached",
                                 timeout=2000)
    await assert_row_stays_away(page, order_id)
    assert await page.get_attribute("#table-info", "data-total") == "0"

    await page.evaluate(FEED_JS, [frame("insert", order, 3, price="8"),
                                  frame("delete", order, 2), frame("update", order, 3, price="9")])
    await wait_row(page, order_id, "cell('price').dataset.value === '8'")
    await assert_row_stays_at_price(page, order_id, '8')
    assert await page.get_attribute("#table-info", "data-total") == "1"
    assert await page.evaluate("window.__sameDocument === true && window.__loads === 0")


async def assert_row_stays_at_price(page: Any, order_id: int, price: str) -> None:
    """The row stays shown at `price`: no later frame removes or changes it within a short wait."""
    with pytest.raises(PlaywrightTimeoutError):
        await page.wait_for_function(
            "([id, price]) => { const tr = document.querySelector(`#orders tr[data-id='${id}']`);"
            " return !tr || tr.classList.contains('removing')"
            " || tr.querySelector('[data-col=price]').dataset.value !== price; }",
            arg=[order_id, price], timeout=500)
