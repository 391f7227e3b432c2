"""cli/process_cpu.py: CPU time of a real process tree, finer than the scheduler's tick."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest

from cli.process_cpu import cpu_seconds, process_cpu_seconds

# Burns CPU in a thread that then exits, starts a child that burns more, then waits to be
# read: "ready" once both are done.
BURN = """
import subprocess, sys, threading, time

def burn(seconds):
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass

thread = threading.Thread(target=burn, args=(0.05,))
thread.start()
thread.join()
child = subprocess.Popen([sys.executable, "-c",
    "import time\\nend = time.process_time() + 0.05\\nwhile time.process_time() < end: pass\\n"
    "print('burnt', flush=True)\\ntime.sleep(60)"], stdout=subprocess.PIPE, text=True)
assert child.stdout.readline() == "burnt\\n"
print("ready", flush=True)
time.sleep(60)
"""


@pytest.fixture
def burner():
    proc = subprocess.Popen([sys.executable, "-c", BURN], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        yield psutil.Process(proc.pid)
    finally:
        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
        proc.kill()
        proc.wait()
        proc.stdout.close()


def test_a_process_counts_its_exited_threads_and_the_tree_its_children(burner):
    own = process_cpu_seconds(burner)
    tree = cpu_seconds(burner)
    # The parent burnt 50 ms in a thread that has exited, on top of starting Python.
    assert own >= 0.05
    # The child burnt 50 ms more.
    assert tree >= own + 0.05
    # Idle processes: reading again gives the same within a millisecond.
    assert cpu_seconds(burner) - tree < 0.001


@pytest.mark.skipif(sys.platform != "linux", reason="the per-process CPU clock is Linux's")
def test_finer_than_the_schedulers_tick():
    """A window of a few milliseconds is measured, not rounded to 0 or to a 10 ms tick."""
    me = psutil.Process()
    before = process_cpu_seconds(me)
    end = time.process_time() + 0.003
    while time.process_time() < end:
        pass
    spent = process_cpu_seconds(me) - before
    assert 0.003 <= spent < 0.05


def test_a_process_that_is_gone():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    gone = psutil.Process(proc.pid)
    proc.wait()
    assert process_cpu_seconds(gone) == 0.0  # as a child that exited
    with pytest.raises(psutil.NoSuchProcess):  # as the server: no figure, not a wrong one
        cpu_seconds(gone)
