"""The dashboard in a real Chromium: own orders only, any writer's change on screen within 2 s
with a highlight, the realtime toggle, reconnecting after a server restart, going to the
login page when the session ends elsewhere, and order entry.
Also saves the README's screenshots (docs/dashboard.png, docs/dashboard-phone.png)."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from playwright.async_api import TimeoutError as PlaywrightTimeoutError
from playwright.async_api import expect

from tests.conftest import (
    ROOT,
    db_page,
    insert_order,
    open_live_page,
    settle,
    shown_rows,
    wait_live,
    wait_row,
    wait_table_is,
)

pytestmark = pytest.mark.browser

DOCS = ROOT / "docs"
LATENCY_IS_A_NUMBER = (
    "() => /^-?\\d+(\\.\\d+)?$/.test(document.querySelector('#latency [data-last]').textContent)")
CONN_DOWN = ("() => ['reconnecting', 'offline']"
             ".includes(document.getElementById('conn-status').textContent)")
NO_VALUE_YET = "\u2013"  # the latency meter's en dash before the first event


async def order_frames(page: Any) -> list[dict[str, Any]]:
    """Every order event the page's socket received."""
    return await page.evaluate("window.__probe.frames.filter((f) => f.type === 'order')")


async def test_sees_own_orders_only(browser, server, make_user, sql, contexts):
    me, other = make_user(), make_user()
    mine = [insert_order(sql, me.id, "ACME", str(q), "101.5") for q in (1, 2, 3)]
    theirs = insert_order(sql, other.id, "SECRETCO", "5", "7")
    context, page = await open_live_page(browser, server, me)
    contexts.append(context)
    assert [row["id"] for row in await shown_rows(page)] == sorted(mine, reverse=True)

    sql.execute("UPDATE orders SET price = price + 1 WHERE id = %s", (theirs,))
    theirs_too = insert_order(sql, other.id, "SECRETCO", "6", "8")
    # Events reach a session in commit order: once this later change of mine is on screen,
    # the other user's changes would have arrived before it.
    sql.execute("UPDATE orders SET quantity = 11 WHERE id = %s", (mine[0],))
    await wait_row(page, mine[0], "cell('quantity').dataset.value === '11'")

    assert {row["id"] for row in await shown_rows(page)} == set(mine)
    assert {f["order"]["id"] for f in await order_frames(page)} == {mine[0]}
    monitor_ids = await page.eval_on_selector_all("#monitor tbody tr",
                                                  "trs => trs.map(tr => tr.dataset.id)")
    assert monitor_ids == [str(mine[0])]
    assert "SECRETCO" not in await page.inner_text("body")
    for foreign in (theirs, theirs_too):
        assert await page.query_selector(f"#orders tr[data-id='{foreign}']") is None


async def test_sql_price_update_patches_row_with_flash_and_latency(
        browser, server, make_user, sql, contexts):
    me = make_user()
    order_id = insert_order(sql, me.id, "ACME", "10", "100")
    context, page = await open_live_page(browser, server, me)
    contexts.append(context)
    assert await page.text_content("#latency [data-last]") == NO_VALUE_YET
    await page.evaluate("window.__sameDocument = true")  # gone if the page reloads

    started = time.monotonic()
    sql.execute("UPDATE orders SET price = 100.25 WHERE id = %s", (order_id,))
    await wait_row(page, order_id,
                   "cell('price').dataset.value === '100.25'"
                   " && cell('price').textContent === '100.25'"
                   " && cell('price').classList.contains('flash-up')"
                   " && tr.classList.contains('flash')")
    assert time.monotonic() - started < 2.0
    assert await page.evaluate("window.__sameDocument") is True
    await page.wait_for_function(LATENCY_IS_A_NUMBER, timeout=2000)
    for attr in ("data-last", "data-p50", "data-p99"):
        value = float(await page.text_content(f"#latency [{attr}]"))
        assert 0 <= value < 2000, (attr, value)

    sql.execute("UPDATE orders SET price = 99.5 WHERE id = %s", (order_id,))
    await wait_row(page, order_id,
                   "cell('price').dataset.value === '99.5'"
                   " && cell('price').classList.contains('flash-down')")
    # The highlight is brief: gone again after 1.5 s.
    await wait_row(page, order_id, "!cell('price').classList.contains('flash-down')", timeout=3000)
    await wait_table_is(page, db_page(sql, me.id))


