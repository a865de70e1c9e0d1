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
from ._process import ProcessExecutor
from ._shipping import ATOMS, check_shippable, shippable
from ._slots import Limiters, Slot
from ._tool import ToolCall

if TYPE_CHECKING:
    import random

    from ._runstate import GraphTarget, RunState
    from ._tool import Tool

__all__ = [
    "SEQUENCES",
    "FanOut",
    "OnExecutor",
    "call_graph",
    "call_on_executor",
    "call_tool",
    "run_composite",
]

# Items whose iteration runs no caller code: a map over one is a `quick` fan-out (`FanOut`).
SEQUENCES = (list, tuple, range)

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
    """An awaited tool call: a node run inline in the awaiting task.

    A plain async tool runs in the loop, inlined here rather than through `execute_node`. A
    tool of one plain attempt on an entered executor (a thread, a process, ...) is noted in
    `run.on_executor` on its first call, and its calls go to `call_on_executor`.
    """
    tool = call.tool
    limiters = run.checked.get(tool) or run.check_tool(tool)  # before the node takes a slot
    node_id = run.node_id(parent.graph_id, tool.name)
    key = tool.executor_key
    inputs = dict(call)  # a plain dict of its own: what leaves for tools, executors, events
    if not tool.plain:  # (a plain tool runs in the loop: nothing is shipped)
        executor: Any = None
        if tool.one_attempt and run.memo is None:
            executor = run.executors.entered(key)
        if executor is None:  # the general path (or the executor's first use)
            run.executors.check_call(node_id, tool, inputs)
        else:  # (its first call here: checked, and noted for the next ones)
            fn = tool.fn
            ships = bool(getattr(executor, "ships", False))
            if ships:
                check_shippable(node_id, fn, (), inputs)
                if tool.is_async:
                    fn = shippable(fn)
            job, after = None, key != "loop"
            # A ProcessExecutor's job is awaited in `call_on_executor`, not through its `run`:
            # each suspension of a worker's round trip passes through every coroutine on the
            # way (one suspension with `_workers`, five to seven without). A job that kills
            # its worker on cancel is itself cancelled by a deadline that passes: no check
            # for one after it (a thread's must be checked).
            if type(executor).run is _process_run:
                job, after = executor._job, not executor.kill_on_cancel
            entry = run.on_executor[tool] = (executor, fn, ships, job, limiters, after)
            return await call_on_executor(run, call, parent, entry, node_id)
    ledger = run.ledger
    held = parent.slot  # (`lend`, inlined)
    lent = held.give_back() if held is not None and held.held else ()
    slot = Slot()
    idx = -1  # the node's ledger row: added once its capacity is taken, or it must wait
    try:
        if not slot.take_nowait(limiters):
            idx = ledger.add(node_id, tool.name, key)
            await take_capacity(run, idx, slot, limiters)
        frame = Frame(run, parent.graph_id, node_id, 1, slot)
        token = FRAME.set(frame)
        try:
            if not tool.plain or run.memo is not None:
                if idx < 0:
                    idx = ledger.add(node_id, tool.name, key)
                outputs = await execute_node(run, idx, tool, inputs, frame)
            else:
                # The hot path, inlined: execute_node's one attempt with nothing around it, a
                # plain async tool in the loop itself.
                if idx < 0:
                    idx = ledger.add_running(node_id, tool.name, key, inputs)
                else:
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
        finally:
            FRAME.reset(token)
            slot.give_back()
        await run.pacer.tick()
        return outputs
    finally:
        if lent:
            await reclaim(parent, lent)


