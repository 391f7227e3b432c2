"""The listener's pump outlives a bug in delivering what it heard: it says so on /healthz
while the bug lasts, keeps trying, and delivers the event once it can. Before, a bug raised
during the catch-up that follows a failed delivery ended the pump for good: every socket of
the process went silent while /healthz said ok.

The fault is injected into the server running in this process (the hub's publish raises
while it is on); everything else is real: port, socket, database."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import psycopg
import pytest
import websockets

from tests.conftest import Socket, healthz_until, insert_order
from tests.support.in_process import serving_in_process
from web.hub import Hub


async def test_a_bug_in_delivery_shows_on_healthz_and_the_event_still_arrives(
        db_url: str, tmp_path: Path, make_user: Any, sql: psycopg.Connection,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    publish = Hub.publish
    failing = {"on": False, "calls": 0}

    def publish_failing_while_on(self: Hub, *args: Any, **kwargs: Any) -> Any:
        if failing["on"]:
            failing["calls"] += 1
            raise KeyError("a bug")
        return publish(self, *args, **kwargs)

    monkeypatch.setattr(Hub, "publish", publish_failing_while_on)
    user = make_user()
    with caplog.at_level(logging.ERROR, logger="db.listener"):
        async with (serving_in_process(db_url, tmp_path) as address,
                    websockets.connect(address.ws_url, additional_headers=user.auth,
                                       open_timeout=5) as conn):
            ws = Socket(conn)
            await ws.subscribe_orders()
            await healthz_until(address, lambda body: body["status"] == "ok")
            failing["on"] = True
            order_id = insert_order(sql, user.id)
            unhealthy = await healthz_until(address, lambda body: body["status"] == "unhealthy")
            assert unhealthy["listener"] is False
            assert failing["calls"] >= 2  # the live delivery, then a catch-up (or more)
            failing["on"] = False
            event = await asyncio.wait_for(ws.recv_type("order"), 15)
            assert (event["op"], event["order"]["id"]) == ("insert", order_id)
            await healthz_until(address, lambda body: body["status"] == "ok")
            # And it goes on delivering live.
            second = insert_order(sql, user.id)
            event = await asyncio.wait_for(ws.recv_type("order"), 5)
            assert event["order"]["id"] == second
    assert any("catch-up after" in r.getMessage() and r.exc_info is not None
               and r.exc_info[0] is KeyError for r in caplog.records)
