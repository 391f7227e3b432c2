"""HTML pages: login, logout, the dashboard and the staff admin page."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates
from starlette_login.utils import login_user, logout_user

from db import queries
from web.auth import SESSION_ID_KEY, WebUser, auth_failure, current_user
from web.csrf import FORM_FIELD, csrf_token, csrf_valid, same_origin
from web.errors import error_response, failure_error
from web.order_input import SIDES, STATUSES
from web.routing import route
from web.throttle import LoginThrottle
from web.users_api import MAX_PASSWORD

templates = Jinja2Templates(directory=str(Path(__file__).resolve().parent / "templates"))
templates.env.globals.update(order_sides=SIDES, order_statuses=STATUSES)


def _safe_next(value: object) -> str:
    """Only same-site relative paths: never redirect a login to another host."""
    if not isinstance(value, str) or not value.startswith("/") or value.startswith("//"):
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or "\\" in value:
        return "/"
    return value


def _render(request: Request, name: str, status: int = 200, **context: object) -> Response:
    context.setdefault("user", current_user(request))
    context["csrf_token"] = csrf_token(request)
    return templates.TemplateResponse(request, name, context, status_code=status)


def _login_redirect(request: Request) -> Response:
    failure = auth_failure(request)
    if failure is not None:  # logged in, maybe: the database could not tell
        raise failure_error(failure)
    return RedirectResponse(f"/login?next={request.url.path}", status_code=303)


async def dashboard(request: Request) -> Response:
    if current_user(request) is None:
        return _login_redirect(request)
    return _render(request, "dashboard.html")


async def admin(request: Request) -> Response:
    user = current_user(request)
    if user is None:
        return _login_redirect(request)
    if not user.is_staff:
        return PlainTextResponse("Not Found", status_code=404)
    return _render(request, "admin.html")


async def login_form(request: Request) -> Response:
    return _render(request, "login.html", next=_safe_next(request.query_params.get("next")),
                   error=None, username="")


async def login(request: Request) -> Response:
    form = await request.form(max_files=0, max_fields=20)
    username = str(form.get("username", ""))[:64].strip()
    password = str(form.get("password", ""))
    next_url = _safe_next(form.get("next"))
    if not _login_csrf_ok(request, form.get(FORM_FIELD)):
        return _render(request, "login.html", status=403, next=next_url, username=username,
                       error="Your form expired; please try again.")
    address = request.client.host if request.client else "?"
    throttle: LoginThrottle = request.state.login_throttle
    # Reserved before the hash is checked: concurrent guesses count against the limit too.
    attempt = throttle.reserve(username, address)
    if attempt is None:
        return _too_many_logins(request, throttle.retry_after(username, address), next_url,
                                username)
    try:
        # No account has a password longer than the API takes: one is wrong as it stands
        # (cut to fit, it could match), and not worth hashing (the cost grows with length).
        fits = len(password) <= MAX_PASSWORD
        found = (await queries.user_with_hash(request.state.pool, username)
                 if username and fits else None)
        password_hash = found[1] if found else None
        ok = fits and await request.state.passwords.verify_async(password_hash, password)
        if not ok or found is None:
            attempt.failed()
            page = _render(request, "login.html", status=401, next=next_url,
                           username=username, error="Wrong username or password.")
            # Every 401 names a way to authenticate (RFC 9110), this page's included.
            page.headers["WWW-Authenticate"] = 'Bearer realm="orderstream"'
            return page
        attempt.succeeded()
    finally:
        attempt.release()  # the check never ended (the database failed): not a failure
    # A fresh session on login: nothing from before (CSRF token included) survives.
    request.session.clear()
    await login_user(request, WebUser.from_db(found[0]))
    request.session[SESSION_ID_KEY] = await queries.start_web_session(request.state.pool,
                                                                      found[0].id)
    return RedirectResponse(next_url, status_code=303)


def _too_many_logins(request: Request, retry_after: int, next_url: str,
                     username: str) -> Response:
    """429 with Retry-After: the login page again for a browser, the JSON error otherwise."""
    message = f"Too many failed logins for this username or address; retry in {retry_after} s"
    headers = {"Retry-After": str(retry_after)}
    if "text/html" not in request.headers.get("accept", ""):
        return error_response(429, "too_many_requests", message, headers=headers)
    page = _render(request, "login.html", status=429, next=next_url, username=username,
                   error=f"{message}.")
    page.headers.update(headers)
    return page


def _login_csrf_ok(request: Request, submitted: object) -> bool:
    """A login form carries the session's token. A program posting credentials without
    one is fine as long as no browser is involved: browsers send Origin on every
    cross-site POST, so a foreign (or opaque "null") Origin is refused."""
    if submitted is not None:
        return csrf_valid(request, str(submitted))
    return same_origin(request)


async def logout(request: Request) -> Response:
    form = await request.form(max_files=0, max_fields=20)
    if current_user(request) is not None and not csrf_valid(request, str(form.get(FORM_FIELD, ""))):
        return Response("CSRF check failed", status_code=403, media_type="text/plain")
    sid = request.session.get(SESSION_ID_KEY)
    if isinstance(sid, str):
        await queries.end_web_session(request.state.pool, sid)
    await logout_user(request)
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


routes = [
    Route("/", dashboard, methods=["GET"]),
    Route("/admin", admin, methods=["GET"]),
    route("/login", get=login_form, post=login),
    Route("/logout", logout, methods=["POST"]),
]