async def call_on_executor(
    run: RunState, call: ToolCall, parent: Frame, entry: OnExecutor, node_id: str | None = None
) -> dict[str, Any]:
    """An awaited call of a tool noted in `run.on_executor` (`entry`): one plain attempt on
    an entered executor, `execute_node`'s common case inlined, since a thread's or a process's
    round trip is short enough that every call and coroutine on the way shows. (`node_id`:
    the one `call_tool` took for the tool's first call, whose inputs it checked.)"""
    tool = call.tool
    inputs = dict(call)  # a plain dict of its own: what leaves for executors and events
    executor, fn, ships, job, limiters, after = entry
    if node_id is None:
        node_id = run.node_id(parent.graph_id, tool.name)
        if ships:
            for value in inputs.values():
                if type(value) not in ATOMS:  # (`check_shippable`'s first test, inlined)
                    check_shippable(node_id, tool.fn, (), inputs)
                    break
    key = tool.executor_key
    ledger = run.ledger
    held = parent.slot  # (`lend`, inlined)
    lent = held.give_back() if held is not None and held.held else ()
    slot = Slot()
    try:
        if slot.take_nowait(limiters):
            idx = ledger.add_running(node_id, tool.name, key, inputs)
        else:
            idx = ledger.add(node_id, tool.name, key)
            await take_capacity(run, idx, slot, limiters)
            ledger.start(idx, inputs)
        # A tool that runs in another process or on another machine cannot see this task's
        # frame, and nothing here reads it meanwhile: it is not made.
        token = None if ships else FRAME.set(Frame(run, parent.graph_id, node_id, 1, slot))
        try:
            if job is not None:  # `ProcessExecutor.run`, inlined
                try:
                    result = await job(fn, None, inputs)
                except Exception as exc:
                    failed = executor._failed(fn, exc)
                    if failed is exc:
                        raise
                    raise failed from None
                suspended = True  # (a process call always waits for its reply in Trio)
            else:
                task = _current_task()
                points = task._schedule_points if _COUNTS_TRIPS else -1
                result = await executor.run(fn, **inputs)
                suspended = points >= 0 and task._schedule_points != points
            if after:
                # A run deadline (or outer cancel) that passed while a thread ran.
                await _checkpoint_if_cancelled()
            names = tool.outputs
            if len(names) == 1 and type(result) is not dict:
                outputs = {names[0]: result}  # (`normalize`'s common case, inlined)
            else:
                outputs = tool.normalize(result)
        except Exception as exc:
            ledger.fail(idx, exc)
            raise node_failed(node_id, tool.name, exc) from exc
        except BaseException:
            ledger.cancel(idx)
            raise
        finally:
            if token is not None:
                FRAME.reset(token)
            slot.give_back()
        ledger.done(idx, outputs)
        if not suspended or key == "loop":
            # A node whose executor went through the scheduler (and then checked for a
            # cancel) has given every other task its turn already: no pacing needed.
            await run.pacer.tick()
        return outputs
    finally:
        if lent:
            await reclaim(parent, lent)


# What `call_on_executor` needs of a tool: its executor, the function to hand it (checked for
# shipping), whether it ships, its job method for a ProcessExecutor, its limiters, and whether
# to check for a cancel after an attempt.
OnExecutor = tuple[Any, Callable[..., Any], bool, Any, Limiters, bool]


_current_task = trio.lowlevel.current_task
_process_run = ProcessExecutor.run
# Trio counts each task's trips through the scheduler (`Task._schedule_points`, private, read
# only): a node whose executor made one needs no pacing. Without it every node is paced.
_COUNTS_TRIPS = hasattr(trio.lowlevel.Task, "_schedule_points")
_checkpoint_if_cancelled = trio.lowlevel.checkpoint_if_cancelled


def _waited_for(limiters: Limiters) -> bool:
    """Whether some task waits for a token of one of `limiters`."""
    # `statistics().tasks_waiting` costs as much as a release and a re-acquire; the parking
    # lot's length is the same number. Without it (a future trio), assume someone waits.
    # (A loop, not `any()` over a generator: this runs once per fan-out call.)
    for limiter in limiters:
        lot = getattr(limiter, "_lot", None)
        if lot is None or lot:
            return True
    return False


