"""How a scheduler loop stays cancellable and fair without a full checkpoint per node.

A full `trio.lowlevel.checkpoint()` (a trip through the scheduler) costs about as much as a
trivial node. `Pacer.tick()` instead checks for cancellation after every node and yields for
real once at least `YIELD_EVERY` seconds of wall time have passed since the loop last came back
from such a yield: a cancel reaches the loop before its next node starts, and no other task
waits longer than about `YIELD_EVERY` (plus one node's own run time) per loop for its turn.

The interval counts from when the loop was *resumed*, not from when it yielded: with many loops
(a worker pool), a loop's own wait for its turn is not running time, and counting it would make
every loop yield after every node. Under a `MockClock` (virtual time) a loop yields after every
node instead: how fast the machine runs must not change the order of tasks in a test.
"""

from __future__ import annotations

import sys
from time import perf_counter
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from ._slots import Slot

__all__ = ["YIELD_EVERY", "Pacer", "interval"]

YIELD_EVERY = 0.001
"""Seconds of running after which a scheduler loop yields to other tasks."""

_checkpoint = trio.lowlevel.checkpoint
_checkpoint_if_cancelled = trio.lowlevel.checkpoint_if_cancelled


def _virtual_time() -> bool:
    # A MockClock exists only once `trio.testing` is imported; importing it here would cost
    # every program (the CLI too) the ~0.1 s of importing pytest, which trio.testing pulls in.
    testing = sys.modules.get("trio.testing")
    if testing is None:
        return False
    try:
        return isinstance(trio.lowlevel.current_clock(), testing.MockClock)
    except RuntimeError:  # outside trio.run
        return False


def interval() -> float:
    """Seconds of running after which a loop of this run yields: `YIELD_EVERY`, or 0 in
    virtual time (a MockClock: tests), so that the order of tasks never depends on how fast
    the machine happens to be. (A loop too hot for `Pacer.tick`'s call inlines it with this.)"""
    return 0.0 if _virtual_time() else YIELD_EVERY


class Pacer:
    """Per-loop state for `tick()`."""

    __slots__ = ("every", "last")

    def __init__(self) -> None:
        self.last = perf_counter()
        self.every = interval()

    async def tick(self, slot: Slot | None = None) -> bool:
        """Call after each node: raises `Cancelled` if cancelled; yields every ~1 ms.

        A loop that keeps its capacity from one node to the next passes its `slot`: the tokens
        are given back before a real yield, so no other task ever sees them held by a loop
        that is not running a node. Returns whether it yielded (time may have passed).
        """
        if perf_counter() - self.last >= self.every:
            if slot is not None:
                slot.give_back()
            await _checkpoint()
            self.last = perf_counter()
            return True
        await _checkpoint_if_cancelled()
        return False
