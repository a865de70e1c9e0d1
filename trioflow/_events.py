"""Run events: one stream of facts about a run, for stores, progress displays and dashboards.

The ledger emits them as node states change (see `_ledger`); nothing that consumes them is
written into a scheduler. Listeners are called synchronously, in the event loop, in the order
things happened. With no listener, no event object is ever built.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

import attrs

from ._records import ErrorInfo, NodeState

__all__ = ["EventKind", "Listener", "RunEvent", "combine_listeners"]

EventKind = Literal["run_started", "node_started", "node_finished", "run_finished"]


# Not `frozen`: a frozen attrs class sets each of its 13 fields through `object.__setattr__`,
# which made an event cost ~5x more to build (measured); events are built twice per node on the
# hot path. Treat them as read-only all the same.
@attrs.define(eq=True, hash=False)
class RunEvent:
    """One fact about a run.

    `node_id` and `tool` are None for run events; `state` is the node's new state, or for
    `run_finished` the run's outcome (`DONE`, `FAILED` or `CANCELLED`). `at` is on the Trio clock,
    `wall` in UTC. `known` counts the nodes known so far (all of a static graph; those called so
    far in a graph_fn). `inputs` (on `node_started`) and `outputs` (on `node_finished` when
    `DONE`) are the node's own dicts, not copies, for stores and debuggers: do not mutate them
    (nor the event).
    """

    kind: EventKind
    run_id: str
    graph_id: str
    node_id: str | None
    tool: str | None
    state: NodeState | None
    at: float
    # The UTC time at Trio-clock 0 of this run: `wall` is computed from it only when read.
    epoch: datetime = attrs.field(repr=False)
    attempt: int = 0
    error: ErrorInfo | None = None
    known: int = 0
    inputs: Mapping[str, Any] | None = attrs.field(default=None, repr=False, eq=False)
    outputs: Mapping[str, Any] | None = attrs.field(default=None, repr=False, eq=False)

    @property
    def wall(self) -> datetime:
        """When it happened, in UTC."""
        return self.epoch + timedelta(seconds=self.at)


Listener = Callable[[RunEvent], None]


def combine_listeners(listeners: Sequence[Listener | None]) -> Listener | None:
    """One listener calling each of `listeners` in order (None when there are none)."""
    found = [f for f in listeners if f is not None]
    if not found:
        return None
    if len(found) == 1:
        return found[0]

    def every(event: RunEvent) -> None:
        for listener in found:
            listener(event)

    return every
