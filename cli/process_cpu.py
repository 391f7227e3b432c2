"""CPU time a process tree has used, to the nanosecond where the kernel allows.

psutil's `cpu_times` counts in scheduler ticks (10 ms here): a short bench window that
costs the server a few milliseconds reads as 0 or as one tick. Linux keeps a CPU clock per
process, readable by any process, that counts every thread's time to the nanosecond,
threads that have already exited included: `clock_gettime` on the clock id the kernel
derives from the pid (`MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)` in its posix-timers.h).
"""

from __future__ import annotations

import sys
import time

import psutil

_CPUCLOCK_SCHED = 2


def _process_clock(pid: int) -> int:
    return ((~pid) << 3) | _CPUCLOCK_SCHED


def process_cpu_seconds(proc: psutil.Process) -> float:
    """User and system CPU seconds of one process, all its threads; 0.0 once it is gone."""
    if sys.platform == "linux":
        try:
            return time.clock_gettime(_process_clock(proc.pid))
        except OSError:  # gone, or a kernel that refuses: fall back to the tick count
            pass
    try:
        times = proc.cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return times.user + times.system


def cpu_seconds(proc: psutil.Process) -> float:
    """CPU seconds of a process and its children (a `serve --workers 2` counts its workers).
    Raises psutil.NoSuchProcess if `proc` itself is gone: a server that died mid-run has no
    figure (a child gone meanwhile counts 0)."""
    children = proc.children(recursive=True)
    return sum(process_cpu_seconds(p) for p in [proc, *children])
