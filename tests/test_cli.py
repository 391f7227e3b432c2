"""The command line, run as a user would (subprocesses against the run's database)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import httpx
import psycopg

from tests.conftest import ROOT


def cli(db_url: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": db_url, "ORDERSTREAM_ARGON2_TIME_COST": "1",
           "ORDERSTREAM_ARGON2_MEMORY_COST_KIB": "8192", "ORDERSTREAM_LOG_LEVEL": "warning"}
    return subprocess.run([sys.executable, "server.py", *args], cwd=ROOT, env=env, input=stdin,
                          capture_output=True, text=True, timeout=60)


def test_createuser_and_token(db_url, server):
    name = f"cli_{os.getpid()}"
    made = cli(db_url, "createuser", name, "--password", "long-enough-1")
    assert made.returncode == 0, made.stderr
    again = cli(db_url, "createuser", name, "--password", "long-enough-1")
    assert again.returncode == 2 and "already exists" in again.stderr
    token = cli(db_url, "token", name)
    assert token.returncode == 0
    assert re.fullmatch(r"[A-Za-z0-9_-]{20,}\n", token.stdout)  # only the token
    answer = httpx.get(server.base_url + "/api/orders",
                       headers={"Authorization": f"Bearer {token.stdout.strip()}"})
    assert answer.status_code == 200
    with psycopg.connect(db_url) as conn:  # stored hashed, never as given
        stored = conn.execute("SELECT count(*) FROM api_tokens WHERE token_hash = %s",
                              (token.stdout.strip().encode(),)).fetchone()
    assert stored == (0,)


def test_createuser_staff_and_bad_input(db_url):
    name = f"clistaff_{os.getpid()}"
    assert cli(db_url, "createuser", name, "--staff", "--password", "long-enough-2"
               ).returncode == 0
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT is_staff FROM users WHERE username = %s", (name,)).fetchone()
    assert row == (True,)
    short = cli(db_url, "createuser", "shorty", "--password", "short")
    assert short.returncode == 2 and "at least 8" in short.stderr
    bad = cli(db_url, "createuser", "no spaces please", "--password", "long-enough-3")
    assert bad.returncode == 2 and "invalid username" in bad.stderr
    missing = cli(db_url, "token", "nobody-by-that-name")
    assert missing.returncode == 2 and "no user" in missing.stderr
    for result in (short, bad, missing):
        assert "Traceback" not in result.stderr


def test_migrate_is_idempotent_and_safe_to_race(db_url):
    runs = [subprocess.Popen([sys.executable, "server.py", "migrate"], cwd=ROOT,
                             env={**os.environ, "DATABASE_URL": db_url},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(3)]
    for run in runs:
        out, err = run.communicate(timeout=60)
        assert run.returncode == 0, err
        assert "up to date" in out


def test_db_url_prints_the_database_in_use(db_url):
    result = cli(db_url, "db-url")
    assert result.returncode == 0 and result.stdout.strip() == db_url
    with psycopg.connect(result.stdout.strip()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
