"""The reactive (graph_fn) scheduler: awaited tool calls, fan-outs, nested graphs and maps.

An awaited tool call takes capacity in the awaiting task and runs inline. A fan-out (`gather`,
`map`) runs its calls on at most `max_concurrency` worker tasks that pull calls from the
iterator in order, so live tasks stay O(max_concurrency) however many calls there are and a
streaming `map` never holds more than a window of them. A node that waits on nested work (a
nested graph, a fan-out inside a tool) lends its capacity, so nesting never deadlocks.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import trio

from ._attempt import execute_node, node_failed
from ._context import FRAME, Frame
from ._errors import ConfigError, NodeFailed, is_run_failure
from ._pace import Pacer
from ._slots import Limiters, Slot
from ._tool import ToolCall

if TYPE_CHECKING:
    import random

    from ._runstate import GraphTarget, RunState

__all__ = ["FanOut", "call_graph", "call_tool", "run_composite"]

Item = ToolCall | Callable[[], Awaitable[Any]]


def lend(frame: Frame | None) -> Limiters:
    """Give back the tokens a waiting node holds, so nested work can use them."""
    if frame is None:
        return ()
    slot = frame.slot
    if slot is None or not slot.held:
        return ()
    return slot.give_back()


async def reclaim(frame: Frame | None, lent: Limiters) -> None:
    if lent:
        assert frame is not None and frame.slot is not None
        await frame.slot.take(lent)


async def take_capacity(run: RunState, idx: int, slot: Slot, limiters: Limiters) -> None:
    """Take the node's tokens; a wait is counted in its record, a cancelled wait cancels it."""
    if slot.take_nowait(limiters):
        return
    started = run.now()
    try:
        await slot.take(limiters)
    except BaseException:
        run.ledger.cancel(idx)
        raise
    run.ledger.add_wait(idx, run.now() - started)


async def call_tool(run: RunState, call: ToolCall, parent: Frame) -> dict[str, Any]:
    """An awaited tool call: a node run inline in the awaiting task."""
    tool = call.tool
    limiters = run.check_tool(tool)  # before the node takes a slot
    node_id = run.node_id(parent.graph_id, tool.name)
    if not tool.plain:  # a plain tool runs in the loop: nothing is shipped
        run.executors.check_call(node_id, tool, call.inputs)
    ledger = run.ledger
    idx = ledger.add(node_id, tool.name, tool.executor_key)
    lent = lend(parent)
    slot = Slot()
    try:
        await take_capacity(run, idx, slot, limiters)
        frame = Frame(run, parent.graph_id, node_id, 1, slot)
        token = FRAME.set(frame)
        try:
            if not tool.plain or run.memo is not None:
                outputs = await execute_node(run, idx, tool, call.inputs, frame)
            else:
                # The hot path, inlined: execute_node minus executors, timeout, retry, reuse.
                ledger.start(idx, call.inputs)
                try:
                    outputs = tool.normalize(await tool.fn(**call.inputs))
                except Exception as exc:
                    ledger.fail(idx, exc)
                    raise node_failed(node_id, tool.name, exc) from exc
                except BaseException:
                    ledger.cancel(idx)
                    raise
                ledger.done(idx, outputs)
        finally:
            FRAME.reset(token)
            slot.give_back()
        await run.pacer.tick()
        return outputs
    finally:
        await reclaim(parent, lent)


def _shuffled(
    items: Iterator[tuple[int, Item]], rng: random.Random, window: int
) -> Iterator[tuple[int, Item]]:
    """Items in an order drawn from `rng`, a window at a time (streams stay streams)."""
    while True:
        chunk = [pair for _, pair in zip(range(window), items, strict=False)]
        if not chunk:
            return
        rng.shuffle(chunk)
        yield from chunk


