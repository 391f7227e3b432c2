"""The DataTables server-side processing protocol on /api/orders (GET ?format=datatables
and POST form), as the DataTables manual defines the request and the answer."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import User, insert_order, login

COLUMNS = ["id", "instrument", "side", "quantity", "price", "status", "owner"]
ANSWER_KEYS = {"draw", "recordsTotal", "recordsFiltered", "data"}


def dt_params(*, draw: Any = 1, start: int = 0, length: int = 10, search: str = "",
              order: list[tuple[int | str, str]] | None = None,
              not_searchable: tuple[str, ...] = (), not_orderable: tuple[str, ...] = (),
              column_search: dict[str, str] | None = None,
              columns: list[str] | None = None) -> dict[str, str]:
    """The form DataTables sends for a table with `columns`."""
    params: dict[str, str] = {"draw": str(draw), "start": str(start), "length": str(length),
                              "search[value]": search, "search[regex]": "false"}
    for i, name in enumerate(COLUMNS if columns is None else columns):
        params[f"columns[{i}][data]"] = name
        params[f"columns[{i}][name]"] = ""
        params[f"columns[{i}][searchable]"] = "false" if name in not_searchable else "true"
        params[f"columns[{i}][orderable]"] = "false" if name in not_orderable else "true"
        params[f"columns[{i}][search][value]"] = (column_search or {}).get(name, "")
        params[f"columns[{i}][search][regex]"] = "false"
    for i, (column, direction) in enumerate(order or [(0, "asc")]):
        params[f"order[{i}][column]"] = str(column)
        params[f"order[{i}][dir]"] = direction
    return params


async def dt_get(http: httpx.AsyncClient, user: User, params: dict[str, str]) -> dict[str, Any]:
    response = await http.get("/api/orders", params={"format": "datatables", **params},
                              headers=user.auth)
    assert response.status_code == 200, response.text
    return check_answer(response.json())


async def dt_post(http: httpx.AsyncClient, user: User, params: dict[str, str]) -> dict[str, Any]:
    response = await http.post("/api/orders", data=params, headers=user.auth)
    assert response.status_code == 200, response.text
    return check_answer(response.json())


def check_answer(answer: dict[str, Any]) -> dict[str, Any]:
    # `seq` rides along (the page is consistent with the stream up to it); nothing else.
    assert set(answer) - {"seq"} == ANSWER_KEYS, answer.keys()
    assert "error" not in answer
    assert isinstance(answer["draw"], int)
    for row in answer["data"]:
        assert row["DT_RowId"] == f"order-{row['id']}"
        assert isinstance(row["quantity"], str) and isinstance(row["price"], str)
    return answer


def ids(answer: dict[str, Any]) -> list[int]:
    return [row["id"] for row in answer["data"]]


async def seed(sql, user: User) -> list[int]:  # type: ignore[no-untyped-def]
    rows = [("ACME", "buy", "10", "5"), ("ACME", "sell", "2", "7"), ("GLOBEX", "buy", "2", "9"),
            ("INITECH", "sell", "30", "1"), ("UMBRELLA", "buy", "4", "7")]
    made = []
    for instrument, side, quantity, price in rows:
        order_id = insert_order(sql, user.id, instrument, quantity, price)
        sql.execute("UPDATE orders SET side = %s WHERE id = %s", (side, order_id))
        made.append(order_id)
    return made


async def test_get_and_post_answer_the_same(http, make_user, sql):
    alice = make_user()
    made = await seed(sql, alice)
    params = dt_params(draw=3, order=[(0, "asc")])
    by_get, by_post = await dt_get(http, alice, params), await dt_post(http, alice, params)
    assert by_get["draw"] == by_post["draw"] == 3
    assert ids(by_get) == ids(by_post) == made
    assert (by_get["recordsTotal"], by_get["recordsFiltered"]) == (5, 5)
    row = by_get["data"][0]
    assert (row["instrument"], row["side"], row["quantity"], row["price"]) == ("ACME", "buy",
                                                                               "10", "5")
    assert row["owner"] == alice.username


async def test_post_form_with_cookie_session_needs_csrf(server, make_user, sql):
    alice = make_user()
    made = await seed(sql, alice)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as browser:
        csrf = await login(browser, alice)
        refused = await browser.post("/api/orders", data=dt_params())
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "csrf"
        response = await browser.post("/api/orders", data=dt_params(draw=9),
                                      headers={"X-CSRF-Token": csrf})
        assert response.status_code == 200, response.text
        answer = check_answer(response.json())
        assert answer["draw"] == 9 and ids(answer) == made


async def test_draw_is_echoed_as_an_integer(http, make_user):
    alice = make_user()
    for sent, echoed in [("1", 1), ("42", 42), ("abc", 0), ("", 0), ("1.5", 0), ("<x>", 0)]:
        answer = await dt_get(http, alice, dt_params(draw=sent))
        assert answer["draw"] == echoed, sent
    params = dt_params()
    del params["draw"]
    assert (await dt_get(http, alice, params))["draw"] == 0


async def test_start_and_length_page(http, make_user, sql):
    alice = make_user()
    made = await seed(sql, alice)
    pages = [ids(await dt_post(http, alice, dt_params(start=start, length=2)))
             for start in (0, 2, 4, 6)]
    assert pages == [made[0:2], made[2:4], made[4:], []]
    answer = await dt_post(http, alice, dt_params(start=1, length=3))
    assert ids(answer) == made[1:4]
    assert (answer["recordsTotal"], answer["recordsFiltered"]) == (5, 5)


async def test_length_minus_one_means_all_up_to_the_cap(http, make_user, sql):
    alice = make_user()
    sql.execute("INSERT INTO orders (owner_id, instrument, quantity, price)"
                " SELECT %s, 'BULK' || n, n, 1 FROM generate_series(1, 1005) AS n", (alice.id,))
    everything = await dt_get(http, alice, dt_params(length=-1))
    assert len(everything["data"]) == 1000  # settings.max_page_size
    assert (everything["recordsTotal"], everything["recordsFiltered"]) == (1005, 1005)
    rest = await dt_get(http, alice, dt_params(length=-1, start=1000))
    assert len(rest["data"]) == 5
    assert not set(ids(everything)) & set(ids(rest))
    few = await dt_get(http, alice, dt_params(length=-1, search="BULK100"))
    # BULK100 and BULK1000..BULK1005 (quantity 100 and 1000..1005 also contain "100")
    assert few["recordsFiltered"] == len(few["data"]) == 7


async def test_search_across_searchable_columns_words_anded(http, make_user, sql):
    alice = make_user()
    made = await seed(sql, alice)
    acme = await dt_post(http, alice, dt_params(search="acme"))
    assert ids(acme) == made[:2]
    assert (acme["recordsTotal"], acme["recordsFiltered"]) == (5, 2)
    acme_sell = await dt_post(http, alice, dt_params(search="ACME sell"))
    assert ids(acme_sell) == [made[1]]
    # Both words must match, each in any searchable column.
    assert ids(await dt_post(http, alice, dt_params(search="BUY umbr"))) == [made[4]]
    assert ids(await dt_post(http, alice, dt_params(search="acme globex"))) == []
    # An owner's name is searchable: every row is alice's.
    assert len(ids(await dt_post(http, alice, dt_params(search=alice.username)))) == 5


async def test_unsearchable_columns_are_not_searched(http, make_user, sql):
    alice = make_user()
    made = await seed(sql, alice)
    hidden = dt_params(search="globex", not_searchable=("instrument",))
    answer = await dt_post(http, alice, hidden)
    assert ids(answer) == [] and answer["recordsFiltered"] == 0 and answer["recordsTotal"] == 5
    # "sell" still matches through the side column.
    assert ids(await dt_post(http, alice, dt_params(search="sell",
                                                    not_searchable=("instrument",)))) == [
        made[1], made[3]]
    # Only some columns listed: the search covers those only.
    only_side = dt_params(search="acme", columns=["id", "side"])
    assert ids(await dt_post(http, alice, only_side)) == []
    # No searchable column at all: a search matches nothing (and is no error).
    none = await dt_post(http, alice, dt_params(search="acme", not_searchable=tuple(COLUMNS)))
    assert ids(none) == [] and (none["recordsTotal"], none["recordsFiltered"]) == (5, 0)
    # A per-column search value filters that column.
    by_column = dt_params(column_search={"instrument": "acme", "side": "sell"})
    assert ids(await dt_post(http, alice, by_column)) == [made[1]]


async def test_order_by_several_columns_and_orderable_false(http, make_user, sql):
    alice = make_user()
    made = await seed(sql, alice)
    index = {name: i for i, name in enumerate(COLUMNS)}

    by_price = await dt_post(http, alice, dt_params(order=[(index["price"], "desc"),
                                                           (index["quantity"], "asc")]))
    assert [(r["price"], r["quantity"]) for r in by_price["data"]] == [
        ("9", "2"), ("7", "2"), ("7", "4"), ("5", "10"), ("1", "30")]
    by_side = await dt_post(http, alice, dt_params(order=[(index["side"], "asc"),
                                                          (index["instrument"], "desc")]))
    assert [(r["side"], r["instrument"]) for r in by_side["data"]] == [
        ("buy", "UMBRELLA"), ("buy", "GLOBEX"), ("buy", "ACME"), ("sell", "INITECH"),
        ("sell", "ACME")]
    # Numeric, not text order: "10" > "4" > "2".
    by_quantity = await dt_post(http, alice, dt_params(order=[(index["quantity"], "desc"),
                                                              (index["id"], "asc")]))
    assert [r["quantity"] for r in by_quantity["data"]] == ["30", "10", "4", "2", "2"]
    assert [r["id"] for r in by_quantity["data"]][3:] == [made[1], made[2]]

    # orderable=false: that order entry is ignored and the next one applies.
    ignored = dt_params(order=[(index["price"], "desc"), (index["id"], "asc")],
                        not_orderable=("price",))
    assert ids(await dt_post(http, alice, ignored)) == made
    only_ignored = dt_params(order=[(index["price"], "asc")], not_orderable=("price",))
    assert sorted(ids(await dt_post(http, alice, only_ignored))) == made


async def test_bad_indexes_are_ignored_not_fatal(http, make_user, sql):
    alice = make_user()
    made = await seed(sql, alice)
    index = {name: i for i, name in enumerate(COLUMNS)}
    params = dt_params(order=[(99, "asc"), ("abc", "desc"), (-1, "asc"), ("", "asc"),
                              (index["id"], "asc")])
    params["columns[999999][data]"] = "instrument"
    params["columns[7][data]"] = "no_such_column"
    params["columns[8][data]"] = "note"  # a real column, neither sortable nor searchable here
    params["order[5][column]"] = "8"
    params["order[6][column]"] = "7"
    params["order[x][column]"] = "1"
    params["columns[][data]"] = "id"
    for answer in (await dt_get(http, alice, params), await dt_post(http, alice, params)):
        assert ids(answer) == made
        assert answer["recordsFiltered"] == 5
    weird_dir = dt_params(order=[(index["id"], "sideways")])
    assert ids(await dt_post(http, alice, weird_dir)) == made  # not "desc": ascending


async def test_rows_are_the_users_own_and_staff_may_filter(http, make_user, sql):
    alice, bob, staff = make_user(), make_user(), make_user(staff=True)
    made = await seed(sql, alice)
    insert_order(sql, bob.id, "BOBS")
    answer = await dt_post(http, bob, dt_params(length=-1))
    assert [r["instrument"] for r in answer["data"]] == ["BOBS"]
    assert answer["recordsTotal"] == 1
    staff_view = await dt_post(http, staff, {**dt_params(length=-1), "owner": str(alice.id)})
    assert ids(staff_view) == made and staff_view["recordsTotal"] == 5
    everyone = await dt_post(http, staff, dt_params(length=-1, search=alice.username))
    assert ids(everyone) == made and everyone["recordsTotal"] > 5
    foreign = await http.post("/api/orders", data={**dt_params(), "owner": str(alice.id)},
                              headers=bob.auth)
    assert foreign.status_code == 403
