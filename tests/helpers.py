"""Instrumented tools for tests: they count how many run at once and how often they ran."""

from __future__ import annotations

from collections import Counter

import attrs
import trio


@attrs.define
class Probe:
    """Tracks concurrency of instrumented tool bodies."""

    running: int = 0
    peak: int = 0
    calls: Counter[object] = attrs.field(factory=Counter)
    cancelled: list[object] = attrs.field(factory=list)

    async def work(self, key: object, seconds: float) -> None:
        self.calls[key] += 1
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await trio.sleep(seconds)
        except trio.Cancelled:
            self.cancelled.append(key)
            raise
        finally:
            self.running -= 1
