"""Capacity held by one node: tokens on the run's, the runtime's and resource limiters.

A `Slot` is the borrower: it acquires every limiter a node needs (in a fixed order, so two
nodes never wait on each other crosswise), releases them when the node ends, and *lends* them
while the node waits on nested work, so that nesting never deadlocks even at a cap of 1.
"""

from __future__ import annotations

import trio

__all__ = ["Slot"]

Limiters = tuple[trio.CapacityLimiter, ...]


class Slot:
    """A borrower of capacity tokens; holds one token on each limiter in `held`."""

    __slots__ = ("held",)

    def __init__(self) -> None:
        self.held: Limiters = ()

    def take_nowait(self, limiters: Limiters) -> bool:
        """Take every token without blocking; all or nothing."""
        taken = 0
        try:
            for lim in limiters:
                lim.acquire_on_behalf_of_nowait(self)
                taken += 1
        except trio.WouldBlock:
            for lim in limiters[:taken]:
                lim.release_on_behalf_of(self)
            return False
        self.held = limiters
        return True

    async def take(self, limiters: Limiters) -> None:
        """Take one token on each limiter, waiting as needed; a cancelled wait takes nothing."""
        if len(limiters) == 1:
            await limiters[0].acquire_on_behalf_of(self)
            self.held = limiters
            return
        taken = 0
        try:
            for lim in limiters:
                await lim.acquire_on_behalf_of(self)
                taken += 1
        except BaseException:
            for lim in limiters[:taken]:
                lim.release_on_behalf_of(self)
            raise
        self.held = limiters

    def give_back(self) -> Limiters:
        """Release every held token; returns what was held (to reclaim it later)."""
        held = self.held
        self.held = ()
        for lim in held:
            lim.release_on_behalf_of(self)
        return held
