"""Settings: settings.toml, then ORDERSTREAM_<KEY> / DATABASE_URL, then explicit overrides."""

from __future__ import annotations

import os
import secrets
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
SETTINGS_FILE = ROOT / "settings.toml"
ENV_PREFIX = "ORDERSTREAM_"


class SettingsError(ValueError):
    """A setting has a value of the wrong kind."""


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


def load_settings(path: Path = SETTINGS_FILE, environ: dict[str, str] | None = None) -> Settings:
    """Read defaults from settings.toml and apply environment overrides."""
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
    return base.with_overrides(**env)


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
