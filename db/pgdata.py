"""A data directory's runtime files (postmaster.pid, the holder list) and their process checks."""

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import psutil

logger = logging.getLogger(__name__)

# pgserver's name and format (a JSON list of pids), so pgserver itself agrees on the holders.
HOLDERS_FILE = ".handle_pids.json"
# Written over the pid in a stale postmaster.pid: above any pid_max (Linux 2**22, macOS 99998),
# so postgres sees "no such process" and still runs its shared-memory-in-use check.
_NO_SUCH_PID = 2**31 - 1


@dataclass(frozen=True)
class Postmaster:
    """The parts of `postmaster.pid` we use."""

    pid: int
    socket_dir: Path | None
    port: int | None
    status: str


# -- postmaster.pid ------------------------------------------------------------------------------


def read_postmaster(data_dir: Path) -> Postmaster | None:
    """What `data_dir`'s postmaster.pid says, or None when it is missing or has no pid yet."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    # Lines: pid, data dir, start time, port, socket dir, listen address, shmem key, status;
    # the later ones are appended while the server starts.
    try:
        pid = int(lines[0])
    except (IndexError, ValueError):
        return None

    def line(index: int) -> str:
        return lines[index].strip() if len(lines) > index else ""

    port = line(3)
    return Postmaster(
        pid=pid,
        socket_dir=Path(line(4)) if line(4) else None,
        port=int(port) if port.isdigit() else None,
        status=line(7),
    )


def is_our_postmaster(data_dir: Path, pid: int) -> bool:
    """Whether `pid` is a live postgres whose data directory is `data_dir` (not a reused pid)."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE or not _is_postgres(process):
            return False
        try:
            # The postmaster runs in its data directory.
            return Path(process.cwd()) == data_dir
        except psutil.AccessDenied:
            return True
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False


def clear_stale(data_dir: Path, postmaster: Postmaster) -> None:
    """Defuse lock files left by a killed server.

    postgres itself ignores a postmaster.pid whose pid is gone, but not one whose pid is a
    zombie (no init reaping it, as in containers) or was reused by another program.
    """
    logger.warning(
        "%s names pid %d, which is not a running PostgreSQL for it; treating it as stale",
        data_dir / "postmaster.pid",
        postmaster.pid,
    )
    pid_file = data_dir / "postmaster.pid"
    try:
        lines = pid_file.read_text().splitlines(keepends=True)
    except FileNotFoundError:  # a server stopped by hand just removed it
        return
    # Rewrite rather than delete, so postgres still checks that no orphaned backend of the
    # killed server is attached to its shared memory.
    pid_file.write_text("".join([f"{_NO_SUCH_PID}\n", *lines[1:]]))
    if postmaster.socket_dir is not None and postmaster.port is not None:
        socket_lock = postmaster.socket_dir / f".s.PGSQL.{postmaster.port}.lock"
        with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
            owner = int(socket_lock.read_text().splitlines()[0])
            if not _is_live_postgres(owner):
                socket_lock.unlink()


# -- holders -------------------------------------------------------------------------------------


def update_holders(data_dir: Path, add: int | None = None, remove: int | None = None) -> list[int]:
    """Prune dead pids from HOLDERS_FILE, apply the change, return the others left.

    "Others" are the live holders other than this process. Call under the data directory lock.
    """
    path = data_dir / HOLDERS_FILE
    try:
        stored = json.loads(path.read_text() or "[]")
    except FileNotFoundError:
        stored = []
    except (ValueError, OSError) as error:
        logger.warning("ignoring unreadable %s: %s", path, error)
        stored = []
    if not isinstance(stored, list):
        stored = []
    pids = [pid for pid in stored if isinstance(pid, int) and _is_alive(pid) and pid != remove]
    pruned = [pid for pid in stored if pid not in pids and pid != remove]
    if pruned:
        logger.info("pruned dead holder pids %s from %s", pruned, path)
    if add is not None and add not in pids:
        pids.append(add)
    if pids != stored:
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps(pids))
        temporary.replace(path)
    return [pid for pid in pids if pid != os.getpid()]


# -- processes -----------------------------------------------------------------------------------


def _is_postgres(process: psutil.Process) -> bool:
    return process.name().startswith("postgres")


def _is_live_postgres(pid: int) -> bool:
    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and _is_postgres(process)
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return False


def _is_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, killed but not yet reaped, does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True
