"""Pausing the cyclic garbage collector while a large structure is built in one go.

Tracing a graph, lowering it and snapshotting a run's record each build tens of thousands of
container objects that all stay alive. Every few hundred of them the collector rescans the
young ones and, now and then, everything alive: a third or more of the build's time, for no
garbage at all. `gc_paused()` turns the collector off for the build (only if it was on, and
only in the outermost of nested pauses); objects made meanwhile are collected as usual later.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["gc_paused"]


@contextmanager
def gc_paused() -> Iterator[None]:
    """Turn the cyclic collector off inside the block, and back on after it if it was on."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