class FanOut:
    """One `gather`/`map`: calls pulled in order by at most `max_concurrency` workers.

    Under `fail_fast` the first failure cancels the rest and is raised; otherwise every call
    finishes and one failure is raised bare, several as an `ExceptionGroup`. An error of the
    admission itself (a bad item, an iterable that raises, an undefined limit) is the caller's
    and is raised unwrapped, after the calls already started were cancelled.
    """

    __slots__ = (
        "admission_error",
        "cap",
        "fail_fast",
        "failures",
        "graph_id",
        "items",
        "nursery",
        "parent",
        "results",
        "runstate",
        "workers",
    )

    def __init__(self, run: RunState, parent: Frame | None, calls: Iterable[Item]) -> None:
        self.runstate = run
        self.parent = parent
        self.graph_id = parent.graph_id if parent is not None else run.graph_id
        self.results: list[Any] = []
        self.failures: list[Exception] = []
        self.admission_error: Exception | None = None
        self.fail_fast = run.policy == "fail_fast"
        self.cap = run.limiter.total_tokens
        self.workers = 0
        self.nursery: trio.Nursery | None = None
        items: Iterator[tuple[int, Item]] = enumerate(calls)
        if run.rng is not None:
            window = 64 if self.cap == math.inf else max(2, min(int(self.cap) * 2, 64))
            items = _shuffled(items, run.rng, window)
        self.items = items

    async def run(self) -> list[Any]:
        lent = lend(self.parent)
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                self.spawn()
        finally:
            await reclaim(self.parent, lent)
        if self.admission_error is not None:
            raise self.admission_error
        failures = self.failures
        if failures:
            if self.fail_fast or len(failures) == 1:
                raise failures[0]
            raise ExceptionGroup(f"{len(failures)} nodes failed", failures)
        return self.results

    def spawn(self) -> None:
        if self.workers < self.cap:
            self.workers += 1
            assert self.nursery is not None
            self.nursery.start_soon(self.worker)

    def fail(self, exc: Exception) -> None:
        self.failures.append(exc)
        if self.fail_fast:
            assert self.nursery is not None
            self.nursery.cancel_scope.cancel(reason="a sibling node failed")

    def refuse(self, exc: Exception) -> None:
        self.admission_error = exc
        assert self.nursery is not None
        self.nursery.cancel_scope.cancel(reason="gather/map could not admit a call")

    async def run_callable(self, i: int, fn: Callable[[], Awaitable[Any]]) -> None:
        # Not a node: it runs with the fan-out's own frame (a nested graph call lends nothing
        # of a worker's), and holds no capacity itself.
        FRAME.set(self.parent)
        try:
            self.results[i] = await fn()
        except Exception as exc:
            self.fail(exc)

    async def worker(self) -> None:
        run = self.runstate
        ledger = run.ledger
        results = self.results
        slot = Slot()
        # One frame per worker, re-pointed at each node it runs (a worker runs one at a time).
        frame = Frame(run, self.graph_id, "", 1, slot)
        FRAME.set(frame)  # this task's context only
        pacer = Pacer()
        spawned = False
        items = self.items
        while not (self.failures and self.fail_fast):
            try:
                i, item = next(items)
            except StopIteration:
                return
            except Exception as exc:  # the caller's iterable raised
                self.refuse(exc)
                return
            while len(results) <= i:  # admission order is item order (or an rng's window)
                results.append(None)
            if type(item) is not ToolCall:
                if not callable(item):
                    self.refuse(
                        ConfigError(
                            f"gather() takes tool calls or zero-argument async callables, got "
                            f"{item!r}; wrap other awaitables as `lambda: aw`"
                        )
                    )
                    return
                self.nursery.start_soon(self.run_callable, i, item)  # type: ignore[union-attr]
                continue
            item.used = True
            tool = item.tool
            try:
                limiters = run.check_tool(tool)
            except Exception as exc:
                self.refuse(exc)
                return
            node_id = run.node_id(self.graph_id, tool.name)
            if not tool.plain:
                try:
                    run.executors.check_call(node_id, tool, item.inputs)
                except Exception as exc:
                    self.refuse(exc)
                    return
            idx = ledger.add(node_id, tool.name, tool.executor_key)
            if not spawned:  # one more worker, once this one has work: never more than calls
                spawned = True
                self.spawn()
            await take_capacity(run, idx, slot, limiters)
            frame.node_id = node_id
            frame.attempt = 1
            try:
                if tool.plain and run.memo is None:
                    # The hot path, inlined: execute_node minus executors, timeout and retry.
                    inputs = item.inputs
                    ledger.start(idx, inputs)
                    try:
                        outputs = tool.normalize(await tool.fn(**inputs))
                    except Exception as exc:
                        ledger.fail(idx, exc)
                        raise node_failed(node_id, tool.name, exc) from exc
                    except BaseException:
                        ledger.cancel(idx)
                        raise
                    ledger.done(idx, outputs)
                    results[i] = outputs
                else:
                    results[i] = await execute_node(run, idx, tool, item.inputs, frame)
            except Exception as exc:
                self.fail(exc)
            finally:
                slot.give_back()
            await pacer.tick()


async def call_graph(
    run: RunState, target: GraphTarget, inputs: dict[str, Any], parent: Frame
) -> dict[str, Any]:
    """A nested graph: a node of the parent graph, sharing the run's capacity."""
    node_id = run.node_id(parent.graph_id, target.name)
    idx = run.ledger.add(node_id, target.name, "loop")
    outputs: dict[str, Any] = await run_composite(
        run, idx, node_id, parent.slot, lambda frame: target.run_body(run, inputs, frame)
    )
    return outputs


async def run_composite(
    run: RunState,
    idx: int,
    node_id: str,
    slot: Slot | None,
    body: Callable[[Frame], Awaitable[Any]],
) -> Any:
    """Run a node made of nodes (a nested graph, a map) in a frame of its own.

    The node holds no capacity while its inner nodes run: it lends what `slot` holds. An inner
    failure is recorded on this node too and propagates unchanged.
    """
    ledger = run.ledger
    ledger.start(idx)
    lent = slot.give_back() if slot is not None else ()
    frame = Frame(run, node_id, node_id, 1, None)
    token = FRAME.set(frame)
    try:
        outputs = await body(frame)
    except Exception as exc:
        if isinstance(exc, NodeFailed) and exc.node_id == node_id and exc.__cause__ is not None:
            ledger.fail(idx, exc.__cause__)  # the nested graph's own body failed
        elif is_run_failure(exc):
            ledger.fail_inner(idx, exc)
        else:
            ledger.fail(idx, exc)
        raise
    except BaseException:
        ledger.cancel(idx)
        raise
    finally:
        FRAME.reset(token)
        if lent:
            assert slot is not None
            await slot.take(lent)
    ledger.done(idx, outputs)
    return outputs
