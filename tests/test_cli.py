"""The command line, run as a user would (subprocesses against the run's database)."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import pty
import re
import select
import subprocess
import sys
import time

import httpx
import psycopg

from cli.users import create_user
from tests.conftest import FAST_PASSWORDS, ROOT, free_port
from tests.support.database import own_database
from web.users_api import MAX_PASSWORD, MIN_PASSWORD


def cli_env(db_url: str) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": db_url, "ORDERSTREAM_ARGON2_TIME_COST": "1",
            "ORDERSTREAM_ARGON2_MEMORY_COST_KIB": "8192", "ORDERSTREAM_LOG_LEVEL": "warning"}


def cli(db_url: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "server.py", *args], cwd=ROOT, env=cli_env(db_url),
                          input=stdin, capture_output=True, text=True, timeout=60)


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
    assert short.returncode == 2
    assert short.stderr == ("server.py: createuser: the password must be 8-256 characters, "
                            "got 5\n")
    bad = cli(db_url, "createuser", "no spaces please", "--password", "long-enough-3")
    assert bad.returncode == 2 and "invalid username" in bad.stderr
    missing = cli(db_url, "token", "nobody-by-that-name")
    assert missing.returncode == 2 and "no user" in missing.stderr
    badname = cli(db_url, "token", name, "--name", "tab\there")
    assert badname.returncode == 2, badname.stderr
    assert "invalid token name 'tab\\there': must not contain control characters" in badname.stderr
    blank = cli(db_url, "token", name, "--name", "   ")
    assert blank.returncode == 2 and "must be a string of 1-100 characters" in blank.stderr
    empty = cli(db_url, "token", name, "--name", "")  # as the API refuses "name": ""
    assert empty.returncode == 2
    assert empty.stderr == ("server.py: invalid token name '': must be a string of 1-100 "
                            "characters, not only spaces\n")
    for result in (short, bad, missing, badname, blank, empty):
        assert "Traceback" not in result.stderr
    with psycopg.connect(db_url) as conn:  # nothing stored for the refused ones
        assert conn.execute("SELECT count(*) FROM api_tokens t JOIN users u ON u.id = t.user_id"
                            " WHERE u.username = %s", (name,)).fetchone() == (0,)


def test_a_token_gets_the_name_it_is_given(db_url, server):
    name = f"clinamed_{os.getpid()}"
    assert cli(db_url, "createuser", name, "--password", "long-enough-4").returncode == 0
    token = cli(db_url, "token", name, "--name", "  nightly report  ")
    assert token.returncode == 0, token.stderr
    listed = httpx.get(server.base_url + "/api/tokens",
                       headers={"Authorization": f"Bearer {token.stdout.strip()}"})
    assert listed.status_code == 200
    assert [t["name"] for t in listed.json()["items"]] == ["nightly report"]


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


# -- a CLI people trust (issue 9) ------------------------------------------------------------


def test_version_comes_from_the_package_metadata():
    result = subprocess.run([sys.executable, "server.py", "--version"], cwd=ROOT,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert result.stdout.strip() == f"server.py {importlib.metadata.version('orderstream')}"


def test_every_command_has_a_one_line_description():
    from server import _parser

    commands = next(action for action in _parser()._actions
                    if isinstance(action, argparse._SubParsersAction))
    assert {"serve", "migrate", "createuser", "token", "db-url", "db-stop"} <= set(
        commands.choices)
    summaries = {action.dest: action.help for action in commands._choices_actions}
    for name, parser in commands.choices.items():
        assert summaries[name] and "\n" not in summaries[name], name
        assert parser.description, f"`server.py {name} --help` has no description"
    shown = subprocess.run([sys.executable, "server.py", "token", "--help"], cwd=ROOT,
                           capture_output=True, text=True, timeout=30)
    assert "API token" in shown.stdout


def test_ports_are_validated(db_url):
    for flag in ("73736", "0", "-1", "http"):
        result = cli(db_url, "serve", "--port", flag)
        assert result.returncode == 2, flag
        assert "argument --port" in result.stderr and "Traceback" not in result.stderr
    from_environment = subprocess.run(
        [sys.executable, "server.py", "token", "x"], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, "DATABASE_URL": db_url, "ORDERSTREAM_PORT": "73736"}, timeout=30)
    assert from_environment.returncode == 2
    assert from_environment.stderr == "server.py: setting 'port': must be 1-65535, got 73736\n"


def test_counts_and_rates_are_validated(db_url):
    """A count must be a whole number and a rate a number, both above zero: each refused in
    one line that names the flag and what it wants."""
    for args, says in ((("serve", "--workers", "1.5"), "argument --workers: expected a whole"
                        " number, got '1.5'"),
                       (("serve", "--workers", "0"), "argument --workers: must be above 0,"
                        " got '0'"),
                       (("simulate", "--rate", "fast"), "argument --rate: expected a number,"
                        " got 'fast'"),
                       (("simulate", "--rate", "nan"), "argument --rate: expected a number,"
                        " got 'nan'"),
                       (("simulate", "--rate", "inf"), "argument --rate: expected a number,"
                        " got 'inf'"),
                       (("migrate", "--retry-for", "Infinity"), "argument --retry-for: expected"
                        " a number, got 'Infinity'"),
                       (("bench", "--rounds", "x"), "argument --rounds: expected a whole"
                        " number, got 'x'")):
        result = cli(db_url, *args)
        assert result.returncode == 2, args
        assert result.stderr.splitlines()[-1].endswith(says), result.stderr
        assert "Traceback" not in result.stderr


def test_an_unreachable_database_is_one_line_and_exit_1():
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    commands = [["serve"], ["migrate"], ["createuser", "x", "--password-stdin"], ["token", "x"],
                ["demo"], ["simulate"], ["bench", "--updates", "1"], ["--demo"]]
    env = {**os.environ, "DATABASE_URL": closed}
    runs = [subprocess.Popen([sys.executable, "server.py", *args], cwd=ROOT, env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for args in commands]
    for args, run in zip(commands, runs, strict=True):
        _, err = run.communicate("long-enough-1\n", timeout=60)
        assert run.returncode == 1, (args, err)
        assert err.count("\n") == 1 and err.startswith(
            "server.py: cannot reach the database: "), (args, err)


def test_createuser_reads_the_password_from_stdin(db_url):
    name = f"stdin_{os.getpid()}"
    made = cli(db_url, "createuser", name, "--password-stdin", stdin="long enough 1\nignored\n")
    assert made.returncode == 0, made.stderr
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT password_hash FROM users WHERE username = %s",
                           (name,)).fetchone()
    assert row is not None and FAST_PASSWORDS.verify(row[0], "long enough 1")
    empty = cli(db_url, "createuser", f"{name}_x", "--password-stdin", stdin="")
    assert empty.returncode == 2 and "stdin is empty" in empty.stderr


def test_createuser_without_a_terminal_or_password_says_so(db_url):
    name = f"notty_{os.getpid()}"
    result = cli(db_url, "createuser", name, stdin="")  # stdin is a pipe: no terminal
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--password-stdin" in result.stderr
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT 1 FROM users WHERE username = %s", (name,)).fetchone() is None


def test_commands_refuse_a_schema_behind(server_url):
    with own_database(server_url, "behind") as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("UPDATE schema_state SET checksum = 'old' WHERE name = 'triggers.sql'")
        for args in (["token", "x"], ["demo"], ["createuser", "x", "--password", "long-enough"]):
            result = cli(url, *args)
            assert result.returncode == 1, args
            assert result.stderr == (
                "server.py: the database schema is behind (db/triggers.sql changed); run "
                "`python server.py migrate` or `serve --migrate`\n"), args
        assert cli(url, "db-url").stdout.strip() == url  # only prints: psql still works
        migrated = cli(url, "migrate")
        assert migrated.returncode == 0 and "up to date" in migrated.stdout
        assert cli(url, "migrate").stdout == "database is up to date\n"


def test_which_serves_migrate_first():
    from config import Settings
    from server import _migrates_first, _parser

    external, embedded = Settings(database_url="postgresql://db/x"), Settings()
    parse = _parser().parse_args
    assert not _migrates_first("serve", parse(["serve"]), external)
    assert _migrates_first("serve", parse(["serve", "--migrate"]), external)
    assert _migrates_first("serve", parse(["--demo"]), external)  # --demo implies --migrate
    assert _migrates_first("serve", parse([]), embedded)  # the embedded database is yours alone
    assert not _migrates_first("token", parse(["token", "x"]), embedded)


# -- passwords: the API's rule (audit, item 3) -----------------------------------------------


def _createuser_at_a_terminal(db_url: str, name: str, typed: str) -> tuple[int | None, str]:
    """`createuser NAME` on a real terminal (a pty), typing `typed` at both prompts once each
    shows; its exit status and what the terminal showed."""
    master, slave = pty.openpty()
    # A session of its own: the pty is then its only terminal (getpass reads it as stdin).
    run = subprocess.Popen([sys.executable, "server.py", "createuser", name], cwd=ROOT,
                           env=cli_env(db_url), stdin=slave, stdout=slave, stderr=slave,
                           start_new_session=True)
    os.close(slave)
    shown, prompts = b"", [b"Password for ", b"Again: "]
    deadline = time.monotonic() + 60
    try:
        while True:
            ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"createuser stopped answering after {shown!r}"
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: every process let go of the terminal
                break
            if not chunk:
                break
            shown += chunk
            if prompts and prompts[0] in shown:
                prompts.pop(0)
                os.write(master, typed.encode() + b"\n")
        return run.wait(timeout=60), shown.decode()
    finally:
        os.close(master)
        if run.poll() is None:
            run.kill()
            run.wait()


def test_createuser_takes_the_apis_password_lengths(db_url):
    """POST /api/users takes 8-256 characters and /login checks no more: createuser refuses
    a longer password however it is given, before anything is stored."""
    name = f"longpw_{os.getpid()}"
    too_long = "p" * (MAX_PASSWORD + 1)
    said = (f"server.py: createuser: the password must be {MIN_PASSWORD}-{MAX_PASSWORD} "
            f"characters, got {MAX_PASSWORD + 1}")
    for refused in (cli(db_url, "createuser", name, "--password", too_long),
                    cli(db_url, "createuser", name, "--password-stdin", stdin=too_long + "\n")):
        assert refused.returncode == 2 and refused.stderr == said + "\n"
    status, shown = _createuser_at_a_terminal(db_url, name, too_long)
    assert status == 2 and said in shown, shown
    # Bytes that are not UTF-8 (the API takes only valid Unicode; argon2 could not hash it).
    not_text = cli(db_url, "createuser", name, "--password", os.fsdecode(b"long-\xff-enough"))
    assert not_text.returncode == 2
    assert not_text.stderr == "server.py: createuser: the password must be valid UTF-8 text\n"
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT 1 FROM users WHERE username = %s", (name,)).fetchone() is None
    longest = "q" * MAX_PASSWORD
    status, shown = _createuser_at_a_terminal(db_url, name, longest)
    assert status == 0 and f"created user {name!r}" in shown, shown
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT password_hash FROM users WHERE username = %s",
                           (name,)).fetchone()
    assert row is not None and FAST_PASSWORDS.verify(row[0], longest)


# -- demo on a database with accounts (audit, item 2) ----------------------------------------


def test_demo_never_changes_an_existing_account(server_url):
    """On a shared database a demo user's name may be a real account: demo creates the demo
    users that are missing, and leaves the others' passwords, staff flags and orders alone."""
    with own_database(server_url, "demo_keep") as url:
        create_user(url, FAST_PASSWORDS, "alice", "alice-own-password", False)
        create_user(url, FAST_PASSWORDS, "admin", "admin-own-password", False)

        def accounts() -> dict[str, tuple[str, bool, int]]:
            with psycopg.connect(url) as conn:
                rows = conn.execute(
                    "SELECT username, password_hash, is_staff,"
                    " (SELECT count(*) FROM orders o WHERE o.owner_id = u.id) FROM users u"
                ).fetchall()
            return {name: (password_hash, staff, orders)
                    for name, password_hash, staff, orders in rows}

        before = accounts()
        first = cli(url, "demo")
        assert first.returncode == 0, first.stderr
        assert first.stdout.splitlines() == [
            "demo users (username / password):",
            "  alice    exists already: its password was left unchanged",
            "  bob      bob-demo",
            "  carol    carol-demo",
            "  admin    exists already: its password was left unchanged"]
        after = accounts()
        assert after["alice"] == before["alice"] and after["admin"] == before["admin"]
        assert FAST_PASSWORDS.verify(after["bob"][0], "bob-demo") and after["bob"][2] > 0
        again = cli(url, "demo")
        assert again.returncode == 0, again.stderr
        assert again.stdout.splitlines()[1:] == [
            f"  {name:8} exists already: its password was left unchanged"
            for name in ("alice", "bob", "carol", "admin")]
        assert accounts() == after
