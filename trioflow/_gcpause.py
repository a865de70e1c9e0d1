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

__all__ = ["gc_paused", "promote_young"]


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


def promote_young() -> None:
    """Move every object the cyclic collector tracks to its oldest generation, unscanned.

    For the end of a pause in which a large structure that stays alive was built: once the
    collector is on again, its next young collection would scan all of that structure, and a
    later one scan it again, finding no garbage (a tenth of a 10k-node trace). Objects that
    live on end up in the oldest generation anyway, where full collections scan them as ever;
    the few other young objects moved along (at most a young collection's worth) are collected
    by the next full collection instead of a young one. Skipped when the program froze objects
    itself (`gc.freeze()`, before forking workers): `gc.unfreeze()` would undo that.
    """
    if gc.get_freeze_count() == 0:
        gc.freeze()  # every generation into the permanent one, O(1), no scan
        gc.unfreeze()  # and from there into the oldest generation
