"""How a scheduler loop stays cancellable and fair without a full checkpoint per node.

A full `trio.lowlevel.checkpoint()` (a trip through the scheduler) costs about as much as a
trivial node. `Pacer.tick()` instead checks for cancellation after every node and yields for
real once at least `YIELD_EVERY` seconds of wall time have passed since the last yield: a
cancel reaches the loop before its next node starts, and no other task waits longer than about
`YIELD_EVERY` (plus one node's own run time) for its turn.
"""

from __future__ import annotations

from time import perf_counter

import trio

__all__ = ["YIELD_EVERY", "Pacer"]

YIELD_EVERY = 0.001
"""Seconds of running after which a scheduler loop yields to other tasks."""

_checkpoint = trio.lowlevel.checkpoint
_checkpoint_if_cancelled = trio.lowlevel.checkpoint_if_cancelled


class Pacer:
    """Per-loop state for `tick()`."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last = perf_counter()

    async def tick(self) -> None:
        """Call after each node: raises `Cancelled` if cancelled; yields every ~1 ms."""
        now = perf_counter()
        if now - self.last >= YIELD_EVERY:
            self.last = now
            await _checkpoint()
        else:
            await _checkpoint_if_cancelled()
