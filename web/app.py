"""Assemble the Starlette app: routes, middleware, error handlers, and the lifespan
that owns the pool, the hub and the listener."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypedDict

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
from db.changelog import ChangeLog, upkeep
from db.failures import CONNECTION_ERRORS
from db.listener import Listener
from db.pool import ApiPool, PoolBusy, create_pool
from web import api, openapi, ops, pages, quotes_api, tokens_api, users_api, ws
from web.auth import TokenOrSessionBackend, load_user
from web.body import BodyLimit
from web.collector import GcTimer, startup_heap_frozen
from web.errors import (
    ApiError,
    api_error_handler,
    database_error_handler,
    http_error_handler,
    pool_busy_handler,
    unexpected_error_handler,
    unreachable_handler,
)
from web.frame_writer import Flusher
from web.hub import Hub
from web.metrics import CounterSync, CountRefusals, counter_sync, mark_process_dead
from web.passwords import Passwords
from web.protocols import LargeFrameDeflateFactory, deflate_factory
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


class App(Starlette):
    """Starlette, but a WebSocket's conversation runs outside the middleware once the
    handshake is through it (web/ws.py, run_socket)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await ws.run_socket(super().__call__, scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


class State(TypedDict):
    """What the lifespan shares with every request (as request.state.<name>). A TypedDict,
    as in Starlette's docs: Starlette copies the lifespan's mapping into each request's
    scope, so a frozen object would have to be unpacked there anyway."""

    settings: config.Settings
    pool: ApiPool
    hub: Hub
    # Writes the live events offered to sockets, once per turn of the event loop.
    flusher: Flusher
    listener: Listener
    passwords: Passwords
    login_throttle: LoginThrottle
    metrics: CounterSync
    # What /ws offers clients that ask for compression (web/protocols.py; None: nothing).
    deflate: LargeFrameDeflateFactory | None


def create_app(settings: config.Settings, database_url: str) -> Starlette:
    """The ASGI app for one server process, talking to the database at `database_url`."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        async with contextlib.AsyncExitStack() as stack:
            pool = await create_pool(database_url, settings.pool_min_size,
                                     settings.pool_max_size,
                                     acquire_timeout_s=settings.pool_acquire_timeout_s,
                                     read_reserve=settings.pool_read_reserve,
                                     statement_timeout_ms=settings.api_statement_timeout_ms,
                                     lock_timeout_ms=settings.api_lock_timeout_ms)
            stack.push_async_callback(pool.close)
            # Sessions that are behind read the log on connections of their own.
            catch_up_log = ChangeLog(database_url, settings.log_read_connections,
                                     settings.log_statement_timeout_ms, "orderstream-catch-up")
            await catch_up_log.open()
            stack.push_async_callback(catch_up_log.close)
            hub = Hub(catch_up_log, settings.session_queue_bytes)
            listener = Listener(database_url, hub, settings.listener_queue_size,
                                log_statement_timeout_ms=settings.log_statement_timeout_ms)
            await listener.start()
            stack.push_async_callback(listener.close)
            stack.callback(close_sockets_on_signal(hub))
            pruner = asyncio.create_task(
                upkeep(pool, settings.change_log_retention_hours * 3600, SESSION_MAX_AGE),
                name="upkeep")
            stack.callback(pruner.cancel)
            gc_timer = GcTimer()
            metrics = counter_sync(hub, listener, gc_timer.flush)
            syncer = asyncio.create_task(metrics.run(), name="metrics")
            stack.callback(syncer.cancel)
            # Under --workers: this worker's live gauges leave the sums when it stops.
            stack.callback(mark_process_dead, os.getpid())
            state = State(
                settings=settings,
                pool=pool,
                hub=hub,
                flusher=Flusher(),
                listener=listener,
                passwords=Passwords(settings.argon2_time_cost, settings.argon2_memory_cost_kib,
                                    settings.password_hash_concurrency),
                login_throttle=LoginThrottle(settings.login_max_failures),
                metrics=metrics,
                deflate=deflate_factory(settings.ws_compress_min_bytes),
            )
            stack.enter_context(startup_heap_frozen())
            # After the freeze's own full pass, which stops no socket: none is open yet.
            stack.enter_context(gc_timer.installed())
            yield state

    secret = config.secret_key(settings)
    login_manager = LoginManager(redirect_to="/login", secret_key=secret,
                                 config=LoginConfig(COOKIE_HTTPONLY=True, COOKIE_SAMESITE="lax"))
    login_manager.set_user_loader(load_user)

    routes = [
        *pages.routes,
        *api.routes,
        *users_api.routes,
        *tokens_api.routes,
        *quotes_api.routes,
        *openapi.routes,
        *ops.routes,
        *ws.routes,
        Mount("/static", app=StaticFiles(directory=str(STATIC_DIR)), name="static"),
    ]
    middleware = [
        Middleware(CountRefusals),
        Middleware(SecurityHeaders),
        Middleware(BodyLimit),  # before sessions and auth: a 413 costs no database query
        Middleware(Sessions, secret_key=secret, secure=settings.cookie_secure),
        Middleware(AuthenticationMiddleware, backend=TokenOrSessionBackend(login_manager),
                   login_manager=login_manager, excluded_dirs=["/static", "/healthz", "/metrics"]),
    ]
    exception_handlers = {
        ApiError: api_error_handler,
        PoolBusy: pool_busy_handler,
        HTTPException: http_error_handler,
        asyncpg.PostgresError: database_error_handler,
        # Raised by a lost or refused connection (PoolBusy, an OSError, has its own above).
        **{kind: unreachable_handler for kind in CONNECTION_ERRORS},
        Exception: unexpected_error_handler,
    }
    app = App(routes=routes, middleware=middleware,
              exception_handlers=exception_handlers,  # type: ignore[arg-type]
              lifespan=lifespan)
    app.state.login_manager = login_manager
    return app
