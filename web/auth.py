"""Who is asking: Bearer tokens for programs, the signed session cookie for browsers."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from starlette.authentication import AuthCredentials, AuthenticationBackend, BaseUser
from starlette.requests import HTTPConnection
from starlette_login.backends import SessionAuthBackend
from starlette_login.login_manager import LoginManager
from starlette_login.mixins import AnonymousUser, UserMixin

from db import queries
from db.failures import DATABASE_ERRORS
from web.subprotocol import bearer_token

log = logging.getLogger(__name__)

# scope["auth_method"]: how the current request authenticated; CSRF applies to "session" only.
AUTH_METHOD = "auth_method"
# scope["auth_failure"]: the database error that kept the request from being authenticated.
AUTH_FAILURE = "auth_failure"
# scope["rights_epoch"]: the listener's rights_epoch when the credentials were read.
RIGHTS_EPOCH = "rights_epoch"


@dataclass(frozen=True)
class WebUser(UserMixin):
    id: int
    username: str
    is_staff: bool
    token_id: int | None = None  # authenticated by this API token
    session_id: str | None = None  # or by this browser session

    @property
    def identity(self) -> int:
        return self.id

    @property
    def display_name(self) -> str:
        return self.username

    @classmethod
    def from_db(cls, user: queries.User) -> WebUser:
        return cls(user.id, user.username, user.is_staff, user.token_id)


SESSION_ID_KEY = "sid"


async def load_user(conn: HTTPConnection, user_id: object) -> WebUser | None:
    """starlette-login's user loader: the signed cookie names the user and the session;
    the session must still exist on the server (logout and password resets end it)."""
    sid = conn.session.get(SESSION_ID_KEY)
    try:
        uid = int(str(user_id))
    except ValueError:
        return None
    if not isinstance(sid, str):
        return None
    user = await queries.user_by_session(conn.state.pool, sid, uid)
    if user is None:
        return None
    return WebUser(user.id, user.username, user.is_staff, session_id=sid)


class TokenOrSessionBackend(AuthenticationBackend):
    """`Authorization: Bearer <token>` when present (and then only that), else the session."""

    def __init__(self, login_manager: LoginManager) -> None:
        self._session = SessionAuthBackend(login_manager)

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser]:
        # Before the credentials are read: see rights_unchanged_since_auth.
        conn.scope[RIGHTS_EPOCH] = conn.state.listener.rights_epoch
        try:
            return await self._authenticate(conn)
        except DATABASE_ERRORS as exc:
            # Raised here, in a middleware, it would bypass the error handlers and answer
            # 500. The request goes on unauthenticated instead and the route answers the
            # failure (see auth_failure), as it answers its own database errors.
            log.warning("could not authenticate %s: %s: %s", conn.url.path,
                        type(exc).__name__, exc)
            conn.scope[AUTH_FAILURE] = exc
            return AuthCredentials(), AnonymousUser()

    async def _authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser]:
        header = conn.headers.get("authorization")
        offered_token = bearer_token(conn.scope) if header is None else None
        if offered_token is not None:  # a browser page's token, as a WebSocket subprotocol
            header = f"Bearer {offered_token}"
        if header is not None:
            conn.scope[AUTH_METHOD] = "token"
            scheme, _, token = header.partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token or len(token) > 200:
                return AuthCredentials(), AnonymousUser()
            user = await queries.user_by_token(conn.state.pool, token)
            if user is None:
                return AuthCredentials(), AnonymousUser()
            return AuthCredentials(["authenticated"]), WebUser.from_db(user)
        conn.scope[AUTH_METHOD] = "session"
        credentials, user = await self._session.authenticate(conn)
        if user is None:  # the session names a user who no longer exists
            return AuthCredentials(), AnonymousUser()
        return credentials, user


def current_user(conn: HTTPConnection) -> WebUser | None:
    user = conn.scope.get("user")
    return user if isinstance(user, WebUser) else None


def auth_failure(conn: HTTPConnection) -> Exception | None:
    """The database error that kept this request from being authenticated, if any
    (PoolBusy, a PostgresError, or a lost or refused connection)."""
    return conn.scope.get(AUTH_FAILURE)


def rights_unchanged_since_auth(conn: HTTPConnection) -> bool:
    """Whether no rights change has been applied since this connection's credentials were
    read. A socket only hears of rights changes once it is registered with the hub: if one
    was applied in between (a revoked token, say), it must check its own rights."""
    return conn.scope.get(RIGHTS_EPOCH) == conn.state.listener.rights_epoch