def _taken(calls: list[Any]) -> Iterator[tuple[int, Item]]:
    """The calls of a list in order, each taken out of it (the list gives up its reference:
    a call already run is freed at once, not with the whole list at the end)."""
    for i in range(len(calls)):
        item = calls[i]
        calls[i] = None
        yield i, item


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
    and is raised unwrapped, after the calls already started were cancelled. A list of calls
    (gather's) is emptied as it is read, so each call is freed once it has run.
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
        "quick",
        "results",
        "runstate",
        "workers",
    )

    def __init__(
        self, run: RunState, parent: Frame | None, calls: Iterable[Item], quick: bool = False
    ) -> None:
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
        items: Iterator[tuple[int, Item]]
        # Whether taking the next call runs no caller code (gather's list, or `quick`: a map
        # over `SEQUENCES`): a worker may then reuse a clock reading across it.
        self.quick = quick
        if type(calls) is list:  # (gather's)
            self.quick = True
            items = _taken(calls)
            self.results = [None] * len(calls)
        else:
            items = enumerate(calls)
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
        checked: Tool | None = None  # the tool of the last call, its limiters in `limiters`
        limiters: Limiters = ()
        now: float | None = None  # a clock reading that is still the time, or None
        quick = self.quick
        try:
            while not (self.failures and self.fail_fast):
                try:
                    i, item = next(items)
                except StopIteration:
                    return
                except Exception as exc:  # the caller's iterable raised
                    self.refuse(exc)
                    return
                if not quick:  # the caller's iterable ran: the time has moved on
                    now = None
                while len(results) <= i:  # admission order is item order (or an rng's window)
                    results.append(None)
                if type(item) is not ToolCall:
                    if not callable(item):
                        self.refuse(
                            ConfigError(
                                f"gather() takes tool calls or zero-argument async callables, "
                                f"got {item!r}; wrap other awaitables as `lambda: aw`"
                            )
                        )
                        return
                    self.nursery.start_soon(self.run_callable, i, item)  # type: ignore[union-attr]
                    continue
                item.used = True
                tool = item.tool
                if tool is not checked:  # (a fan-out's calls are mostly of one tool)
                    try:
                        limiters = run.check_tool(tool)
                    except Exception as exc:
                        self.refuse(exc)
                        return
                    checked = tool
                node_id = run.node_id(self.graph_id, tool.name)
                hot = tool.plain and run.memo is None  # (the inlined path below)
                if hot and ledger.listener is None:
                    inputs: dict[str, Any] = item  # (only spread into the call: no copy needed)
                else:
                    inputs = dict(item)  # a plain dict of its own, as in `call_tool`
                if not tool.plain:
                    try:
                        run.executors.check_call(node_id, tool, inputs)
                    except Exception as exc:
                        self.refuse(exc)
                        return
                if not spawned:  # one more worker, once this one has work: never more than calls
                    spawned = True
                    self.spawn()
                # The previous call's tokens are kept while this loop runs without suspending
                # (no other task can see them) and reused when this call needs the same ones
                # and no other task waits for them: the same as giving them back and taking
                # them again, minus the cost.
                if slot.held is not limiters or _waited_for(limiters):
                    slot.give_back()
                    idx = ledger.add(node_id, tool.name, tool.executor_key)
                    await take_capacity(run, idx, slot, limiters)
                    now = None
                else:
                    idx = -1
                frame.node_id = node_id
                frame.attempt = 1
                try:
                    if hot:
                        # The hot path, inlined: execute_node minus executors, timeout, retry.
                        # (`now`: the previous node's finish, if nothing suspended since.)
                        if idx < 0:
                            idx = ledger.add_running(node_id, tool.name, "loop", inputs, now)
                        else:
                            ledger.start(idx, inputs)
                        now = None
                        try:
                            result = await tool.fn(**inputs)
                            names = tool.outputs
                            if len(names) == 1 and type(result) is not dict:
                                outputs = {names[0]: result}  # (`normalize`, its common case)
                            else:
                                outputs = tool.normalize(result)
                        except Exception as exc:
                            ledger.fail(idx, exc)
                            raise node_failed(node_id, tool.name, exc) from exc
                        except BaseException:
                            ledger.cancel(idx)
                            raise
                        now = ledger.done(idx, outputs)
                        results[i] = outputs
                    else:
                        now = None
                        if idx < 0:
                            idx = ledger.add(node_id, tool.name, tool.executor_key)
                        results[i] = await execute_node(run, idx, tool, inputs, frame)
                except Exception as exc:
                    self.fail(exc)
                if await pacer.tick(slot):
                    now = None
        finally:
            slot.give_back()


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
