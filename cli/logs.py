"""One log format for orderstream and uvicorn: text lines or JSON objects (`log_format`)."""

from __future__ import annotations

import json
import logging
import logging.config
from datetime import UTC, datetime
from typing import Any

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, and the
    exception's type and text when there is one (on the same line: collectors split on
    newlines)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and record.exc_info[1] is not None:
            entry["error"] = repr(record.exc_info[1])
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class OneLineExceptions(logging.Filter):
    """asyncpg's pool logs a full traceback each time it cannot reconnect while the database
    is away; one line says the same."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            record.msg = f"{record.getMessage()}: {record.exc_info[1]!r}"
            record.args = None
            record.exc_info = None
        return True


def log_config(level: str, fmt: str) -> dict[str, Any]:
    """A logging.config dict for the root logger and uvicorn's loggers alike (uvicorn takes it
    as `log_config` and applies it in every worker, so the filters below reach workers too)."""
    if fmt not in FORMATS:
        raise ValueError(f"log_format must be one of {FORMATS!r}, got {fmt!r}")
    formatter: dict[str, Any] = (
        {"()": f"{__name__}.JsonFormatter"} if fmt == "json" else {"format": TEXT_FORMAT}
    )
    handler = {"class": "logging.StreamHandler", "formatter": "default",
               "stream": "ext://sys.stderr"}
    # uvicorn's loggers carry no handlers of their own: they reach the root's.
    uvicorn = {"handlers": [], "level": level.upper(), "propagate": True}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {"default": handler},
        "root": {"handlers": ["default"], "level": level.upper()},
        "filters": {"one_line": {"()": f"{__name__}.OneLineExceptions"}},
        "loggers": {
            "uvicorn": uvicorn, "uvicorn.error": uvicorn, "uvicorn.access": uvicorn,
            "asyncpg.pool": {"filters": ["one_line"]},
            "httpx": {"level": "WARNING"},
        },
    }


def configure(level: str, fmt: str) -> None:
    logging.config.dictConfig(log_config(level, fmt))
