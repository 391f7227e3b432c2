"""Settings: settings.toml, then ORDERSTREAM_<KEY> / DATABASE_URL, then explicit overrides;
every value checked against its rule (RULES) as a Settings is made."""

from __future__ import annotations

import math
import os
import secrets
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from argon2 import DEFAULT_PARALLELISM
from argon2.low_level import lib as argon2_lib

from cli.logs import FORMATS

ROOT = Path(__file__).resolve().parent
SETTINGS_FILE = ROOT / "settings.toml"
ENV_PREFIX = "ORDERSTREAM_"


class SettingsError(ValueError):
    """A setting has a value of the wrong kind, or one outside what its rule allows."""


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    database_url: str = ""
    data_dir: str = "var"
    secret_key: str = ""
    cookie_secure: str = "auto"
    allowed_origins: list[str] = field(default_factory=list)
    pool_min_size: int = 2
    pool_max_size: int = 10
    pool_acquire_timeout_s: float = 2.0
    pool_read_reserve: int = 3
    api_statement_timeout_ms: int = 5000
    api_lock_timeout_ms: int = 500
    session_queue_bytes: int = 1048576
    listener_queue_size: int = 20000
    max_page_size: int = 1000
    change_log_retention_hours: float = 24.0
    log_read_connections: int = 4
    log_statement_timeout_ms: int = 10000
    argon2_time_cost: int = 3
    argon2_memory_cost_kib: int = 65536
    login_max_failures: int = 10
    password_hash_concurrency: int = 0
    max_sockets_per_user: int = 50
    ws_compress_min_bytes: int = 4096
    log_level: str = "info"
    log_format: str = "text"

    def checked(self) -> Settings:
        """These settings, if every value keeps its rule (RULES); else SettingsError. Only
        the final values are checked: one a later layer replaces (settings.toml by the
        environment, either by a flag) does not matter."""
        for f in fields(self):
            allowed, problem = RULES[f.name]
            said = problem(getattr(self, f.name))
            if said is not None:
                raise SettingsError(f"setting {f.name!r}: must be {allowed}, {said}")
        return self

    @property
    def data_path(self) -> Path:
        path = Path(self.data_dir)
        return path if path.is_absolute() else ROOT / path

    def with_overrides(self, **overrides: Any) -> Settings:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for key, value in overrides.items():
            if value is not None:
                values[key] = _coerce(key, value, type(values[key]))
        return Settings(**values)


def _coerce(key: str, value: Any, kind: type) -> Any:
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str):
        raise SettingsError(f"setting {key!r}: expected {kind.__name__}, got {value!r}")
    text = value.strip()
    try:
        if kind is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(text)
        if kind is list:
            return [item.strip() for item in text.split(",") if item.strip()]
        return kind(text)
    except ValueError:
        raise SettingsError(f"setting {key!r}: expected {kind.__name__}, got {value!r}") from None


# -- the rules: (what is allowed, in words; what is wrong with a value, or None) -------------

Rule = tuple[str, Callable[[Any], str | None]]


def finite(value: float) -> bool:
    """Not nan or infinite (an int always is: math.isfinite would overflow on a huge one)."""
    return not isinstance(value, float) or math.isfinite(value)


def _within(low: float, high: float | None, zero: str = "") -> Rule:
    """low..high inclusive (no upper bound when high is None); `zero`: what 0 means."""
    if zero:
        allowed = f"0 ({zero}) or more" if high is None else f"0 ({zero}) to {high}"
    else:
        allowed = f"{low} or more" if high is None else f"{low}-{high}"

    def problem(value: float) -> str | None:
        fits = finite(value) and low <= value and (high is None or value <= high)
        return None if fits else f"got {value!r}"

    return allowed, problem


def _above_zero(high: float, meaning: str) -> Rule:
    def problem(value: float) -> str | None:
        return None if finite(value) and 0 < value <= high else f"got {value!r}"

    return f"above 0, at most {high} ({meaning})", problem


def _one_of(*choices: str, any_case: bool = False) -> Rule:
    def problem(value: str) -> str | None:
        return None if (value.lower() if any_case else value) in choices else f"got {value!r}"

    return "one of " + ", ".join(map(repr, choices)), problem


def _is_origin(text: str) -> bool:
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:  # not a number, or past 65535
        return False
    return (parts.scheme in ("http", "https") and bool(parts.hostname) and port != 0
            and "@" not in parts.netloc and parts.path in ("", "/")
            and not parts.query and not parts.fragment)


def _origins_problem(origins: list[str]) -> str | None:
    # web/ws.py compares the Origin header with these as strings: anything but an origin
    # as browsers send it would never match, silently.
    bad = [origin for origin in origins if origin != "null" and not _is_origin(origin)]
    return f"got {bad[0]!r}" if bad else None


def _database_url_problem(url: str) -> str | None:
    if not url or url.startswith(("postgresql://", "postgres://")):
        return None
    return "got a value not shown here (it may hold a password)"


def _host_problem(host: str) -> str | None:
    return None if host and not any(c.isspace() for c in host) else f"got {host!r}"


def _data_dir_problem(path: str) -> str | None:
    return None if path else f"got {path!r}"


