"""Per-request checks shared by the API handlers: who is asking, and CSRF for cookies."""

from __future__ import annotations

from starlette.requests import Request

from db.pool import PoolBusy
from web.auth import AUTH_METHOD, WebUser, auth_failure, current_user
from web.csrf import HEADER, SAFE_METHODS, csrf_valid
from web.errors import ApiError, busy_error


def api_user(request: Request, staff: bool = False) -> WebUser:
    """The authenticated user, after CSRF for cookie-authenticated unsafe requests.

    A non-staff user asking for a staff-only resource gets 404: it does not exist for them.
    """
    failure = auth_failure(request)
    if failure is not None:  # not "unauthorized": the database could not tell
        raise busy_error(failure) if isinstance(failure, PoolBusy) else failure
    user = current_user(request)
    if user is None:
        if request.scope.get(AUTH_METHOD) == "token" or "authorization" in request.headers:
            raise ApiError(401, "unauthorized", "invalid or revoked API token")
        raise ApiError(401, "unauthorized", "log in or send Authorization: Bearer <token>")
    if (
        request.method not in SAFE_METHODS
        and request.scope.get(AUTH_METHOD) == "session"
        and not csrf_valid(request, request.headers.get(HEADER))
    ):
        raise ApiError(403, "csrf", "missing or wrong X-CSRF-Token header for a cookie session")
    if staff and not user.is_staff:
        raise ApiError(404, "not_found", "not found")
    return user
