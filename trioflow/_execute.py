"""Running nodes: one node's attempts, and the reactive scheduling of awaited tool calls.

`RunState` is the live state of one run (its ledger, its capacity limiter, its error policy).
`execute_node` runs one node body: timeout per attempt, retries with backoff in Trio time, sync
tools in a worker thread, the outputs contract, and the record. Awaited tool calls (`graph_fn`)
take capacity in the awaiting task and run inline; fan-outs take capacity *before* spawning, so
the number of live tasks stays O(max_concurrency) however many calls there are.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Literal, Protocol

import attrs
import trio

from ._context import FRAME, Frame, ServiceAccess, context_from_frame
from ._errors import ConfigError, NodeFailed, TrioflowError
from ._ledger import Ledger
from ._records import NodeState
from ._slots import Limiters, Slot
from ._tool import InputSpec, Tool, ToolCall
from ._trace import TRACER

__all__ = [
    "ErrorPolicy",
    "GraphCall",
    "GraphTarget",
    "RunState",
    "call_graph_target",
    "execute_node",
    "fail_node",
]

ErrorPolicy = Literal["fail_fast", "skip_dependents", "collect"]

_RUNNING = NodeState.RUNNING
_DONE = NodeState.DONE
_FAILED = NodeState.FAILED
_CANCELLED = NodeState.CANCELLED
_PENDING = NodeState.PENDING


class GraphTarget(Protocol):
    """A graph that can run inside a run: `@graph_fn` and `@graphify` objects."""

    @property
    def name(self) -> str: ...
    @property
    def outputs(self) -> tuple[str, ...]: ...
    @property
    def spec(self) -> InputSpec: ...

    def check_inputs(self, inputs: Mapping[str, Any] | None) -> dict[str, Any]: ...

    async def run_body(self, run: RunState, inputs: dict[str, Any], frame: Frame) -> Any: ...


@attrs.define(eq=False)
class RunState:
    """The live state of one run, shared by its nested graphs."""

    run_id: str
    graph_id: str
    limiter: trio.CapacityLimiter
    policy: ErrorPolicy = "fail_fast"
    rng: random.Random | None = None
    global_limiter: trio.CapacityLimiter | None = None
    resources: Mapping[str, trio.CapacityLimiter] = attrs.field(factory=dict)
    services: ServiceAccess | None = None
    ledger: Ledger = attrs.field(factory=Ledger)
    # The clock's own bound method: cheaper than trio.current_time() on the per-node path.
    now: Callable[[], float] = attrs.field(
        factory=lambda: trio.lowlevel.current_clock().current_time, init=False
    )
    _counters: dict[str, int] = attrs.field(factory=dict, init=False)
    _limiters: dict[tuple[str, ...], Limiters] = attrs.field(factory=dict, init=False)

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

    def check_limits(self, tools: Iterable[Tool]) -> None:
        """Fail before a run starts if one of its tools needs an undefined limit."""
        for t in tools:
            if t.limits:
                self.limiters_for(t.limits)

    # -- awaited tool calls (graph_fn) ---------------------------------------------------

    async def call(self, call: ToolCall, parent: Frame) -> dict[str, Any]:
        """Run an awaited tool call as a node, inline in the awaiting task."""
        tool = call.tool
        limiters = self._limiters.get(tool.limits) or self.limiters_for(tool.limits)
        node_id = self.node_id(parent.graph_id, tool.name)
        idx = self.ledger.add(node_id, tool.name)
        lent = _lend(parent) if parent.slot is not None else ()
        slot = Slot()
        try:
            try:
                if len(limiters) == 1:  # the common case, without a frame in between
                    await limiters[0].acquire_on_behalf_of(slot)
                    slot.held = limiters
                else:
                    await slot.take(limiters)
            except BaseException:
                self.ledger.states[idx] = _CANCELLED
                raise
            token = FRAME.set(Frame(self, parent.graph_id, node_id, 1, slot))
            try:
                if not tool.plain:
                    return await execute_node(self, idx, tool, call.inputs)
                # The hot path, inlined: execute_node minus timeout, retry and threads.
                ledger, now = self.ledger, self.now
                ledger.states[idx] = _RUNNING
                ledger.started[idx] = now()
                ledger.attempts[idx] = 1
                try:
                    outputs = tool.normalize(await tool.fn(**call.inputs))
                except Exception as exc:
                    raise fail_node(self, idx, node_id, tool.name, exc) from exc
                except BaseException:
                    ledger.states[idx] = _CANCELLED
                    ledger.finished[idx] = now()
                    raise
                ledger.states[idx] = _DONE
                ledger.finished[idx] = now()
                return outputs
            finally:
                FRAME.reset(token)
                slot.give_back()
        finally:
            if lent:
                await _reclaim(parent, lent)

    async def fan_out(
        self, parent: Frame | None, calls: Iterable[ToolCall | Callable[[], Awaitable[Any]]]
    ) -> list[Any]:
        """Run calls concurrently; results in order. Capacity is taken before each spawn.

        Under `fail_fast` the first failure cancels the rest and is raised; otherwise every
        call finishes and one failure is raised bare, several as an `ExceptionGroup`.
        """
        results: list[Any] = []
        failures: list[Exception] = []
        admission_error: Exception | None = None
        fail_fast = self.policy == "fail_fast"
        lent = _lend(parent) if parent is not None else ()
        graph_id = parent.graph_id if parent is not None else self.graph_id
        ledger = self.ledger
        try:
            async with trio.open_nursery() as nursery:

                async def run_one(i: int, fn: Callable[[], Awaitable[Any]]) -> None:
                    try:
                        results[i] = await fn()
                    except Exception as exc:
                        failures.append(exc)
                        if fail_fast:
                            nursery.cancel_scope.cancel(reason="a sibling node failed")

                async def run_node(i: int, call: ToolCall, idx: int, slot: Slot) -> None:
                    FRAME.set(Frame(self, graph_id, ledger.ids[idx], 1, slot))  # this task's
                    try:
                        results[i] = await execute_node(self, idx, call.tool, call.inputs)
                    except Exception as exc:
                        failures.append(exc)
                        if fail_fast:
                            nursery.cancel_scope.cancel(reason="a sibling node failed")
                    finally:
                        slot.give_back()

                try:
                    for i, call in enumerate(calls):
                        results.append(None)
                        if isinstance(call, ToolCall):
                            tool = call.tool
                            limiters = self.limiters_for(tool.limits)
                            idx = ledger.add(self.node_id(graph_id, tool.name), tool.name)
                            slot = Slot()
                            # Acquire before spawning: a million-item map must not park a million
                            # tasks on the limiter (trio#527).
                            if not slot.take_nowait(limiters):
                                try:
                                    await slot.take(limiters)
                                except BaseException:
                                    ledger.states[idx] = _CANCELLED
                                    raise
                            nursery.start_soon(run_node, i, call, idx, slot)
                        elif callable(call):
                            nursery.start_soon(run_one, i, call)
                        else:
                            raise ConfigError(
                                f"gather() takes tool calls or zero-argument async callables, got "
                                f"{call!r}; wrap other awaitables as `lambda: aw`"
                            )
                        if failures and fail_fast:
                            break
                        await trio.lowlevel.checkpoint_if_cancelled()
                except Exception as exc:
                    # An error of the admission loop itself (a bad item, an iterable that
                    # raises, an undefined limit) is the caller's: raise it unwrapped, after
                    # the calls already started are cancelled.
                    admission_error = exc
                    nursery.cancel_scope.cancel(reason="gather/map could not admit a call")
        finally:
            if lent:
                await _reclaim(parent, lent)  # type: ignore[arg-type]
        if admission_error is not None:
            raise admission_error
        if failures:
            if fail_fast or len(failures) == 1:
                raise failures[0]
            raise ExceptionGroup(f"{len(failures)} nodes failed", failures)
        return results

    # -- nested graphs -------------------------------------------------------------------

    async def call_graph(
        self, target: GraphTarget, inputs: dict[str, Any], parent: Frame
    ) -> dict[str, Any]:
        """Run a nested graph as a node of the parent graph, sharing this run's capacity."""
        node_id = self.node_id(parent.graph_id, target.name)
        idx = self.ledger.add(node_id, target.name)
        outputs: dict[str, Any] = await self.run_composite(
            idx, node_id, parent.slot, lambda frame: target.run_body(self, inputs, frame)
        )
        return outputs

    async def run_map(
        self, tool: Tool, calls: Iterable[ToolCall], idx: int, node_id: str, slot: Slot | None
    ) -> dict[str, list[Any]]:
        """A map node: fan the calls out (ids prefixed by `node_id`); outputs become lists."""

        async def body(frame: Frame) -> dict[str, list[Any]]:
            results = await self.fan_out(frame, calls)
            return {out: [r[out] for r in results] for out in tool.outputs}

        outputs: dict[str, list[Any]] = await self.run_composite(idx, node_id, slot, body)
        return outputs

    async def run_composite(
        self,
        idx: int,
        node_id: str,
        slot: Slot | None,
        body: Callable[[Frame], Awaitable[Any]],
    ) -> Any:
        """Run a node made of nodes (a nested graph, a map) in a frame of its own.

        The node holds no capacity while its inner nodes run: it lends what `slot` holds.
        An inner failure is recorded on this node too and propagates unchanged.
        """
        ledger = self.ledger
        ledger.states[idx] = _RUNNING
        ledger.started[idx] = self.now()
        ledger.attempts[idx] = 1
        lent = slot.give_back() if slot is not None else ()
        frame = Frame(self, node_id, node_id, 1, None)
        token = FRAME.set(frame)
        try:
            outputs = await body(frame)
        except BaseException as exc:
            ledger.finished[idx] = self.now()
            if isinstance(exc, Exception):
                ledger.states[idx] = _FAILED
                ledger.errors[idx] = exc
            else:
                ledger.states[idx] = _CANCELLED
            raise
        finally:
            FRAME.reset(token)
            if lent:
                assert slot is not None
                await slot.take(lent)
        ledger.states[idx] = _DONE
        ledger.finished[idx] = self.now()
        return outputs


