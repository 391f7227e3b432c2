"""API tokens in a real Chromium: the dashboard's panel (list, create with the secret shown
once, revoke, which closes the token's socket), and a third-party page that authenticates
its WebSocket with the token as a subprotocol."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import websockets
from playwright.async_api import expect

from tests.conftest import (
    ServerProcess,
    free_port,
    insert_order,
    open_live_page,
    open_socket,
    running_server,
)

pytestmark = pytest.mark.browser

# The third-party page is served by a server of its own on another port: another origin.
# (It must really be on loopback: Chromium refuses a public page's sockets to 127.0.0.1.)
WIDGET_PORT = free_port()
WIDGET_ORIGIN = f"http://127.0.0.1:{WIDGET_PORT}"


async def test_tokens_panel_lists_creates_and_revokes(browser, server, make_user, sql,
                                                      contexts):
    me = make_user()
    context, page = await open_live_page(browser, server, me)
    contexts.append(context)
    panel = page.locator("#tokens-panel")
    await panel.locator("summary").click()
    rows = panel.locator("tbody tr")
    await expect(rows).to_have_count(1)  # the fixture's token, made by `server.py token`
    await expect(rows.first).to_contain_text("(unnamed)")

    # A name is required: the server's message shows beside the field.
    await panel.get_by_role("button", name="Create token").click()
    await expect(panel.locator("#token-name-error")).to_contain_text("1-100 characters")

    await panel.get_by_label("Name").fill("trading bot")
    await panel.get_by_role("button", name="Create token").click()
    secret_box = panel.locator("[data-role=secret]")
    await expect(secret_box).to_be_visible()
    await expect(secret_box).to_contain_text("shown only once")
    secret = await secret_box.locator("input").input_value()
    await expect(rows).to_have_count(2)
    await expect(rows.first).to_contain_text("trading bot")
    await expect(rows.first).to_contain_text("never")
    await expect(panel.locator("#token-name-error")).to_be_hidden()
    auth = {"Authorization": f"Bearer {secret}"}
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        assert (await client.get("/api/orders", headers=auth)).status_code == 200

    await secret_box.get_by_role("button", name="Done").click()
    await expect(secret_box).to_be_hidden()
    assert await secret_box.locator("input").input_value() == ""  # not left in the page

    # Revoke (two clicks: "Revoke", then "Sure?"): the token's open socket closes with 1008.
    async with open_socket(server, headers=auth) as ws:
        await ws.subscribe_orders()
        revoke = rows.first.get_by_role("button", name="Revoke token trading bot")
        await revoke.click()
        await expect(revoke).to_have_text("Sure?")
        await revoke.click()
        await expect(rows).to_have_count(1)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(ws.conn.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        assert (await client.get("/api/orders", headers=auth)).status_code == 401
    insert_order(sql, me.id)  # the page itself (a cookie session) is still live
    await expect(page.locator("#orders tbody tr[data-id]")).to_have_count(1)


@pytest.fixture
def widget_server(db_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    with running_server(db_url, tmp_path, ORDERSTREAM_ALLOWED_ORIGINS=WIDGET_ORIGIN) as proc:
        yield proc


# A third-party page: no cookie of ours, no Authorization header; the token rides in the
# subprotocol list. It reports what it saw in window.__result.
WIDGET_PAGE = """<!doctype html><title>widget</title><script>
window.__result = {frames: []};
const ws = new WebSocket(%(url)s, ["orderstream.v1", "bearer." + %(token)s]);
ws.onopen = () => { window.__result.protocol = ws.protocol;
  ws.send(JSON.stringify({op: "subscribe", channel: "orders"})); };
ws.onmessage = (m) => window.__result.frames.push(JSON.parse(m.data));
ws.onclose = (e) => { window.__result.closed = e.code; };
</script>"""


@contextlib.asynccontextmanager
async def widget_site(server: ServerProcess, token: str) -> AsyncIterator[str]:
    """A one-page HTTP server on WIDGET_PORT serving WIDGET_PAGE; yields its URL."""
    body = (WIDGET_PAGE % {"url": json.dumps(server.ws_url), "token": json.dumps(token)}).encode()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: close\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    site = await asyncio.start_server(serve, "127.0.0.1", WIDGET_PORT)
    async with site:
        yield WIDGET_ORIGIN + "/"


async def open_widget(browser, url: str, contexts):
    context = await browser.new_context()
    contexts.append(context)
    page = await context.new_page()
    await page.goto(url)
    return page


async def test_third_party_page_authenticates_with_a_subprotocol(browser, widget_server,
                                                                 make_user, sql, contexts):
    me = make_user()
    async with widget_site(widget_server, me.token) as url:
        page = await open_widget(browser, url, contexts)
    await page.wait_for_function(
        "() => window.__result.frames.some((f) => f.type === 'subscribed')", timeout=5000)
    assert await page.evaluate("window.__result.protocol") == "orderstream.v1"
    order_id = insert_order(sql, me.id)
    await page.wait_for_function(
        "(id) => window.__result.frames.some((f) => f.type === 'order' && f.order.id === id)",
        arg=order_id, timeout=5000)


async def test_third_party_page_from_an_unlisted_origin_is_refused(browser, server, make_user,
                                                                   contexts):
    me = make_user()  # `server` does not list WIDGET_ORIGIN in allowed_origins
    async with widget_site(server, me.token) as url:
        page = await open_widget(browser, url, contexts)
    await page.wait_for_function("() => window.__result.closed !== undefined", timeout=5000)
    assert await page.evaluate("window.__result.protocol") is None
    assert await page.evaluate("window.__result.frames") == []
