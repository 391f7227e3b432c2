"""The staff admin page in a real Chromium: filter by owner, edit and delete another user's order,
and that user's open dashboard follows within 2 s; others get 404. Saves docs/admin.png."""

from __future__ import annotations

import time

import pytest
from playwright.async_api import expect

from tests.conftest import (
    ROOT,
    browser_login,
    db_page,
    insert_order,
    open_live_page,
    settle,
    shown_rows,
    wait_live,
    wait_row,
    wait_table_is,
)
from tests.test_dashboard_browser import seed_blotter

pytestmark = pytest.mark.browser

ADMIN = "#admin-orders"


async def filter_by_owner(admin, owner_id: int) -> None:
    """Pick an owner in #owner-filter and wait until the table is live for that owner."""
    subscriptions = await admin.evaluate("window.__probe.subscribed")
    option = admin.locator(f"#owner-filter option[value='{owner_id}']")
    await option.wait_for(state="attached", timeout=5000)  # the users list has loaded
    await admin.select_option("#owner-filter", str(owner_id))
    await wait_live(admin, after=subscriptions)


async def test_staff_edits_another_users_order_and_their_page_follows(
        browser, server, make_user, sql, contexts):
    staff, trader, bystander = make_user(staff=True), make_user(), make_user()
    theirs = [insert_order(sql, trader.id, "ACME", str(q), "100") for q in (1, 2, 3)]
    insert_order(sql, bystander.id, "OTHERCO", "1", "1")

    trader_context, dashboard = await open_live_page(browser, server, trader)
    contexts.append(trader_context)
    staff_context, admin = await open_live_page(browser, server, staff, "/admin")
    contexts.append(staff_context)

    await filter_by_owner(admin, trader.id)
    await wait_table_is(admin, db_page(sql, trader.id), table=ADMIN)
    owners = await admin.eval_on_selector_all(
        f"{ADMIN} tbody tr [data-col=owner]", "tds => tds.map(td => td.textContent)")
    assert owners == [trader.username] * len(theirs)

    # Edit through the admin form: the PATCH goes through the API, the trigger tells everyone.
    await admin.click(f"button[aria-label='Edit order {theirs[0]}']")
    await expect(admin.locator("#order-form [data-role=title]")).to_have_text(
        f"Edit order #{theirs[0]}", timeout=2000)
    await admin.fill("#of-price", "105.75")
    async with admin.expect_response(lambda r: r.request.method == "PATCH") as answer:
        await admin.click("#order-form button[type=submit]")
    assert (await answer.value).status == 200
    saved = time.monotonic()
    await wait_row(dashboard, theirs[0], "cell('price').dataset.value === '105.75'"
                                         " && cell('price').classList.contains('flash-up')")
    assert time.monotonic() - saved < 2.0
    await wait_table_is(dashboard, db_page(sql, trader.id))
    await wait_table_is(admin, db_page(sql, trader.id), table=ADMIN)

    # Delete: the first click arms the button, the second deletes.
    delete = admin.locator(f"button[aria-label='Delete order {theirs[1]}']")
    await delete.click()
    await expect(delete).to_have_text("Sure?")
    async with admin.expect_response(lambda r: r.request.method == "DELETE") as answer:
        await delete.click()
    assert (await answer.value).status == 204
    await dashboard.wait_for_selector(f"#orders tr[data-id='{theirs[1]}']", state="detached",
                                      timeout=2000 + 600)  # + the fade-out
    await wait_table_is(dashboard, db_page(sql, trader.id))
    await wait_table_is(admin, db_page(sql, trader.id), table=ADMIN)
    assert sql.execute("SELECT count(*) FROM orders WHERE id = %s", (theirs[1],)).fetchone() == (0,)


async def test_admin_is_404_for_non_staff(browser, server, make_user, contexts):
    context = await browser.new_context()
    contexts.append(context)
    page = await context.new_page()
    await browser_login(page, server, make_user())
    response = await page.goto(server.base_url + "/admin")
    assert response is not None and response.status == 404
    # And the dashboard offers no link to it.
    await page.goto(server.base_url + "/")
    assert await page.query_selector("a[href='/admin']") is None


async def test_admin_screenshot(browser, server, make_user, sql, contexts):
    staff, trader = make_user(staff=True, prefix="admin"), make_user(prefix="trader")
    seed_blotter(sql, trader.id)
    context, admin = await open_live_page(browser, server, staff, "/admin")
    contexts.append(context)
    await filter_by_owner(admin, trader.id)
    await wait_table_is(admin, db_page(sql, trader.id), table=ADMIN)
    # One order open in the form, as a staff member editing it would see it.
    first = (await shown_rows(admin, ADMIN))[0]["id"]
    await admin.click(f"button[aria-label='Edit order {first}']")
    await settle(admin)
    await admin.screenshot(path=str(ROOT / "docs" / "admin.png"))
