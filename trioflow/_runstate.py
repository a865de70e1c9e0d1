"""The live state of one run: identities, capacity, error policy, and the seams it plugs into.

A `RunState` is shared by a run's nested graphs. It owns the ledger (the node life cycle and the
run's events), hands out node ids, finds the limiters a node must hold, and carries the three
seams that features outside the schedulers plug into: the executor table (where attempts run),
the rate-limit turns, and the memo (outputs reused from a stored run or the result cache).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import attrs
import trio

from . import _reactive
from ._context import Frame, ServiceAccess
from ._errors import ConfigError
from ._executor import ExecutorTable
from ._ledger import Ledger
from ._pace import Pacer
from ._slots import Limiters, Slot

if TYPE_CHECKING:
    from ._tool import Tool, ToolCall

__all__ = ["ErrorPolicy", "GraphTarget", "NodeMemo", "RateTurns", "RunState"]

ErrorPolicy = Literal["fail_fast", "skip_dependents", "collect"]


class GraphTarget(Protocol):
    """A graph that can run inside a run: `@graph_fn` and `@graphify` objects, compiled graphs."""

    @property
    def name(self) -> str: ...
    @property
    def outputs(self) -> tuple[str, ...]: ...

    def check_inputs(self, inputs: Mapping[str, Any] | None) -> dict[str, Any]: ...

    async def run_body(self, run: RunState, inputs: dict[str, Any], frame: Frame) -> Any: ...


class RateTurns(Protocol):
    """The rate-limit seam: named limits, a turn before each attempt (see `_ratelimit`)."""

    def check(self, name: str) -> None: ...

    async def turn(self, name: str, key: Hashable = None) -> float: ...


class NodeMemo(Protocol):
    """The reuse seam: outputs of a node that need not run again (resume, replay, cache).

    `lookup` returns `(outputs, cached)` or None; it is consulted before a tool node's first
    attempt, with the node's capacity held. A memo whose `reuses` is false never returns a hit
    for a plain tool, so static graphs keep their fast path (which still calls `accept`).
    """

    @property
    def reuses(self) -> bool: ...

    def prefill(self, plan_run: Any) -> None:
        """Before a static graph's nodes start (every plan run, nested ones too): mark those it
        can reuse DONE, and note where the plan run's value slots are (see `_durable`)."""

    def lookup(
        self, node_id: str, tool: Tool, inputs: Mapping[str, Any]
    ) -> tuple[dict[str, Any], bool] | None: ...

    def accept(self, node_id: str, tool: Tool, outputs: Mapping[str, Any]) -> None:
        """A tool node's new outputs, before it is DONE; raising fails the node."""