# PostgreSQL's largest statement_timeout and lock_timeout (ms): an int.
PG_MAX_TIMEOUT_MS = 2**31 - 1
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
COOKIE_SECURE = ("auto", "always", "never")  # web/app.py Sessions
# argon2's own floors: 1 pass, and 8 KiB for each of the hasher's lanes (web/passwords.py
# uses argon2-cffi's default parallelism).
ARGON2_MIN_TIME_COST = argon2_lib.ARGON2_MIN_TIME
ARGON2_MIN_MEMORY_KIB = argon2_lib.ARGON2_MIN_MEMORY * DEFAULT_PARALLELISM

RULES: dict[str, Rule] = {
    "host": ("a host name or address (not empty, no spaces)", _host_problem),
    "port": _within(1, 65535),
    "workers": _within(1, 1024),
    "database_url": ("empty (the embedded database) or a postgresql:// URL",
                     _database_url_problem),
    "data_dir": ("a directory path (not empty)", _data_dir_problem),
    # Any text (empty: one is generated and kept in data_dir). docs/deploy.md asks for a
    # long random one; refusing a short one would stop deployments that run today.
    "secret_key": ("any text", lambda key: None),
    "cookie_secure": _one_of(*COOKIE_SECURE),
    "allowed_origins": ('origins (http:// or https://, host[:port], nothing after it) or'
                        ' "null" (what file:// pages and sandboxed frames send)',
                        _origins_problem),
    "pool_min_size": _within(0, 1000),
    # One connection is kept back for /healthz (db/pool.py): 2 leaves one for requests.
    "pool_max_size": _within(2, 1000),
    "pool_acquire_timeout_s": _within(0, 3600, "wait forever"),
    "pool_read_reserve": _within(0, 1000),
    "api_statement_timeout_ms": _within(0, PG_MAX_TIMEOUT_MS, "off"),
    "api_lock_timeout_ms": _within(0, PG_MAX_TIMEOUT_MS, "off"),
    # Below a few frames a session would live behind, reading the log a row at a time.
    "session_queue_bytes": _within(4096, 2**30),
    # 0 would make the listener's queue unbounded (asyncio.Queue).
    "listener_queue_size": _within(1, 10_000_000),
    "max_page_size": _within(1, 100_000),
    # 0 would prune every event at once: no cursor could resume.
    "change_log_retention_hours": _above_zero(87600, "ten years"),
    "log_read_connections": _within(1, 100),
    "log_statement_timeout_ms": _within(0, PG_MAX_TIMEOUT_MS, "off"),
    "argon2_time_cost": _within(ARGON2_MIN_TIME_COST, 100),
    "argon2_memory_cost_kib": _within(ARGON2_MIN_MEMORY_KIB, 4 * 2**20),  # 4 GiB a hash
    # 0 would refuse every login with 429.
    "login_max_failures": _within(1, 10_000),
    "password_hash_concurrency": _within(0, 1024, "one per CPU"),
    "max_sockets_per_user": _within(0, 1_000_000, "no limit"),
    "ws_compress_min_bytes": _within(0, None, "never compress"),
    # Any case: logging and uvicorn both take "WARNING" as "warning".
    "log_level": _one_of(*LOG_LEVELS, any_case=True),
    "log_format": _one_of(*FORMATS),
}


def load_settings(path: Path = SETTINGS_FILE, environ: dict[str, str] | None = None,
                  check: bool = True) -> Settings:
    """Read defaults from settings.toml and apply environment overrides; checked unless
    `check` is False (the caller overrides some more, then checks)."""
    environ = dict(os.environ) if environ is None else environ
    base = Settings()
    if path.exists():
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
        unknown = set(raw) - {f.name for f in fields(Settings)}
        if unknown:
            raise SettingsError(f"{path.name}: unknown setting(s) {sorted(unknown)!r}")
        base = base.with_overrides(**raw)
    env: dict[str, Any] = {}
    for f in fields(Settings):
        value = environ.get(ENV_PREFIX + f.name.upper())
        if value is not None:
            env[f.name] = value
    if "database_url" not in env and environ.get("DATABASE_URL"):
        env["database_url"] = environ["DATABASE_URL"]
    settings = base.with_overrides(**env)
    return settings.checked() if check else settings


def prepare_data_dir(settings: Settings) -> None:
    """Create the data directory if needed; SettingsError, in one line, when it cannot be
    made or written (the secret key and the embedded database live there)."""
    path = settings.data_path
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SettingsError(f"setting 'data_dir': cannot use {str(path)!r} as a directory: "
                            f"{exc.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise SettingsError(f"setting 'data_dir': cannot use {str(path)!r} as a directory: "
                            "not writable")


def secret_key(settings: Settings) -> str:
    """The configured secret key, or one generated once and kept in the data dir."""
    if settings.secret_key:
        return settings.secret_key
    path = settings.data_path / "secret_key"
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".secret_key.{os.getpid()}")
    tmp.write_text(secrets.token_urlsafe(48))
    tmp.chmod(0o600)
    try:
        # link() is atomic and refuses to overwrite: workers starting together agree on one key.
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_text().strip()
