"""Per-request checks shared by the API handlers: who is asking, and CSRF for cookies."""

from __future__ import annotations

from starlette.requests import Request

from db.queries import MAX_BIGINT
from web.auth import AUTH_METHOD, WebUser, auth_failure, current_user
from web.csrf import HEADER, SAFE_METHODS, csrf_valid
from web.errors import ApiError, failure_error


def api_user(request: Request, staff: bool = False) -> WebUser:
    """The authenticated user, after CSRF for cookie-authenticated unsafe requests.

    A non-staff user asking for a staff-only resource gets 404: it does not exist for them.
    """
    failure = auth_failure(request)
    if failure is not None:  # not "unauthorized": the database could not tell
        raise failure_error(failure)
    user = current_user(request)
    if user is None:
        if request.scope.get(AUTH_METHOD) == "token" or "authorization" in request.headers:
            raise ApiError(401, "unauthorized", "invalid or revoked API token",
                           headers=www_authenticate(request))
        raise ApiError(401, "unauthorized", "log in or send Authorization: Bearer <token>",
                       headers=www_authenticate(request))
    if (
        request.method not in SAFE_METHODS
        and request.scope.get(AUTH_METHOD) == "session"
        and not csrf_valid(request, request.headers.get(HEADER))
    ):
        raise ApiError(403, "csrf", "missing or wrong X-CSRF-Token header for a cookie session")
    if staff and not user.is_staff:
        raise ApiError(404, "not_found", "not found")
    return user


def www_authenticate(request: Request) -> dict[str, str]:
    """The challenge every 401 carries (RFC 6750): a bearer token was sent and refused
    says error="invalid_token"; no credentials at all, just the scheme."""
    scheme = request.headers.get("authorization", "").partition(" ")[0].lower()
    if scheme == "bearer":
        return {"WWW-Authenticate": 'Bearer realm="orderstream", error="invalid_token",'
                                    ' error_description="invalid or revoked API token"'}
    return {"WWW-Authenticate": 'Bearer realm="orderstream"'}


def path_id(request: Request, name: str, what: str) -> int:
    """A positive bigint path parameter; anything else is a 404 naming the value."""
    raw = request.path_params[name]
    # Plain ASCII digits only: int() would also take "+7", " 7", "7_0" and Arabic-Indic
    # digits (and refuses more than 4300 digits).
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 20 or not 1 <= int(raw) <= MAX_BIGINT:
        raise ApiError(404, "not_found", f"no {what} {raw!r}")
    return int(raw)