@attrs.define(eq=False)
class RunState:
    """The live state of one run, shared by its nested graphs."""

    run_id: str
    graph_id: str
    limiter: trio.CapacityLimiter
    ledger: Ledger
    policy: ErrorPolicy = "fail_fast"
    rng: random.Random | None = None
    global_limiter: trio.CapacityLimiter | None = None
    resources: Mapping[str, trio.CapacityLimiter] = attrs.field(factory=dict)
    services: ServiceAccess | None = None
    executors: ExecutorTable = attrs.field(factory=ExecutorTable)
    rates: RateTurns | None = None
    memo: NodeMemo | None = None
    # Static-graph outputs that stay in a remote store, by ledger index (see _executor).
    remote_outputs: dict[int, frozenset[str]] = attrs.field(factory=dict)
    # The clock's own bound method: cheaper than trio.current_time() on the per-node path.
    now: Callable[[], float] = attrs.field(
        factory=lambda: trio.lowlevel.current_clock().current_time, init=False
    )
    pacer: Pacer = attrs.field(factory=Pacer, init=False)
    _counters: dict[str, int] = attrs.field(factory=dict, init=False)
    _limiters: dict[tuple[str, ...], Limiters] = attrs.field(factory=dict, init=False)
    # Tools `check_tool` passed, with their limiters (a graph_fn call looks here first).
    checked: dict[Tool, Limiters] = attrs.field(factory=dict, init=False)
    # Tools whose awaited calls are one attempt on an entered executor, noted on their first
    # call (`_reactive.call_tool`): what `call_on_executor` needs of each.
    on_executor: dict[Tool, _reactive.OnExecutor] = attrs.field(factory=dict, init=False)

    # -- identities and capacity ---------------------------------------------------------

    def node_id(self, graph_id: str, name: str) -> str:
        """`<name>_<k>` (k from 1 per name), prefixed by the graph's id in a nested graph."""
        counters = self._counters
        if graph_id == self.graph_id:
            k = counters[name] = counters.get(name, 0) + 1
            return f"{name}_{k}"
        key = f"{graph_id}.{name}"
        k = counters[key] = counters.get(key, 0) + 1
        return f"{key}_{k}"

    def limiters_for(self, limits: tuple[str, ...]) -> Limiters:
        """The limiters a node with these resource keys must hold, in a fixed order."""
        found = self._limiters.get(limits)
        if found is None:
            found = (self.limiter,)
            if self.global_limiter is not None:
                found += (self.global_limiter,)
            for key in sorted(limits):
                try:
                    found += (self.resources[key],)
                except KeyError:
                    raise ConfigError(
                        f"a tool declares limits=[{key!r}] but the runtime defines no such "
                        f"limit (it has {sorted(self.resources)}); "
                        f"use open_runtime(limits={{{key!r}: n}})"
                    ) from None
            self._limiters[limits] = found
        return found

    def check_tool(self, tool: Tool) -> Limiters:
        """Everything about a tool that can fail before its node starts; its limiters.

        An undefined limit, executor key or rate limit is a `ConfigError` raised here: before
        any node of a static graph starts, and before a graph_fn call takes a slot.
        """
        limiters = self.limiters_for(tool.limits)
        if tool not in self.checked:
            self.executors.check(tool.executor_key, f"tool {tool.name!r}")
            if tool.cache is not None and self.memo is None:
                raise ConfigError(
                    f"tool {tool.name!r} is cached (cache=...), and caching needs a run store: "
                    "pass store=trioflow.SQLiteStore(path) to the run or to open_runtime()"
                )
            if tool.rate_limit is not None:
                if self.rates is None:
                    raise ConfigError(
                        f"tool {tool.name!r} names rate limit {tool.rate_limit!r}, but no rate "
                        f"limits are defined; pass rate_limits={{{tool.rate_limit!r}: "
                        "trioflow.RateLimit(...)} to trioflow.run() or open_runtime()"
                    )
                self.rates.check(tool.rate_limit)
            self.checked[tool] = limiters
        return limiters

    def check_tools(self, tools: Iterable[Tool]) -> None:
        """Fail before a run starts if one of its tools cannot run here."""
        for t in tools:
            self.check_tool(t)

    # -- the reactive (graph_fn) entry points, implemented in `_reactive` --------------------

    call: ClassVar[Callable[[RunState, ToolCall, Frame], Coroutine[Any, Any, dict[str, Any]]]] = (
        _reactive.call_tool
    )
    """`run.call(call, parent)`: run an awaited tool call as a node, inline in the awaiting
    task. (`call_tool` itself as the method, so awaiting it costs no call and no frame in
    between: an executor's node crosses its frames on each of several suspensions.)"""

    call_on_executor: ClassVar[
        Callable[
            [RunState, ToolCall, Frame, _reactive.OnExecutor],
            Coroutine[Any, Any, dict[str, Any]],
        ]
    ] = _reactive.call_on_executor
    """`run.call_on_executor(call, parent, run.on_executor[tool])`: the same, for a tool of one
    plain attempt on an entered executor (awaiting a call picks it: see `ToolCall`)."""

    async def fan_out(
        self,
        parent: Frame | None,
        calls: Iterable[ToolCall | Callable[[], Awaitable[Any]]],
        quick: bool = False,
    ) -> list[Any]:
        """Run calls concurrently on at most `max_concurrency` workers; results in order.
        (`quick`: taking the next call runs no caller code.)"""
        return await _reactive.FanOut(self, parent, calls, quick).run()

    async def call_graph(
        self, target: GraphTarget, inputs: dict[str, Any], parent: Frame
    ) -> dict[str, Any]:
        """Run a nested graph as a node of the parent graph, sharing this run's capacity."""
        return await _reactive.call_graph(self, target, inputs, parent)

    async def run_composite(
        self, idx: int, node_id: str, slot: Slot | None, body: Callable[[Frame], Awaitable[Any]]
    ) -> Any:
        """Run a node made of nodes (a nested graph, a map) in a frame of its own."""
        return await _reactive.run_composite(self, idx, node_id, slot, body)
