"""The JSON API over orders: list (plain and DataTables), create, read, update, delete."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from db import queries
from web.connections import reading, writing
from web.errors import ApiError
from web.etag import etag, if_match, if_none_match
from web.guard import api_user, path_id
from web.listing import datatables_query, plain_query
from web.order_input import json_object, order_values
from web.routing import route

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class RawJSONResponse(Response):
    """JSON assembled from fragments PostgreSQL already encoded; never decoded here."""

    media_type = "application/json"


def _order_id(request: Request) -> int:
    return path_id(request, "order_id", "order")


async def _list_params(request: Request) -> dict[str, str]:
    params = dict(request.query_params)
    if request.method == "POST":
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith(FORM_TYPES):
            raise ApiError(415, "unsupported_media_type",
                           "DataTables POST must be form-encoded; create orders with JSON")
        form = await request.form(max_files=0, max_fields=2000)
        if "draw" not in form and params.get("format") != "datatables":
            # Not DataTables (it always sends draw): most likely a create sent as a form, as
            # curl -d does. Answering it with a list would look like success.
            raise ApiError(415, "unsupported_media_type",
                           "create orders with a JSON body (Content-Type: application/json);"
                           " a form body is a DataTables list request and needs draw")
        params.update({k: v for k, v in form.items() if isinstance(v, str)})
    return params


async def list_orders(request: Request) -> Response:
    user = api_user(request)
    max_page = request.state.settings.max_page_size
    params = await _list_params(request) if request.method == "POST" else dict(request.query_params)
    if params.get("format") == "datatables" or request.method == "POST":
        draw, query = datatables_query(user, params, max_page)
        async with reading(request) as db:
            page = await queries.list_orders(db, query)
        data = []
        for item in page.items_json:
            order = json.loads(item)
            data.append({"DT_RowId": f"order-{order['id']}", **order})
        return JSONResponse({"draw": draw, "recordsTotal": page.total,
                             "recordsFiltered": page.filtered, "data": data, "seq": page.seq})
    query = plain_query(user, params, max_page)
    async with reading(request) as db:
        page = await queries.list_orders(db, query)
    body = (
        '{"items":[' + ",".join(page.items_json) + "]"
        f',"total":{page.total},"filtered":{page.filtered},"seq":{page.seq}'
        f',"limit":{query.limit},"offset":{query.offset}}}'
    )
    return RawJSONResponse(body)


async def list_orders_post(request: Request) -> Response:
    """POST /api/orders: JSON creates an order; a form body is a DataTables list request."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(FORM_TYPES):
        return await list_orders(request)
    return await create_order(request)


async def create_order(request: Request) -> Response:
    user = api_user(request)
    data = await json_object(request)
    values, _ = order_values(data, creating=True, may_set_owner=user.is_staff)
    values.setdefault("owner_id", user.id)
    async with writing(request) as db:
        order_id, order, version = await queries.create_order(db, values)
    return RawJSONResponse(order, status_code=201,
                           headers={"Location": f"/api/orders/{order_id}", "ETag": etag(version)})


async def get_order(request: Request) -> Response:
    user = api_user(request)
    order_id = _order_id(request)
    scope = None if user.is_staff else user.id
    async with reading(request) as db:
        found = await queries.get_order(db, order_id, scope)
    if found is None:
        raise ApiError(404, "not_found", f"no order {order_id}")
    order, version = found
    headers = {"ETag": etag(version)}
    if if_none_match(request, version):
        return Response(status_code=304, headers=headers)
    return RawJSONResponse(order, headers=headers)


def _precondition_failed(order_id: int, current: int) -> ApiError:
    return ApiError(412, "precondition_failed",
                    f"order {order_id} is at version {current} ({etag(current)}),"
                    " which If-Match does not name; nothing was changed",
                    {"If-Match": f"the current ETag is {etag(current)}"},
                    headers={"ETag": etag(current)})


async def update_order(request: Request) -> Response:
    user = api_user(request)
    order_id = _order_id(request)
    data = await json_object(request)
    values, expected = order_values(data, creating=False, may_set_owner=user.is_staff)
    versions = if_match(request)
    scope = None if user.is_staff else user.id
    async with writing(request) as db:
        updated = await queries.update_order(db, order_id, scope, values, expected, versions)
        current = None if updated is not None else await queries.order_version(
            db, order_id, scope)
    if updated is None:
        if current is None:
            raise ApiError(404, "not_found", f"no order {order_id}")
        if versions is not None and current not in versions:
            raise _precondition_failed(order_id, current)
        raise ApiError(409, "conflict", f"order {order_id} is at version {current}, not {expected}",
                       {"version": f"is {current}"})
    order, version = updated
    return RawJSONResponse(order, headers={"ETag": etag(version)})


async def delete_order(request: Request) -> Response:
    user = api_user(request)
    order_id = _order_id(request)
    versions = if_match(request)
    scope = None if user.is_staff else user.id
    async with writing(request) as db:
        deleted = await queries.delete_order(db, order_id, scope, versions)
        current = None if deleted else await queries.order_version(db, order_id, scope)
    if not deleted:
        if current is None:
            raise ApiError(404, "not_found", f"no order {order_id}")
        raise _precondition_failed(order_id, current)
    # No ETag: a deleted order has no representation left to tag. The delete event on
    # /ws carries the version it deleted.
    return Response(status_code=204)


routes = [
    route("/api/orders", get=list_orders, post=list_orders_post),
    route("/api/orders/{order_id}", get=get_order, patch=update_order, delete=delete_order),
]
