"""Capacity held by one node: tokens on the run's, the runtime's and resource limiters.

A `Slot` is the borrower: it acquires every limiter a node needs (in a fixed order, so two
nodes never wait on each other crosswise), releases them when the node ends, and *lends* them
while the node waits on nested work, so that nesting never deadlocks even at a cap of 1.
"""

from __future__ import annotations

from collections import OrderedDict

import trio

__all__ = ["QUICK_TOKENS", "Slot", "release_token", "take_free_token"]

Limiters = tuple[trio.CapacityLimiter, ...]


def _quick_tokens() -> bool:
    """Whether a free token can be taken and given back by hand (see `Slot`)."""
    lim = trio.CapacityLimiter(1)
    return (
        type(getattr(lim, "_borrowers", None)) is set
        and getattr(lim, "_total_tokens", None) == 1
        and type(getattr(getattr(lim, "_lot", None), "_parked", None)) is OrderedDict
    )


# A token taken or given back while no task waits on the limiter is just its set of
# borrowers changed: `CapacityLimiter`'s own methods do that and then look for a waiter to
# wake (a parking-lot walk that costs more than the rest). A node takes and gives back tokens
# on every call, so the common case does it by hand, on the limiter's private fields (its
# borrowers, its token count, its parking lot's waiters); a waiter, or a future Trio whose
# limiter looks different, goes through the public methods.
QUICK_TOKENS = _quick_tokens()


def take_free_token(limiter: trio.CapacityLimiter, borrower: object) -> bool:
    """Take a token of `limiter` for `borrower` if one is free and nobody waits for one, without
    a trip through the scheduler; else False."""
    if QUICK_TOKENS:  # what `acquire_on_behalf_of_nowait` checks, read off the fields
        if limiter._lot._parked or len(limiter._borrowers) >= limiter._total_tokens:
            return False
    elif not limiter.available_tokens:  # (a released token goes to a waiter at once)
        return False
    try:
        limiter.acquire_on_behalf_of_nowait(borrower)
    except trio.WouldBlock:
        return False
    return True


def release_token(limiter: trio.CapacityLimiter, borrower: object) -> None:
    """Give back `borrower`'s token of `limiter`: by hand when nobody waits for one."""
    if QUICK_TOKENS and not limiter._lot._parked:
        limiter._borrowers.remove(borrower)
    else:
        limiter.release_on_behalf_of(borrower)


class Slot:
    """A borrower of capacity tokens; holds one token on each limiter in `held`."""

    __slots__ = ("held",)

    def __init__(self) -> None:
        self.held: Limiters = ()

    def take_nowait(self, limiters: Limiters) -> bool:
        """Take every token without blocking; all or nothing."""
        if QUICK_TOKENS:
            for lim in limiters:
                if lim._lot._parked or len(lim._borrowers) >= lim._total_tokens:
                    return False  # (what acquire_on_behalf_of_nowait would find)
            for lim in limiters:  # every token is free and nobody waits for one
                lim._borrowers.add(self)
            self.held = limiters
            return True
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
        for lim in held:  # (`release_token`, inlined: once per node)
            if QUICK_TOKENS and not lim._lot._parked:  # nobody to wake
                lim._borrowers.remove(self)
            else:
                lim.release_on_behalf_of(self)
        return held
