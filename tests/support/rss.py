"""The resident memory of a process, sampled in the background: its peak, and when."""

from __future__ import annotations

import asyncio
import contextlib
import time

import psutil

MB = 2**20


class RssSampler:
    """A process's resident memory, sampled every `interval` seconds in the
    background: its peak, and when that was."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.process = psutil.Process(pid)
        self.interval = interval
        self.before = self.process.memory_info().rss
        self.peak = self.before
        self.started = time.perf_counter()
        self.peak_at = 0.0
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            rss = self.process.memory_info().rss
            if rss > self.peak:
                self.peak, self.peak_at = rss, time.perf_counter() - self.started
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.before) / MB

    def summary(self) -> str:
        return (f"server RSS before {self.before / MB:.1f} MB, peak {self.peak / MB:.1f} MB "
                f"(at {self.peak_at:.2f} s), growth {self.growth_mb:.1f} MB")