def _lend(frame: Frame) -> Limiters:
    """Give back the tokens a waiting node holds, so nested work can use them."""
    slot = frame.slot
    if slot is None or not slot.held:
        return ()
    return slot.give_back()


async def _reclaim(frame: Frame, lent: Limiters) -> None:
    slot = frame.slot
    assert slot is not None
    await slot.take(lent)


@attrs.frozen(eq=False)
class GraphCall:
    """An awaitable call of a graph inside a run: awaiting it runs the nested graph."""

    target: GraphTarget
    inputs: dict[str, Any]

    def __await__(self) -> Any:
        frame = FRAME.get()
        if frame is None:
            raise TrioflowError(
                f"a call of graph {self.target.name!r} was awaited outside the run that made it"
            )
        return frame.run.call_graph(self.target, self.inputs, frame).__await__()


def call_graph_target(target: GraphTarget, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """What calling a graph (graph_fn or graphify) means where it is called: in a `@graphify`
    trace, a subgraph node; in a run, an awaitable nested graph; elsewhere, a coroutine that
    runs the graph as a run of its own."""
    tracer = TRACER.get()
    if tracer is not None:
        return tracer.call(target, args, kwargs)
    inputs = target.check_inputs(target.spec.bind(args, kwargs))
    if FRAME.get() is not None:
        return GraphCall(target, inputs)
    from ._runtime import run_async

    return run_async(target, inputs)


async def _invoke(tool: Tool, inputs: Mapping[str, Any], frame: Frame) -> Any:
    context = context_from_frame(frame) if tool.context_param is not None else None
    if tool.is_async:
        return await tool.invoke(inputs, context)
    # Sync tools never block the loop; the thread is waited for (structured), and the frame
    # travels with the copied contextvars so current_context() works inside it.
    return await trio.to_thread.run_sync(tool.invoke, inputs, context)


async def execute_node(
    run: RunState, idx: int, tool: Tool, inputs: Mapping[str, Any]
) -> dict[str, Any]:
    """Run one node to completion: attempts, timeout, retry, outputs contract, record.

    The caller has set `FRAME` to this node's frame. A failure raises `NodeFailed` from the
    original exception. Cancellation marks the node `CANCELLED` and propagates untouched.
    """
    frame = FRAME.get()
    assert frame is not None
    node_id = frame.node_id
    ledger = run.ledger
    now = run.now
    ledger.states[idx] = _RUNNING
    ledger.started[idx] = now()
    retry = tool.retry
    timeout = tool.timeout
    plain = tool.is_async and tool.context_param is None
    try:
        attempt = frame.attempt = 1
        while True:
            ledger.attempts[idx] = attempt
            try:
                if timeout is None:
                    result = await (tool.fn(**inputs) if plain else _invoke(tool, inputs, frame))
                else:
                    with trio.fail_after(timeout):
                        result = await _invoke(tool, inputs, frame)
            except Exception as exc:
                if (
                    retry is not None
                    and attempt < retry.attempts
                    and isinstance(exc, (*retry.retry_on, trio.TooSlowError))
                ):
                    delay = retry.delay(attempt)
                    if delay > 0:
                        await trio.sleep(delay)
                    attempt = frame.attempt = attempt + 1
                    continue
                raise fail_node(run, idx, node_id, tool.name, exc) from exc
            try:
                outputs = tool.normalize(result)
            except Exception as exc:
                raise fail_node(run, idx, node_id, tool.name, exc) from exc
            ledger.states[idx] = _DONE
            ledger.finished[idx] = now()
            return outputs
    except BaseException:
        if ledger.states[idx] is _RUNNING:
            ledger.states[idx] = _CANCELLED
            ledger.finished[idx] = now()
        raise


def fail_node(run: RunState, idx: int, node_id: str, tool: str, exc: Exception) -> NodeFailed:
    """Record a node's failure; returns the `NodeFailed` to raise from `exc`."""
    ledger = run.ledger
    ledger.states[idx] = _FAILED
    ledger.finished[idx] = run.now()
    ledger.errors[idx] = exc
    return NodeFailed(node_id, tool, f"node {node_id!r} (tool {tool!r}) failed: {exc!r}")
