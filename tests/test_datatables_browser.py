"""The ecosystem check: the real DataTables (npm package datatables.net, installed for the
test run, never committed) drives /api/orders in server-side mode in a real Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from decimal import Decimal
from pathlib import Path

import pytest

from tests.conftest import browser_login

pytestmark = pytest.mark.browser

PAGE_DIR = Path(__file__).resolve().parent / "datatables"
INSTRUMENTS = ["ALPHA", "BETA", "GAMMA", "DELTA", "OMEGA"]


@pytest.fixture(scope="module")
def datatables_dir():
    """npm install datatables.net (and its jQuery) into a temporary folder."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("the DataTables check needs npm (apt-get install -y npm)")
    folder = Path(tempfile.mkdtemp(prefix="orderstream-datatables-"))
    subprocess.run([npm, "install", "--silent", "--no-audit", "--no-fund", "--prefix",
                    str(folder), "datatables.net", "datatables.net-dt", "jquery"],
                   check=True, timeout=300, capture_output=True)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def page(browser, server, make_user, sql, datatables_dir):
    user = make_user()
    with sql.cursor() as cur:
        cur.executemany(
            "INSERT INTO orders (owner_id, instrument, quantity, price) VALUES (%s, %s, 1, %s)",
            [(user.id, INSTRUMENTS[i % 5], Decimal(100 + (i * 37) % 50) + Decimal("0.25"))
             for i in range(25)])
    context = await browser.new_context()
    page = await context.new_page()

    async def serve_test_files(route):
        path = route.request.url.split("/__dt__/", 1)[1].split("?")[0]
        base = datatables_dir if path.startswith("node_modules/") else PAGE_DIR
        file = (base / path).resolve()
        assert file.is_relative_to(base.resolve())
        await route.fulfill(path=str(file))

    # The test page is served on the server's own origin, so the session cookie applies.
    await page.route(re.compile(r".*/__dt__/.*"), serve_test_files)
    await browser_login(page, server, user)
    await page.goto(server.base_url + "/__dt__/index.html")
    await page.wait_for_function("document.querySelectorAll('#orders tbody tr').length === 10")
    yield page
    await context.close()


async def rows(page) -> list[list[str]]:
    return await page.eval_on_selector_all(
        "#orders tbody tr", "trs => trs.map(tr => [...tr.cells].map(td => td.textContent))")


async def wait_for_draw(page, draw: int) -> None:
    await page.wait_for_function(f"window.table.ajax.json()?.draw >= {draw}")


async def test_paging(page):
    first = await rows(page)
    assert len(first) == 10
    assert "1 to 10 of 25" in await page.text_content(".dt-info")
    await page.click("button.dt-paging-button.next")
    await wait_for_draw(page, 2)
    second = await rows(page)
    assert len(second) == 10 and {r[0] for r in first}.isdisjoint({r[0] for r in second})
    answer = await page.evaluate("window.table.ajax.json()")
    assert answer["draw"] == 2 and answer["recordsTotal"] == 25
    assert all(row["DT_RowId"] == f"order-{row['id']}" for row in answer["data"])


async def test_sorting(page):
    await page.click("#orders thead th:nth-child(3)")  # price, ascending
    await wait_for_draw(page, 2)
    prices = [Decimal(r[2]) for r in await rows(page)]
    assert prices == sorted(prices)
    await page.click("#orders thead th:nth-child(3)")  # descending
    await wait_for_draw(page, 3)
    prices = [Decimal(r[2]) for r in await rows(page)]
    assert prices == sorted(prices, reverse=True)
    # The note column is not orderable: clicking it sends no order for it.
    request = await page.evaluate("window.requests.at(-1)")
    assert request["columns"][4]["orderable"] is False


async def test_search(page):
    await page.fill(".dt-search input", "beta")
    await page.wait_for_function(
        "window.table.ajax.json()?.recordsFiltered === 5 && "
        "document.querySelectorAll('#orders tbody tr').length === 5")
    assert {r[1] for r in await rows(page)} == {"BETA"}
    assert "filtered from 25 total" in await page.text_content(".dt-info")
