"""HTTP conventions programs rely on: ETag and If-Match (412), If-None-Match (304), Location
on every 201, exact list filters, and WWW-Authenticate on every 401."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.conftest import User, insert_order, login


async def create(http: httpx.AsyncClient, user: User, **body: Any) -> httpx.Response:
    body = {"instrument": "ACME", "quantity": "10", "price": "101.5", **body}
    response = await http.post("/api/orders", json=body, headers=user.auth)
    assert response.status_code == 201, response.text
    return response


def row(sql, order_id: int) -> tuple[Any, ...] | None:
    return sql.execute("SELECT version, price::text, status FROM orders WHERE id = %s",
                       (order_id,)).fetchone()


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code and error["message"], error
    return error


# -- ETag, If-Match, If-None-Match --------------------------------------------------------


async def test_etag_names_the_version_and_follows_every_writer(http, make_user, sql):
    alice = make_user()
    order_id = insert_order(sql, alice.id)
    got = await http.get(f"/api/orders/{order_id}", headers=alice.auth)
    assert got.headers["etag"] == '"1"' == f'"{got.json()["version"]}"'
    sql.execute("UPDATE orders SET price = 7 WHERE id = %s", (order_id,))  # a psql writer
    again = await http.get(f"/api/orders/{order_id}", headers=alice.auth)
    assert again.headers["etag"] == '"2"' and again.json()["version"] == 2


async def test_stale_if_match_on_patch_is_412_and_changes_nothing(http, make_user, sql):
    alice = make_user()
    order_id = insert_order(sql, alice.id, price="101.5")
    sql.execute("UPDATE orders SET status = 'filled' WHERE id = %s", (order_id,))  # now v2
    before = row(sql, order_id)
    response = await http.patch(f"/api/orders/{order_id}", json={"price": "1"},
                                headers={**alice.auth, "If-Match": '"1"'})
    error = assert_error(response, 412, "precondition_failed")
    assert '"2"' in error["message"] and "If-Match" in error["fields"]
    assert response.headers["etag"] == '"2"'  # what to send next time
    assert row(sql, order_id) == before == (2, "101.5", "filled")


async def test_matching_if_match_applies_and_answers_the_new_etag(http, make_user, sql):
    alice = make_user()
    created = await create(http, alice)
    order_id = created.json()["id"]
    assert created.headers["etag"] == '"1"'
    # A list of tags matches if any does; weak tags never match (strong comparison).
    response = await http.patch(f"/api/orders/{order_id}", json={"price": "2"},
                                headers={**alice.auth, "If-Match": 'W/"9", "1"'})
    assert response.status_code == 200, response.text
    assert response.headers["etag"] == '"2"' and response.json()["version"] == 2
    assert row(sql, order_id) == (2, "2", "new")
    weak = await http.patch(f"/api/orders/{order_id}", json={"price": "3"},
                            headers={**alice.auth, "If-Match": 'W/"2"'})
    assert_error(weak, 412, "precondition_failed")
    star = await http.patch(f"/api/orders/{order_id}", json={"price": "3"},
                            headers={**alice.auth, "If-Match": "*"})
    assert star.status_code == 200 and star.headers["etag"] == '"3"'


async def test_concurrent_writers_with_one_if_match_only_one_wins(http, make_user, sql):
    """The check is in the UPDATE's WHERE: writers racing with the same ETag cannot both
    pass it (a read-then-write check would let them)."""
    alice = make_user()
    order_id = insert_order(sql, alice.id)
    responses = await asyncio.gather(*(
        http.patch(f"/api/orders/{order_id}", json={"price": str(i)},
                   headers={**alice.auth, "If-Match": '"1"'}) for i in range(1, 7)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) == 1, [r.text for r in responses]
    # The others lost: 412, or 409 `locked` if one waited past the lock timeout.
    assert all(r.status_code == 412 or r.json()["error"]["code"] == "locked"
               for r in responses if r.status_code != 200)
    winner = next(r for r in responses if r.status_code == 200).json()
    assert row(sql, order_id) == (2, winner["price"], "new")


async def test_if_match_and_body_version_both_hold(http, make_user, sql):
    alice = make_user()
    order_id = insert_order(sql, alice.id)
    # The header matches, the body's version does not: the body's rule answers (409).
    response = await http.patch(f"/api/orders/{order_id}", json={"price": "5", "version": 7},
                                headers={**alice.auth, "If-Match": '"1"'})
    assert_error(response, 409, "conflict")
    assert row(sql, order_id) == (1, "101.5", "new")


async def test_stale_if_match_on_delete_is_412_and_keeps_the_order(http, make_user, sql):
    alice = make_user()
    order_id = insert_order(sql, alice.id)
    sql.execute("UPDATE orders SET status = 'filled' WHERE id = %s", (order_id,))
    response = await http.delete(f"/api/orders/{order_id}",
                                 headers={**alice.auth, "If-Match": '"1"'})
    assert_error(response, 412, "precondition_failed")
    assert row(sql, order_id) == (2, "101.5", "filled")
    deleted = await http.delete(f"/api/orders/{order_id}",
                                headers={**alice.auth, "If-Match": '"2"'})
    assert deleted.status_code == 204
    assert row(sql, order_id) is None


async def test_if_match_star_on_a_missing_or_foreign_order_is_404(http, make_user, sql):
    alice, bob = make_user(), make_user()
    order_id = insert_order(sql, bob.id)
    for method in ("PATCH", "DELETE"):
        response = await http.request(method, f"/api/orders/{order_id}", json={"price": "1"},
                                      headers={**alice.auth, "If-Match": "*"})
        assert_error(response, 404, "not_found")
    assert row(sql, order_id) == (1, "101.5", "new")


@pytest.mark.parametrize("value", ["1", "abc", '"1', 'W/1', '"1" "2"', '"a b"', '"1",x'])
async def test_malformed_if_match_is_400(http, make_user, sql, value):
    alice = make_user()
    order_id = insert_order(sql, alice.id)
    for method in ("PATCH", "DELETE"):
        response = await http.request(method, f"/api/orders/{order_id}", json={"price": "1"},
                                      headers={**alice.auth, "If-Match": value})
        error = assert_error(response, 400, "bad_request")
        assert "If-Match" in error["fields"]
    assert row(sql, order_id) == (1, "101.5", "new")


async def test_if_none_match_answers_304_until_the_order_changes(http, make_user, sql):
    alice = make_user()
    order_id = insert_order(sql, alice.id)
    headers = {**alice.auth, "If-None-Match": '"1"'}
    cached = await http.get(f"/api/orders/{order_id}", headers=headers)
    assert cached.status_code == 304 and cached.headers["etag"] == '"1"' and not cached.content
    sql.execute("UPDATE orders SET price = 3 WHERE id = %s", (order_id,))
    fresh = await http.get(f"/api/orders/{order_id}", headers=headers)
    assert fresh.status_code == 200 and fresh.json()["price"] == "3"


# -- Location --------------------------------------------------------------------------


async def test_every_201_has_a_location_that_resolves(http, make_user):
    alice, boss = make_user(), make_user(staff=True)
    created = await create(http, alice)
    got = await http.get(created.headers["location"], headers=alice.auth)
    assert got.status_code == 200 and got.json() == created.json()

    token = await http.post("/api/tokens", json={"name": "ci"}, headers=alice.auth)
    assert token.status_code == 201, token.text
    got = await http.get(token.headers["location"], headers=alice.auth)
    assert got.status_code == 200 and got.json()["name"] == "ci"

    user = await http.post("/api/users", headers=boss.auth,
                           json={"username": f"loc_{alice.id}", "password": "a-long-password"})
    assert user.status_code == 201, user.text
    got = await http.get(user.headers["location"], headers=boss.auth)
    assert got.status_code == 200 and got.json() == user.json()


# -- exact filters -----------------------------------------------------------------------


async def test_exact_filters(http, make_user, sql):
    alice = make_user()
    ids = {}
    for name, instrument, side, status in [("filled", "ACME", "buy", "filled"),
                                           ("partial", "ACME", "sell", "partially_filled"),
                                           ("new", "ACMEX", "buy", "new")]:
        ids[name] = insert_order(sql, alice.id, instrument)
        sql.execute("UPDATE orders SET side = %s, status = %s WHERE id = %s",
                    (side, status, ids[name]))

    async def ids_for(**params: str) -> set[int]:
        response = await http.get("/api/orders", params=params, headers=alice.auth)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["filtered"] == len(body["items"]) and body["total"] == 3
        return {item["id"] for item in body["items"]}

    # q=filled is a substring search (partially_filled too); status=filled is exact.
    assert await ids_for(q="filled") == {ids["filled"], ids["partial"]}
    assert await ids_for(status="filled") == {ids["filled"]}
    assert await ids_for(side="sell") == {ids["partial"]}
    assert await ids_for(instrument="ACME") == {ids["filled"], ids["partial"]}
    assert await ids_for(instrument="acme") == set()  # exact: case counts
    assert await ids_for(instrument="ACME", side="buy") == {ids["filled"]}
    assert await ids_for(q="acme", status="new") == {ids["new"]}
    assert await ids_for(status="") == set(ids.values())  # empty means no filter

    # The DataTables endpoint takes the same filters.
    dt = await http.get("/api/orders", headers=alice.auth,
                        params={"format": "datatables", "draw": "1", "status": "filled"})
    assert [row["id"] for row in dt.json()["data"]] == [ids["filled"]]


@pytest.mark.parametrize(("name", "value"), [("status", "FILLED"), ("status", "fill"),
                                             ("side", "short"), ("instrument", "A" * 65),
                                             ("instrument", "AC\x00ME")])
async def test_bad_filter_values_are_400(http, make_user, name, value):
    alice = make_user()
    for params in ({name: value}, {name: value, "format": "datatables"}):
        response = await http.get("/api/orders", params=params, headers=alice.auth)
        error = assert_error(response, 400, "bad_request")
        assert name in error["fields"], error


async def test_filters_are_in_the_openapi_description(http):
    spec = (await http.get("/api/openapi.json")).json()
    params = {p["name"]: p for p in spec["paths"]["/api/orders"]["get"]["parameters"]}
    assert params["status"]["schema"]["enum"] == ["new", "partially_filled", "filled",
                                                   "cancelled", "rejected"]
    assert params["side"]["schema"]["enum"] == ["buy", "sell"]
    assert "instrument" in params


# -- WWW-Authenticate -----------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/api/orders"), ("POST", "/api/orders"), ("GET", "/api/orders/1"),
    ("PATCH", "/api/orders/1"), ("DELETE", "/api/orders/1"), ("GET", "/api/tokens"),
    ("POST", "/api/tokens"), ("DELETE", "/api/tokens/1"), ("GET", "/api/users"),
])
async def test_every_401_carries_www_authenticate(http, method, path):
    anonymous = await http.request(method, path, json={})
    assert_error(anonymous, 401, "unauthorized")
    assert anonymous.headers["www-authenticate"] == 'Bearer realm="orderstream"'
    wrong = await http.request(method, path, json={}, headers={"Authorization": "Bearer nope"})
    assert_error(wrong, 401, "unauthorized")
    challenge = wrong.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="orderstream", error="invalid_token"')


async def test_a_cookie_session_still_works_without_a_challenge(http, make_user):
    alice = make_user()
    await login(http, alice)
    response = await http.get("/api/orders")
    assert response.status_code == 200 and "www-authenticate" not in response.headers


# -- 405 and what a write must say ------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("PUT", "/api/orders", {"GET", "HEAD", "POST"}),
    ("PUT", "/api/orders/1", {"GET", "HEAD", "PATCH", "DELETE"}),
    ("PATCH", "/api/tokens", {"GET", "HEAD", "POST"}),
    ("PATCH", "/api/tokens/1", {"GET", "HEAD", "DELETE"}),
    ("PUT", "/api/users/1", {"GET", "HEAD", "PATCH"}),
])
async def test_a_405_allows_every_method_the_path_has(http, make_user, method, path, allowed):
    response = await http.request(method, path, headers=make_user().auth)
    assert_error(response, 405, "method_not_allowed")
    assert {m.strip() for m in response.headers["allow"].split(",")} == allowed


async def test_a_patch_that_changes_nothing_is_422_and_writes_nothing(http, make_user, sql):
    alice = make_user()
    order_id = (await create(http, alice)).json()["id"]
    for body in ({}, {"version": 1}):
        response = await http.patch(f"/api/orders/{order_id}", json=body, headers=alice.auth)
        error = assert_error(response, 422, "invalid")
        assert "nothing to change" in error["message"], error
    assert row(sql, order_id) == (1, "101.5", "new")


async def test_a_form_post_without_draw_is_no_silent_list(http, make_user, sql):
    """curl -d sends a form: a create sent that way must not answer 200 with a list."""
    alice = make_user()
    response = await http.post(
        "/api/orders", headers=alice.auth,
        content=b'{"instrument":"ACME","quantity":"10","price":"101.5"}',
        )
    assert_error(response, 415, "unsupported_media_type")
    response = await http.post(
        "/api/orders", headers={**alice.auth,
                                "Content-Type": "application/x-www-form-urlencoded"},
        content=b'{"instrument":"ACME","quantity":"10","price":"101.5"}')
    error = assert_error(response, 415, "unsupported_media_type")
    assert "application/json" in error["message"], error
    assert sql.execute("SELECT count(*) FROM orders WHERE owner_id = %s",
                       (alice.id,)).fetchone() == (0,)
    # DataTables always sends draw: that is still a list.
    response = await http.post("/api/orders", headers=alice.auth,
                               data={"draw": "3", "start": "0", "length": "10"})
    assert response.status_code == 200 and response.json()["draw"] == 3
