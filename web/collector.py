"""Python's garbage collector in a process holding thousands of sockets: the heap made at
startup kept out of its passes, and each pass timed for /metrics.

Every pass stops the event loop, and every socket with it. A full pass (generation 2) reads
every object the collector tracks, at about 0.5 us each on the 2-CPU bench machine:
docs/benchmarks.md, "Garbage"."""

from __future__ import annotations

import collections
import contextlib
import gc
import time
from collections.abc import Iterator

from web.metrics import GC_PAUSES


class GcTimer:
    """Times the collector's passes, as a `gc.callbacks` entry, for GC_PAUSES.

    The callback only notes each pass; `flush` (the metrics task, every second) hands them to
    prometheus-client. A pass can start inside any allocation, one made while prometheus-client
    holds its lock included (under `--workers` one lock serves every value of the process, and
    making a labelled value allocates under it): a callback that took that lock again would
    wait for itself, for good."""

    def __init__(self) -> None:
        self._generations = [GC_PAUSES.labels(str(generation)) for generation in range(3)]
        self._started = 0.0
        # (generation, seconds): appended by the callback, in whichever thread collects;
        # deque's append and popleft need no lock. Bounded, should the flushes stop.
        self._pauses: collections.deque[tuple[int, float]] = collections.deque(maxlen=10_000)

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._pauses.append((info["generation"], time.perf_counter() - self._started))

    def flush(self) -> None:
        """Observe the passes noted since the last flush."""
        pauses = self._pauses
        while pauses:
            generation, seconds = pauses.popleft()
            self._generations[generation].observe(seconds)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        gc.callbacks.append(self)
        try:
            yield
        finally:
            gc.callbacks.remove(self)
            self.flush()


@contextlib.contextmanager
def startup_heap_frozen() -> Iterator[None]:
    """What exists once the server has started (modules, classes, the app, its pools) lives
    as long as the process: moved out of the collector's reach, no full pass reads it again
    (on the bench machine an idle server's full pass went from about 40 ms to 0.2 ms, and
    with 1,000 sockets open from 160-180 ms to 110-130 ms). Garbage is collected first. A
    frozen object that becomes cyclic garbage later (a pool connection replaced after an
    outage) stays until the server stops, with whatever it still holds: each can only die
    once, so that is bounded by the startup heap and what it held then. Unfrozen on the way
    out."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
