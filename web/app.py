"""Assemble the Starlette app: routes, middleware, error handlers, and the lifespan
that owns the pool, the hub and the listener."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette_login.login_manager import Config as LoginConfig
from starlette_login.login_manager import LoginManager
from starlette_login.middleware import AuthenticationMiddleware

import config
from db import queries
from db.listener import Listener
from db.pool import create_pool
from db.position import Position
from db.rights import Identities, Rights
from web import api, openapi, ops, pages, users_api, ws
from web.auth import TokenOrSessionBackend, load_user
from web.errors import (
    ApiError,
    api_error_handler,
    database_error_handler,
    http_error_handler,
    unexpected_error_handler,
)
from web.hub import Hub
from web.passwords import Passwords
from web.shutdown import close_sockets_on_signal
from web.throttle import LoginThrottle

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
SESSION_COOKIE = "orderstream_session"
SESSION_MAX_AGE = 14 * 24 * 3600  # seconds
SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
     b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
]


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)


class Sessions:
    """The signed session cookie; Secure when the request came over https (or always/never)."""

    def __init__(self, app: ASGIApp, secret_key: str, secure: str) -> None:
        def make(https_only: bool) -> SessionMiddleware:
            return SessionMiddleware(app, secret_key=secret_key, session_cookie=SESSION_COOKIE,
                                     same_site="lax", https_only=https_only,
                                     max_age=SESSION_MAX_AGE)

        self.plain = make(secure == "always")
        self.secure = make(secure != "never")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        https = scope.get("scheme") in ("https", "wss")
        await (self.secure if https else self.plain)(scope, receive, send)


async def _prune_forever(pool: asyncpg.Pool, retention_seconds: float,
                         every_seconds: float = 60.0) -> None:
    """Keep the change log within its retention window."""
    while True:
        try:
            pruned = await queries.prune_changes(pool, retention_seconds)
            if pruned:
                log.info("pruned %d change-log rows", pruned)
            await queries.prune_web_sessions(pool, SESSION_MAX_AGE)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("pruning the change log failed: %s", exc)
        await asyncio.sleep(every_seconds)


def create_app(settings: config.Settings, database_url: str) -> Starlette:
    """The ASGI app for one server process, talking to the database at `database_url`."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        pool = await create_pool(database_url, settings.pool_min_size, settings.pool_max_size)
        hub = Hub(settings.session_queue_size)

        async def fetch_frame(seq: int) -> str | None:
            return await queries.change_frame(pool, seq)

        # Resumes read the change log; a few at a time, so they cannot starve the API.
        replays = asyncio.Semaphore(2)

        async def replay(position: Position, who: Identities, owner_id: int | None
                         ) -> tuple[Rights, list[queries.Change] | None]:
            # A client's replay must fit its session queue; a bigger gap means resync.
            async with replays:
                return await queries.changes_since(
                    pool, position, who, owner_id,
                    min(settings.max_replay_events, settings.session_queue_size - 2))

        async def load_rights(who: Identities) -> Rights:
            return await queries.load_rights(pool, who)

        async def recover(position: Position, who: Identities
                          ) -> tuple[Rights, list[queries.Change] | None]:
            return await queries.changes_since(pool, position, who, None,
                                               settings.max_replay_events)

        async def quote_snapshot(instruments: list[str]) -> list[str]:
            return await queries.quote_frames(pool, instruments)

        listener = Listener(database_url, hub, fetch_frame, load_rights, recover,
                            settings.listener_queue_size)
        try:
            await listener.start()
        except BaseException:
            await pool.close()
            raise
        restore_signals = close_sockets_on_signal(hub)
        pruner = asyncio.create_task(
            _prune_forever(pool, settings.change_log_retention_hours * 3600), name="pruner")
        try:
            yield {
                "settings": settings,
                "pool": pool,
                "hub": hub,
                "listener": listener,
                "passwords": Passwords(settings.argon2_time_cost, settings.argon2_memory_cost_kib),
                "login_throttle": LoginThrottle(settings.login_max_failures),
                "quote_snapshot": quote_snapshot,
                "replay": replay,
            }
        finally:
            restore_signals()
            pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pruner
            await listener.close()
            await pool.close()

    secret = config.secret_key(settings)
    login_manager = LoginManager(redirect_to="/login", secret_key=secret,
                                 config=LoginConfig(COOKIE_HTTPONLY=True, COOKIE_SAMESITE="lax"))
    login_manager.set_user_loader(load_user)

    routes = [
        *pages.routes,
        *api.routes,
        *users_api.routes,
        *openapi.routes,
        *ops.routes,
        *ws.routes,
        Mount("/static", app=StaticFiles(directory=str(STATIC_DIR)), name="static"),
    ]
    middleware = [
        Middleware(SecurityHeaders),
        Middleware(Sessions, secret_key=secret, secure=settings.cookie_secure),
        Middleware(AuthenticationMiddleware, backend=TokenOrSessionBackend(login_manager),
                   login_manager=login_manager, excluded_dirs=["/static", "/healthz", "/metrics"]),
    ]
    exception_handlers = {
        ApiError: api_error_handler,
        HTTPException: http_error_handler,
        asyncpg.PostgresError: database_error_handler,
        Exception: unexpected_error_handler,
    }
    app = Starlette(routes=routes, middleware=middleware,
                    exception_handlers=exception_handlers,  # type: ignore[arg-type]
                    lifespan=lifespan)
    app.state.login_manager = login_manager
    return app
