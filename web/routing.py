"""One Starlette route per path, whatever its methods: with a Route per method, a request
in a method the path lacks gets a 405 whose Allow header lists only the first route's
methods, not every method the path has (RFC 9110 wants them all)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

Handler = Callable[[Request], Awaitable[Response]]


def route(path: str, **handlers: Handler) -> Route:
    """A route for `path` that hands each request to the handler named by its method
    (`get=...`, `post=...`); HEAD goes to GET's, as Starlette's own routes do."""
    by_method = {method.upper(): handler for method, handler in handlers.items()}
    if "GET" in by_method:
        by_method.setdefault("HEAD", by_method["GET"])

    async def endpoint(request: Request) -> Response:
        return await by_method[request.method](request)

    return Route(path, endpoint, methods=list(by_method))
