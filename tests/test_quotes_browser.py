"""The dashboard's market view in a real Chromium: a quote written with psql changes the Last and
P&L cells of the matching orders, the quotes panel (flash, change, sparkline) and the P&L totals;
the keyboard moves a selected row and Enter edits it; times switch between local and UTC and the
choice is remembered; the page fits a phone's width."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
from playwright.async_api import expect

from tests.conftest import browser_login, wait_live, wait_row
from tests.support.market import make_instrument, new_symbol, upsert_quote

pytestmark = pytest.mark.browser

# Kolkata is UTC+05:30: local and UTC clocks differ in hours and minutes.
TIMEZONE = "Asia/Kolkata"


async def live_page(browser: Any, server: Any, user: Any, contexts: list[Any],
                    width: int = 1280) -> Any:
    from tests.conftest import LIVE_PROBE_JS

    context = await browser.new_context(viewport={"width": width, "height": 900},
                                        timezone_id=TIMEZONE)
    contexts.append(context)
    page = await context.new_page()
    await page.add_init_script(LIVE_PROBE_JS)
    await browser_login(page, server, user)
    await wait_live(page)
    return page


def add_order(sql: Any, owner_id: int, instrument: str, side: str, quantity: str, price: str,
              status: str) -> int:
    row = sql.execute(
        "INSERT INTO orders (owner_id, instrument, side, quantity, price, status)"
        " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
        (owner_id, instrument, side, quantity, price, status)).fetchone()
    return int(row[0])


async def test_a_quote_moves_prices_pnl_panel_and_totals(browser, server, make_user, sql,
                                                          contexts):
    me = make_user()
    symbol = make_instrument(sql, new_symbol("PX"))
    upsert_quote(sql, symbol, "100.40", "100.60", "100.50")
    long = add_order(sql, me.id, symbol, "buy", "10", "100.00", "filled")
    short = add_order(sql, me.id, symbol, "sell", "5", "101.00", "partially_filled")
    fresh = add_order(sql, me.id, symbol, "buy", "3", "99.00", "new")  # no position, no P&L
    add_order(sql, me.id, new_symbol("FREETEXT"), "buy", "1", "1", "filled")  # not an instrument
    page = await live_page(browser, server, me, contexts)

    await wait_row(page, long, "cell('last').textContent === '100.50'"
                               " && cell('pnl').textContent === '5.00'", timeout=5000)
    panel = page.locator(f"#quotes tbody tr[data-instrument='{symbol}']")
    await expect(panel.locator("[data-col=last]")).to_have_text("100.50")
    await expect(page.locator("#pnl-screen")).to_have_text("+7.50")  # 5.00 + (101 - 100.50) x 5
    await expect(page.locator("#pnl-all")).to_have_text("+7.50", timeout=5000)

    upsert_quote(sql, symbol, "102.20", "102.30", "102.25")  # as anyone would, with psql
    await wait_row(page, long, "cell('last').textContent === '102.25'"
                               " && cell('pnl').textContent === '22.50'"
                               " && cell('pnl').classList.contains('pos')")
    await wait_row(page, short, "cell('last').textContent === '102.25'"
                                " && cell('pnl').textContent === '-6.25'"
                                " && cell('pnl').classList.contains('neg')")
    await wait_row(page, fresh, "cell('last').textContent === '102.25'"
                                " && cell('pnl').textContent === ''")
    await expect(panel.locator("[data-col=bid]")).to_have_text("102.20")
    await expect(panel.locator("[data-col=ask]")).to_have_text("102.30")
    await expect(panel.locator("[data-col=last]")).to_have_text("102.25")
    await expect(panel.locator("[data-col=change]")).to_have_text("+1.75")
    await expect(panel).to_have_class(re.compile("flash-up"))
    await expect(panel.locator("canvas.sparkline")).to_have_attribute("data-points", "2")
    await expect(page.locator("#pnl-screen")).to_have_text("+16.25")
    await expect(page.locator("#pnl-all")).to_have_text("+16.25", timeout=5000)


async def test_keyboard_moves_the_selection_and_enter_edits(browser, server, make_user, sql,
                                                             contexts):
    me = make_user()
    ids = [add_order(sql, me.id, "KEYS", "buy", str(q), "10", "new") for q in (1, 2, 3)]
    page = await live_page(browser, server, me, contexts)
    region = page.locator("#orders-region .table-scroll")
    await region.focus()
    await page.keyboard.press("ArrowDown")
    await expect(page.locator("#orders tbody tr.selected")).to_have_attribute(
        "data-id", str(ids[2]))
    await page.keyboard.press("ArrowDown")
    await page.keyboard.press("ArrowDown")
    await page.keyboard.press("ArrowDown")  # stays on the last row
    await expect(page.locator("#orders tbody tr.selected")).to_have_attribute(
        "data-id", str(ids[0]))
    await page.keyboard.press("ArrowUp")
    await expect(page.locator("#orders tbody tr.selected")).to_have_attribute(
        "data-id", str(ids[1]))
    await page.keyboard.press("Enter")
    await expect(page.locator("#order-form")).to_have_attribute("data-mode", "edit")
    await expect(page.locator("#order-form [data-role=title]")).to_have_text(
        f"Edit order #{ids[1]}")


async def test_times_switch_between_local_and_utc_and_the_choice_stays(browser, server,
                                                                       make_user, sql, contexts):
    me = make_user()
    order = add_order(sql, me.id, "TIMES", "buy", "1", "1", "new")
    (updated,) = sql.execute("SELECT updated_at FROM orders WHERE id = %s", (order,)).fetchone()
    page = await live_page(browser, server, me, contexts)
    cell = page.locator(f"#orders tbody tr[data-id='{order}'] [data-col=updated_at]")
    local = updated.astimezone(_zone()).strftime("%H:%M:%S")
    utc = updated.astimezone(UTC).strftime("%H:%M:%S")
    assert local != utc
    if updated.astimezone(_zone()).date() == datetime.now(_zone()).date():
        await expect(cell).to_have_text(local)
    await page.click("#time-mode")
    await expect(page.locator("#time-mode")).to_have_text("Times: UTC")
    if updated.astimezone(UTC).date() == datetime.now(UTC).date():
        await expect(cell).to_have_text(utc)
    await page.reload()
    await wait_live(page)
    await expect(page.locator("#time-mode")).to_have_text("Times: UTC")
    assert await page.evaluate("localStorage.getItem('orderstream.times')") == "utc"


async def test_the_market_view_fits_a_phone(browser, server, make_user, sql, contexts):
    me = make_user()
    symbol = make_instrument(sql)
    upsert_quote(sql, symbol, "1.00", "1.02", "1.01")
    add_order(sql, me.id, symbol, "buy", "100", "0.99", "filled")
    page = await live_page(browser, server, me, contexts, width=390)
    await expect(page.locator(f"#quotes tbody tr[data-instrument='{symbol}'] [data-col=last]")
                 ).to_have_text("1.01", timeout=5000)
    await expect(page.locator("#pnl-screen")).to_have_text("+2.00")
    overflow = await page.evaluate("document.documentElement.scrollWidth")
    assert overflow <= 390


def _zone() -> Any:
    from zoneinfo import ZoneInfo

    return ZoneInfo(TIMEZONE)
