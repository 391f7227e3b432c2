"""The app served in the test's own process, on a real port, with the protocol options
server.py gives uvicorn: for tests that look at the server's objects or inject a fault into
its code. Everything else (sockets, database) is real."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from config import load_settings
from tests.conftest import LocalAddress
from web.app import create_app
from web.protocols import protocol_options


@dataclass
class InProcess(LocalAddress):
    port: int


@contextlib.asynccontextmanager
async def serving_in_process(db_url: str, data_dir: Path,
                             **env: str) -> AsyncIterator[InProcess]:
    """Serve until the block ends; `env`: extra ORDERSTREAM_* settings."""
    settings = load_settings(environ={"ORDERSTREAM_DATA_DIR": str(data_dir), **env})
    # Bound here and handed over: a port taken between a probe and uvicorn's bind would make
    # uvicorn exit the process, this test run with it.
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    address = InProcess(listening.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(
        create_app(settings, db_url), log_config=None, log_level="warning",
        **protocol_options()))
    serving = asyncio.create_task(server.serve(sockets=[listening]))
    deadline = time.monotonic() + 30
    while not server.started:
        assert not serving.done(), "the in-process server stopped"
        assert time.monotonic() < deadline, "the in-process server did not start"
        await asyncio.sleep(0.02)
    try:
        yield address
    finally:
        server.should_exit = True
        await serving
        listening.close()
