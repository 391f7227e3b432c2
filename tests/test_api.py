"""The JSON API over orders: CRUD with a Bearer token and with a cookie session, listing
(paging, sorting, search, owner filter), who may see what, and API writes reaching sockets."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import User, insert_order, login, open_socket

ORDER_KEYS = {"id", "owner_id", "owner", "instrument", "side", "quantity", "price", "status",
              "version", "created_at", "updated_at"}


async def create(http: httpx.AsyncClient, user: User, **body: Any) -> dict[str, Any]:
    body = {"instrument": "ACME", "quantity": "10", "price": "101.5", **body}
    response = await http.post("/api/orders", json=body, headers=user.auth)
    assert response.status_code == 201, response.text
    return response.json()


async def listing(http: httpx.AsyncClient, user: User, **params: Any) -> dict[str, Any]:
    response = await http.get("/api/orders", params=params, headers=user.auth)
    assert response.status_code == 200, response.text
    return response.json()


def assert_order_shape(order: dict[str, Any]) -> None:
    assert set(order) >= ORDER_KEYS, order
    # Numbers are never floats: decimal strings, exactly as stored.
    assert isinstance(order["quantity"], str) and isinstance(order["price"], str), order
    assert isinstance(order["id"], int) and isinstance(order["version"], int)


async def test_crud_with_bearer_token(http, make_user):
    alice = make_user()
    created = await create(http, alice, instrument="ACME", side="sell", quantity="12.5000",
                           price="101.250")
    assert_order_shape(created)
    assert (created["quantity"], created["price"]) == ("12.5000", "101.250")
    assert created["owner_id"] == alice.id and created["owner"] == alice.username
    assert (created["side"], created["status"], created["version"]) == ("sell", "new", 1)
    order_id = created["id"]

    got = await http.get(f"/api/orders/{order_id}", headers=alice.auth)
    assert got.status_code == 200 and got.headers["content-type"].startswith("application/json")
    assert got.json() == created

    patched = await http.patch(f"/api/orders/{order_id}", headers=alice.auth,
                               json={"price": "99.990", "status": "partially_filled"})
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert_order_shape(body)
    assert (body["price"], body["quantity"], body["status"]) == ("99.990", "12.5000",
                                                                 "partially_filled")
    assert body["version"] == 2 and body["updated_at"] >= created["updated_at"]

    # An expected version that matches applies; a stale one is a conflict, and changes nothing.
    ok = await http.patch(f"/api/orders/{order_id}", headers=alice.auth,
                          json={"version": 2, "status": "filled"})
    assert ok.status_code == 200 and ok.json()["version"] == 3
    stale = await http.patch(f"/api/orders/{order_id}", headers=alice.auth,
                             json={"version": 2, "status": "cancelled"})
    assert stale.status_code == 409, stale.text
    assert stale.json()["error"]["code"] == "conflict"
    again = (await http.get(f"/api/orders/{order_id}", headers=alice.auth)).json()
    assert (again["status"], again["version"]) == ("filled", 3)

    deleted = await http.delete(f"/api/orders/{order_id}", headers=alice.auth)
    assert deleted.status_code == 204 and deleted.content == b""
    for method in ("GET", "DELETE"):
        gone = await http.request(method, f"/api/orders/{order_id}", headers=alice.auth)
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"
    gone = await http.patch(f"/api/orders/{order_id}", headers=alice.auth, json={"price": "1"})
    assert gone.status_code == 404


async def test_crud_with_cookie_session_and_csrf_header(server, make_user):
    alice = make_user()
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as browser:
        csrf = await login(browser, alice)
        headers = {"X-CSRF-Token": csrf}
        created = await browser.post("/api/orders", headers=headers,
                                     json={"instrument": "COOKIE", "quantity": "1",
                                           "price": "0.5"})
        assert created.status_code == 201, created.text
        order = created.json()
        assert order["owner_id"] == alice.id and order["price"] == "0.5"

        listed = (await browser.get("/api/orders")).json()  # safe method: no CSRF needed
        assert [o["id"] for o in listed["items"]] == [order["id"]]

        patched = await browser.patch(f"/api/orders/{order['id']}", headers=headers,
                                      json={"quantity": "3"})
        assert patched.status_code == 200 and patched.json()["quantity"] == "3"
        assert patched.json()["version"] == 2

        # The same unsafe requests without the header are refused and change nothing.
        refused = await browser.patch(f"/api/orders/{order['id']}", json={"quantity": "4"})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "csrf"
        refused = await browser.delete(f"/api/orders/{order['id']}",
                                       headers={"X-CSRF-Token": csrf + "x"})
        assert refused.status_code == 403
        assert (await browser.get(f"/api/orders/{order['id']}")).json()["quantity"] == "3"

        deleted = await browser.delete(f"/api/orders/{order['id']}", headers=headers)
        assert deleted.status_code == 204
        assert (await browser.get(f"/api/orders/{order['id']}")).status_code == 404


async def test_numbers_are_decimal_strings_everywhere(http, make_user, sql):
    alice = make_user()
    # JSON numbers are read as decimals too (never through float), and answered as strings.
    response = await http.post("/api/orders", headers=alice.auth,
                               json={"instrument": "NUM", "quantity": 3, "price": "0.1"})
    assert response.status_code == 201
    body = response.json()
    assert (body["quantity"], body["price"]) == ("3", "0.1")
    raw = await http.post("/api/orders", headers={**alice.auth,
                                                  "Content-Type": "application/json"},
                          content=b'{"instrument": "NUM", "quantity": 0.1, "price": 1.10}')
    assert raw.status_code == 201
    assert (raw.json()["quantity"], raw.json()["price"]) == ("0.1", "1.10")
    big = await create(http, alice, quantity="123456789012345678.123456789", price="1e3")
    assert big["quantity"] == "123456789012345678.123456789"
    assert big["price"] == "1000"  # exponent notation in, a plain decimal string out
    insert_order(sql, alice.id, "SQL", "7", "2.50")
    items = (await listing(http, alice))["items"]
    assert len(items) == 4
    for item in items:
        assert_order_shape(item)
    assert {(o["instrument"], o["price"]) for o in items} >= {("SQL", "2.50"), ("NUM", "1.10")}


async def test_list_paging_and_counts(http, make_user):
    alice = make_user()
    ids = [(await create(http, alice, instrument=f"PAGE{i}"))["id"] for i in range(7)]
    first = await listing(http, alice, limit=3)
    assert set(first) >= {"items", "total", "filtered", "seq"}
    assert (first["total"], first["filtered"]) == (7, 7)
    assert isinstance(first["seq"], int) and first["seq"] > 0
    assert [o["id"] for o in first["items"]] == ids[::-1][:3]  # newest first by default
    second = await listing(http, alice, limit=3, offset=3)
    third = await listing(http, alice, limit=3, offset=6)
    assert [o["id"] for o in second["items"]] == ids[::-1][3:6]
    assert [o["id"] for o in third["items"]] == ids[::-1][6:]
    past = await listing(http, alice, limit=3, offset=100)
    assert past["items"] == [] and past["total"] == 7


async def test_list_sort_by_several_columns(http, make_user):
    alice = make_user()
    rows = [("B", "sell", "9", "3"), ("A", "buy", "10", "3"), ("C", "buy", "2", "1"),
            ("A", "sell", "1", "20")]
    for instrument, side, quantity, price in rows:
        await create(http, alice, instrument=instrument, side=side, quantity=quantity,
                     price=price)

    def fields(answer: dict[str, Any], *names: str) -> list[tuple[str, ...]]:
        return [tuple(o[n] for n in names) for o in answer["items"]]

    # Numeric columns sort as numbers ("9" < "10"), not as text.
    by_quantity = await listing(http, alice, sort="quantity")
    assert [o["quantity"] for o in by_quantity["items"]] == ["1", "2", "9", "10"]
    by_price_desc = await listing(http, alice, sort="-price")
    assert [o["price"] for o in by_price_desc["items"]] == ["20", "3", "3", "1"]
    two = await listing(http, alice, sort="instrument,-quantity")
    assert fields(two, "instrument", "quantity") == [("A", "10"), ("A", "1"), ("B", "9"),
                                                      ("C", "2")]
    three = await listing(http, alice, sort="-price,side,instrument")
    assert fields(three, "price", "side", "instrument") == [
        ("20", "sell", "A"), ("3", "buy", "A"), ("3", "sell", "B"), ("1", "buy", "C")]
    by_id = await listing(http, alice, sort="id")
    ids = [o["id"] for o in by_id["items"]]
    assert ids == sorted(ids)
    assert [o["id"] for o in (await listing(http, alice, sort="-id"))["items"]] == ids[::-1]


async def test_list_search_words_are_anded_case_insensitive_and_literal(http, make_user):
    alice = make_user()
    for instrument, side in [("ACME", "buy"), ("ACME", "sell"), ("Globex", "sell"),
                             ("P%Q", "buy"), ("PXQ", "buy"), ("X_Y", "buy"), ("XZY", "buy")]:
        await create(http, alice, instrument=instrument, side=side)

    async def found(q: str) -> list[tuple[str, str]]:
        answer = await listing(http, alice, q=q)
        assert answer["total"] == 7 and answer["filtered"] == len(answer["items"])
        return sorted((o["instrument"], o["side"]) for o in answer["items"])

    assert await found("acme") == [("ACME", "buy"), ("ACME", "sell")]
    assert await found("ACME SELL") == [("ACME", "sell")]
    assert await found("  sell   glob ") == [("Globex", "sell")]
    assert await found("acme globex") == []
    assert await found("p%q") == [("P%Q", "buy")]
    assert await found("x_y") == [("X_Y", "buy")]
    assert await found("%") == [("P%Q", "buy")]
    assert await found("\\") == []
    assert len(await found("")) == 7


async def test_regular_user_sees_and_changes_only_their_own(http, make_user):
    alice, bob = make_user(), make_user()
    mine = await create(http, alice, instrument="ALICE")
    theirs = await create(http, bob, instrument="BOB")

    answer = await listing(http, alice)
    assert [o["id"] for o in answer["items"]] == [mine["id"]]
    assert (answer["total"], answer["filtered"]) == (1, 1)
    assert (await listing(http, alice, q="BOB"))["items"] == []
    # Naming oneself as owner is fine.
    assert [o["id"] for o in (await listing(http, alice, owner=alice.id))["items"]] == [mine["id"]]

    url = f"/api/orders/{theirs['id']}"
    for response in (
        await http.get(url, headers=alice.auth),
        await http.patch(url, headers=alice.auth, json={"price": "1"}),
        await http.patch(url, headers=alice.auth, json={"price": "1", "version": 1}),
        await http.delete(url, headers=alice.auth),
    ):
        assert response.status_code == 404, response.text  # not 403: it does not exist for her
        assert response.json()["error"]["code"] == "not_found"
    untouched = (await http.get(url, headers=bob.auth)).json()
    assert untouched == theirs


async def test_staff_sees_all_filters_by_owner_and_creates_for_others(http, make_user):
    alice, bob, staff = make_user(), make_user(), make_user(staff=True)
    a = await create(http, alice, instrument="STAFF-A")
    b = await create(http, bob, instrument="STAFF-B")

    everyone = await listing(http, staff, limit=1000)
    seen = {o["id"] for o in everyone["items"]}
    assert {a["id"], b["id"]} <= seen
    assert everyone["total"] >= 2
    assert (await listing(http, staff, owner="*", limit=1000))["total"] == everyone["total"]

    only_bob = await listing(http, staff, owner=bob.id)
    assert [o["id"] for o in only_bob["items"]] == [b["id"]] and only_bob["total"] == 1

    for_alice = await create(http, staff, owner_id=alice.id, instrument="FOR-ALICE")
    assert for_alice["owner_id"] == alice.id and for_alice["owner"] == alice.username
    alice_ids = {o["id"] for o in (await listing(http, alice))["items"]}
    assert alice_ids == {a["id"], for_alice["id"]}

    got = await http.get(f"/api/orders/{b['id']}", headers=staff.auth)
    assert got.status_code == 200 and got.json()["owner"] == bob.username
    moved = await http.patch(f"/api/orders/{b['id']}", headers=staff.auth,
                             json={"owner_id": alice.id})
    assert moved.status_code == 200 and moved.json()["owner_id"] == alice.id
    assert (await http.delete(f"/api/orders/{a['id']}", headers=staff.auth)).status_code == 204


async def test_api_writes_reach_the_owners_socket(server, http, make_user):
    alice, bob = make_user(), make_user()
    async with open_socket(server, alice) as alice_ws, open_socket(server, bob) as bob_ws:
        await alice_ws.subscribe_orders()
        await bob_ws.subscribe_orders()
        created = await create(http, alice, instrument="WIRE", price="10.10")
        inserted = await alice_ws.recv_type("order")
        assert inserted["op"] == "insert" and inserted["order"]["id"] == created["id"]
        assert inserted["order"]["price"] == "10.10"

        await http.patch(f"/api/orders/{created['id']}", headers=alice.auth,
                         json={"price": "10.20"})
        updated = await alice_ws.recv_type("order")
        assert updated["op"] == "update" and updated["order"]["price"] == "10.20"
        assert updated["order"]["version"] == 2 and updated["seq"] > inserted["seq"]

        await http.delete(f"/api/orders/{created['id']}", headers=alice.auth)
        deleted = await alice_ws.recv_type("order")
        assert deleted["op"] == "delete" and deleted["order"]["id"] == created["id"]
        await bob_ws.assert_silent()


async def test_list_seq_covers_the_announced_events(server, http, make_user):
    """`seq` in a list answer is at least the seq of every event for a row already in it."""
    alice = make_user()
    async with open_socket(server, alice) as ws:
        await ws.subscribe_orders()
        await create(http, alice, instrument="SEQ")
        event = await ws.recv_type("order")
        answer = await listing(http, alice)
        assert answer["seq"] >= event["seq"]
