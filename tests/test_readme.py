"""What the README tells a newcomer to run, run as written (where a test can)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.slow

README = (ROOT / "README.md").read_text()
CI = (ROOT / ".ci" / "run").read_text()


def readme_commands() -> list[str]:
    block = re.search(r"```sh\n(.*?)```", README, re.S)
    assert block, "the README opens with a sh block of commands"
    return [line for line in block.group(1).splitlines() if line and not line.startswith("#")]


def test_readme_opens_with_the_two_commands_ci_runs():
    install_and_run, test = readme_commands()
    install = install_and_run.split(" && .venv/bin/python server.py")[0]
    assert install_and_run.endswith("server.py --demo")
    assert install in CI, "CI must do the README's install"
    assert test in CI.splitlines(), "CI must run the README's test command"


async def test_demo_command_serves_live_data_on_the_embedded_database():
    """`server.py --demo` with no DATABASE_URL: an embedded PostgreSQL of its own, demo
    users whose printed passwords work, and orders that keep changing."""
    data = Path(tempfile.mkdtemp(prefix="orderstream-readme-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(ORDERSTREAM_DATA_DIR=str(data), ORDERSTREAM_PORT=str(port),
               ORDERSTREAM_ARGON2_TIME_COST="1", ORDERSTREAM_ARGON2_MEMORY_COST_KIB="8192")
    proc = subprocess.Popen([sys.executable, "server.py", "--demo", "--rate", "50"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, proc.stdout.read()
                try:
                    if (await client.get("/healthz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "the demo server did not come up"
                await asyncio.sleep(0.1)
            page = await client.get("/login")
            token = re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)
            login = await client.post("/login", data={"username": "alice",
                                                      "password": "alice-demo",
                                                      "csrf_token": token, "next": "/"})
            assert login.status_code == 303
            first = (await client.get("/api/orders", params={"sort": "-updated_at"})).json()
            assert first["total"] > 0
            deadline = time.monotonic() + 20
            while True:  # the simulator keeps writing through SQL
                later = (await client.get("/api/orders", params={"sort": "-updated_at"})).json()
                if later["items"][0]["updated_at"] > first["items"][0]["updated_at"]:
                    break
                assert time.monotonic() < deadline, "demo orders never changed"
                await asyncio.sleep(0.2)
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=30)
        shutil.rmtree(data, ignore_errors=True)
    assert proc.returncode == 0, output
    assert "alice" in output and "alice-demo" in output  # the passwords are printed
    assert "Traceback" not in output