async def test_sql_insert_appears_and_sql_delete_disappears(
        browser, server, make_user, sql, contexts):
    me = make_user()
    first = insert_order(sql, me.id, "ACME", "10", "100")
    context, page = await open_live_page(browser, server, me)
    contexts.append(context)

    added = insert_order(sql, me.id, "NEWCO", "3", "42.125")
    await wait_row(page, added, "tr.classList.contains('flash-new')"
                                " && cell('instrument').dataset.value === 'NEWCO'")
    await wait_table_is(page, db_page(sql, me.id))
    assert await page.get_attribute("#table-info", "data-total") == "2"

    sql.execute("DELETE FROM orders WHERE id = %s", (added,))
    await page.wait_for_selector(f"#orders tr[data-id='{added}'].removing", timeout=2000)
    await page.wait_for_selector(f"#orders tr[data-id='{added}']", state="detached", timeout=2000)
    await wait_table_is(page, db_page(sql, me.id))
    assert [row["id"] for row in await shown_rows(page)] == [first]
    assert await page.get_attribute("#table-info", "data-total") == "1"


def filtered_page(conn: psycopg.Connection, owner_id: int, status: str,
                  side: str | None = None) -> list[dict[str, Any]]:
    """The owner's orders of a status (and side), newest first, shaped like db_page."""
    return [row for row in db_page(conn, owner_id, limit=1000)
            if row["status"] == status and (side is None or row["side"] == side)][:25]


async def test_status_and_side_filters_narrow_the_list_and_the_stream(
        browser, server, make_user, sql, contexts):
    me = make_user()
    ids = [insert_order(sql, me.id, name, "1", "10") for name in ("NEWBUY", "DONE", "NEWSELL")]
    sql.execute("UPDATE orders SET status = 'filled' WHERE id = %s", (ids[1],))
    sql.execute("UPDATE orders SET side = 'sell' WHERE id = %s", (ids[2],))
    context, page = await open_live_page(browser, server, me, "/?status=new")
    contexts.append(context)
    await wait_table_is(page, filtered_page(sql, me.id, "new"))
    assert [row["id"] for row in await shown_rows(page)] == [ids[2], ids[0]]
    assert await page.input_value("#filter-status") == "new"
    assert await page.get_attribute("#table-info", "data-filtered") == "2"
    assert await page.get_attribute("#table-info", "data-total") == "3"

    await page.select_option("#filter-side", "sell")
    await wait_table_is(page, filtered_page(sql, me.id, "new", "sell"))
    assert re.search(r"[?&]status=new(&|$)", page.url) and re.search(r"[?&]side=sell(&|$)",
                                                                       page.url)

    # Live, through plain SQL: a matching insert appears, another does not, and an order
    # that stops matching (filled) leaves the view.
    sql.execute("UPDATE orders SET status = 'new' WHERE id = %s", (ids[1],))  # a buy: not shown
    added = sql.execute("INSERT INTO orders (owner_id, instrument, side, quantity, price)"
                        " VALUES (%s, 'LIVESELL', 'sell', 2, 20) RETURNING id",
                        (me.id,)).fetchone()[0]
    await wait_row(page, added, "cell('instrument').dataset.value === 'LIVESELL'")
    sql.execute("UPDATE orders SET status = 'filled' WHERE id = %s", (ids[2],))
    await page.wait_for_selector(f"#orders tr[data-id='{ids[2]}']", state="detached",
                                 timeout=2000)
    await wait_table_is(page, filtered_page(sql, me.id, "new", "sell"))
    assert [row["id"] for row in await shown_rows(page)] == [added]

    # A reload keeps the filters; "All" lifts them.
    await page.reload()
    await wait_live(page)
    assert await page.input_value("#filter-side") == "sell"
    await wait_table_is(page, filtered_page(sql, me.id, "new", "sell"))
    await page.select_option("#filter-status", "")
    await page.select_option("#filter-side", "")
    await wait_table_is(page, db_page(sql, me.id))
    assert "status=" not in page.url and "side=" not in page.url


async def test_realtime_toggle(browser, server, make_user, sql, contexts):
    me = make_user()
    order_id = insert_order(sql, me.id, "ACME", "10", "100")
    context, page = await open_live_page(browser, server, me)
    contexts.append(context)

    subscriptions = await page.evaluate("window.__probe.subscribed")
    await page.uncheck("#realtime")
    await page.wait_for_function(
        "() => window.__probe.frames.some((f) => f.type === 'unsubscribed'"
        " && f.channel === 'orders')")
    sql.execute("UPDATE orders SET price = 111 WHERE id = %s", (order_id,))
    with pytest.raises(PlaywrightTimeoutError):
        await page.wait_for_selector("#monitor tbody tr", timeout=1000)
    assert await order_frames(page) == []  # the server stopped sending, not just the page showing
    assert await page.get_attribute(f"#orders tr[data-id='{order_id}'] [data-col=price]",
                                    "data-value") == "100"

    await page.check("#realtime")
    # Subscribed again, and the page reloaded: the change made meanwhile is there.
    await wait_live(page, after=subscriptions)
    await wait_table_is(page, db_page(sql, me.id))
    sql.execute("UPDATE orders SET price = 112 WHERE id = %s", (order_id,))
    await page.wait_for_selector(f"#monitor tbody tr[data-op=update][data-id='{order_id}']",
                                 timeout=2000)
    await wait_table_is(page, db_page(sql, me.id))


async def test_reconnects_after_server_restart_and_catches_up(
        browser, own_server, make_user, sql, contexts):
    me = make_user()
    ids = [insert_order(sql, me.id, "ACME", str(q), "100") for q in (1, 2, 3)]
    context, page = await open_live_page(browser, own_server, me)
    contexts.append(context)
    subscriptions = await page.evaluate("window.__probe.subscribed")
    port = own_server.port

    await asyncio.to_thread(own_server.stop)
    await page.wait_for_function(CONN_DOWN, timeout=5000)
    # Written while no server is listening: the page must show them after it reconnects.
    sql.execute("UPDATE orders SET price = 123.45 WHERE id = %s", (ids[0],))
    sql.execute("DELETE FROM orders WHERE id = %s", (ids[1],))
    insert_order(sql, me.id, "LATECO", "9", "9.99")

    assert own_server.port == port  # stop() keeps the port, so start() comes back on it
    await asyncio.to_thread(own_server.start)
    assert own_server.port == port
    # Backoff is capped at 8 s (+ jitter).
    await wait_live(page, timeout=30_000, after=subscriptions)
    await wait_table_is(page, db_page(sql, me.id))
    statuses = await page.evaluate("window.__probe.statuses")
    assert "reconnecting" in statuses and statuses[-1] == "live", statuses

    # And it is live again, not just reloaded.
    sql.execute("UPDATE orders SET price = 1 WHERE id = %s", (ids[2],))
    await wait_row(page, ids[2], "cell('price').dataset.value === '1'")


async def test_a_session_ended_elsewhere_sends_the_page_to_login(
        browser, server, make_user, sql, contexts):
    """Logged out everywhere (here: the session's row deleted, as a password change or a
    logout on another device does): the socket closes with 1008, and the page goes to the
    login page at once instead of reconnecting to a refused handshake."""
    me = make_user()
    context, page = await open_live_page(browser, server, me)
    contexts.append(context)
    started = time.monotonic()
    sql.execute("DELETE FROM web_sessions WHERE user_id = %s", (me.id,))
    await page.wait_for_url(re.compile(r"/login\?next=%2F$"), timeout=5000)
    took = time.monotonic() - started
    assert took < 2.0, f"the login page came after {took:.2f} s"


async def test_order_entry_create_error_edit_cancel(browser, server, make_user, sql, contexts):
    me = make_user()
    insert_order(sql, me.id, "ACME", "10", "100")
    context, page = await open_live_page(browser, server, me)
    contexts.append(context)

    async def submit(method: str) -> Any:
        async with page.expect_response(
                lambda r: "/api/orders" in r.url and r.request.method == method) as answer:
            await page.click("#order-form button[type=submit]")
        return await answer.value

    # Create.
    await page.fill("#of-instrument", "zeta")
    await page.select_option("#of-side", "sell")
    await page.fill("#of-quantity", "7")
    await page.fill("#of-price", "12.345")
    response = await submit("POST")
    assert response.status == 201
    created = int((await response.json())["id"])
    await wait_row(page, created, "cell('instrument').dataset.value === 'ZETA'"
                                  " && cell('side').dataset.value === 'sell'"
                                  " && cell('price').dataset.value === '12.345'")
    await wait_table_is(page, db_page(sql, me.id))

    # A bad price: the API's 422 shows beside the field, nothing is created.
    count = len(db_page(sql, me.id))
    await page.fill("#of-instrument", "ZETA")
    await page.fill("#of-quantity", "1")
    await page.fill("#of-price", "12,5")
    response = await submit("POST")
    assert response.status == 422
    error = page.locator("#order-form [data-error-for=price]")
    await error.wait_for(state="visible", timeout=2000)
    assert "12,5" in await error.inner_text()
    assert await page.get_attribute("#of-price", "aria-invalid") == "true"
    assert len(db_page(sql, me.id)) == count
    await page.fill("#of-price", "12.5")  # editing the field clears its error
    await error.wait_for(state="hidden", timeout=2000)

    # Edit.
    await page.click(f"button[aria-label='Edit order {created}']")
    title = page.locator("#order-form [data-role=title]")
    await expect(title).to_have_text(f"Edit order #{created}", timeout=2000)
    assert await page.input_value("#of-price") == "12.345"
    await page.fill("#of-quantity", "8")
    await page.fill("#of-price", "13.5")
    response = await submit("PATCH")
    assert response.status == 200
    await wait_row(page, created, "cell('quantity').dataset.value === '8'"
                                  " && cell('price').dataset.value === '13.5'")
    await wait_table_is(page, db_page(sql, me.id))

    # Cancel: one click, the row's status changes and the button goes.
    async with page.expect_response(lambda r: r.request.method == "PATCH") as answer:
        await page.click(f"button[aria-label='Cancel order {created}']")
    assert (await answer.value).status == 200
    await wait_row(page, created, "tr.dataset.status === 'cancelled'")
    assert await page.query_selector(f"button[aria-label='Cancel order {created}']") is None
    status = sql.execute("SELECT status FROM orders WHERE id = %s", (created,)).fetchone()
    assert status == ("cancelled",)
    await wait_table_is(page, db_page(sql, me.id))


# -- screenshots for the README -------------------------------------------------------------------

INSTRUMENTS = {"ACME": "101.20", "GLOBEX": "54.10", "INITECH": "12.85", "HOOLI": "230.40",
               "UMBRELLA": "8.76", "STARK": "412.00"}
STATUSES = ["new", "filled", "partially_filled", "new", "filled", "cancelled", "new", "rejected"]


def seed_blotter(sql: psycopg.Connection, owner_id: int, count: int = 40) -> list[int]:
    """A plausible blotter: several instruments, both sides, every status, and quotes."""
    names = list(INSTRUMENTS)
    ids = []
    for i in range(count):
        instrument = names[(i * 5) % len(names)]
        base = float(INSTRUMENTS[instrument])
        price = f"{base * (1 + ((i * 7) % 11 - 5) / 400):.2f}"
        row = sql.execute(
            "INSERT INTO orders (owner_id, instrument, side, quantity, price, status)"
            " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
            (owner_id, instrument, "sell" if i % 3 == 0 else "buy", str(10 * (1 + (i * 13) % 25)),
             price, STATUSES[i % len(STATUSES)])).fetchone()
        assert row is not None
        ids.append(int(row[0]))
    with sql.cursor() as cur:
        cur.executemany("INSERT INTO instruments (symbol, name) VALUES (%s, %s)"
                        " ON CONFLICT (symbol) DO NOTHING", [(n, n) for n in INSTRUMENTS])
        cur.executemany(
            "INSERT INTO quotes (instrument, bid, ask, last) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (instrument) DO UPDATE SET bid = excluded.bid, ask = excluded.ask,"
            " last = excluded.last",
            [(name, f"{float(last) - 0.02:.2f}", f"{float(last) + 0.02:.2f}", last)
             for name, last in INSTRUMENTS.items()])
    return ids


async def test_screenshots(browser, server, make_user, sql, contexts):
    DOCS.mkdir(exist_ok=True)
    me = make_user(prefix="trader")
    ids = seed_blotter(sql, me.id)
    context, page = await open_live_page(browser, server, me)
    contexts.append(context)
    # Quotes exist for these instruments: the Last and P&L columns show.
    await expect(page.locator("#orders-region")).not_to_have_class(re.compile("no-quotes"),
                                                                     timeout=5000)
    # A few changes by SQL, so the monitor and the latency meter have something to show.
    for step, order_id in enumerate(ids[-1:-7:-1]):
        sql.execute("UPDATE orders SET price = price + %s WHERE id = %s",
                    ("0.05" if step % 2 else "-0.05", order_id))
    await expect(page.locator("#monitor tbody tr")).to_have_count(6, timeout=2000)
    await wait_table_is(page, db_page(sql, me.id))
    await settle(page)
    await page.screenshot(path=str(DOCS / "dashboard.png"))

    phone_context, phone = await open_live_page(browser, server, me,
                                                viewport={"width": 390, "height": 844})
    contexts.append(phone_context)
    await wait_table_is(phone, db_page(sql, me.id))
    await settle(phone)
    await phone.screenshot(path=str(DOCS / "dashboard-phone.png"))
    for name in ("dashboard.png", "dashboard-phone.png"):
        assert Path(DOCS / name).stat().st_size > 10_000
