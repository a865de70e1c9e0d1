"""Lowering a TaskGraph into one nursery.

The graph is lowered once into index arrays (`Plan`): dependents lists and in-degree counters,
so a completion costs O(its out-degree), never a scan. A run of a plan is a small pool of
workers, at most `max_concurrency`, spawned only when ready work outnumbers idle workers; each
pops the next ready node (lowest index first: insertion order, which is topological; or a
random ready node when the run has an `rng`). Live tasks stay O(max_concurrency), not O(nodes).
"""

from __future__ import annotations

import collections
import heapq
from collections.abc import Mapping
from time import perf_counter
from typing import Any, Protocol

import attrs
import trio
from trio.lowlevel import checkpoint_if_cancelled

from ._attempt import execute_node, node_failed
from ._context import FRAME, Frame
from ._errors import DependencyFailed, GraphBuildError, NodeFailed, is_run_failure
from ._graph import InputRef, OutputRef, TaskGraph, resolve
from ._pace import interval
from ._plan import MAP, TOOL, UNSET, Plan, output_slot, plan_of_graph, take_plan
from ._reactive import SEQUENCES, FanOut
from ._records import ErrorInfo, NodeState
from ._runstate import RunState
from ._slots import Slot
from ._tool import Tool, map_calls

__all__ = ["CompiledGraph", "Plan", "Traceable", "plan_for", "plan_of_graph", "run_plan"]

_PENDING = NodeState.PENDING
# Values a store encodes as they are, never failing: scalars, and ints short enough to print
# (`sys.get_int_max_str_digits`: a longer one fails its node when encoded, as it always did).
_SCALARS = frozenset({str, float, bool, type(None)})
_INT_LIMIT = 10**600  # printable under any limit (the lowest one allowed is 640 digits)


class Traceable(Protocol):
    """A `@graphify` object as the scheduler sees it: it traces into a `TaskGraph`."""

    @property
    def plans(self) -> dict[str, Any]: ...

    def trace(self, values: Mapping[str, Any] | None) -> TaskGraph: ...


def plan_for(target: Traceable, inputs: Mapping[str, Any]) -> Plan:
    """The plan for a run of a graphify graph: traced and lowered once when its shape does not
    depend on input values, else traced with the values of each run."""
    cache = target.plans
    shape = cache.get("shape")
    if shape == "static":
        plan: Plan = cache["plan"]
        return plan
    if shape is None:
        try:
            graph = target.trace(None)
        except GraphBuildError as exc:
            if exc.code != "shape-dependent":
                raise
            cache["shape"] = "dynamic"
        else:
            plan = plan_of_graph(graph)
            cache.update(shape="static", plan=plan)
            return plan
    return take_plan(target.trace(inputs))


class _Missing(Exception):
    """An output ref whose node did not produce a value."""


@attrs.define(eq=False)
class _PlanRun:
    """The mutable state of one run of a plan."""

    run: RunState
    plan: Plan
    inputs: Mapping[str, Any]
    graph_id: str
    prefix: str
    node_ids: list[str]
    base: int
    cap: float
    # Every output of the run, flat (see `_plan`): a fan-in reads a list slot per dependency,
    # never a dict per node.
    values: list[Any]
    indegree: list[int]
    # Ready nodes, lowest index first: a sorted FIFO (the initial roots, and each node that
    # becomes ready above its last: O(1) pops even for a million-node fan-out) merged with a
    # heap of the nodes that became ready below it.
    # With an rng, `ready` is one list and a random element is taken instead.
    ready: collections.deque[int]
    remaining: int
    fast: list[bool]
    later: list[int] = attrs.field(factory=list)
    lot: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot)
    idle: int = 0
    workers: int = 0
    failures: list[Exception] = attrs.field(factory=list)
    failed: list[int] = attrs.field(factory=list)
    nursery: trio.Nursery | None = None

    # -- values ------------------------------------------------------------------------------

    def store(self, i: int, outputs: Mapping[str, Any]) -> None:
        """Node i's outputs, into their slots (see `_plan`)."""
        values, names = self.values, self.plan.targets[i].outputs
        if names:
            values[i] = outputs[names[0]]
            if len(names) > 1:
                extra = self.plan.extra
                for k in range(1, len(names)):
                    values[output_slot(i, k, extra)] = outputs[names[k]]

    # -- the ready queue -------------------------------------------------------------------

    def pop_random(self) -> int:
        """A random ready node (a run with an `rng`), or -1 when none is ready. Without one,
        the worker pops the lowest ready index itself."""
        ready = self.ready
        if not ready:
            return -1
        k = self.run.rng.randrange(len(ready))  # type: ignore[union-attr]
        ready[k], ready[-1] = ready[-1], ready[k]
        return ready.pop()

    def push_ready(self, i: int) -> None:
        ready = self.ready
        if self.run.rng is not None or not ready or i > ready[-1]:
            ready.append(i)  # still sorted (or unordered, with an rng)
        else:
            heapq.heappush(self.later, i)

    def wake(self, count: int) -> None:
        """Make sure `count` more ready nodes have a worker: unpark idle ones, spawn the rest."""
        if self.idle and count:
            woken = len(self.lot.unpark(count=min(count, self.idle)))
            self.idle -= woken
            count -= woken
        spawn = min(count, self.cap - self.workers)
        if spawn > 0:
            assert self.nursery is not None
            for _ in range(int(spawn)):
                self.workers += 1
                self.nursery.start_soon(self.worker)

    # -- workers ---------------------------------------------------------------------------

    async def worker(self) -> None:
        run = self.run
        plan = self.plan
        slot = Slot()
        limiters = run.limiters_for(())
        # One frame per worker, re-pointed at each node it runs (a worker runs one at a time).
        frame = Frame(run, self.graph_id, "", 1, slot)
        FRAME.set(frame)  # this task's context only
        fast, targets, names, args = self.fast, plan.targets, plan.names, plan.args
        values, indegree = self.values, self.indegree
        dependents = plan.dependents
        ledger = run.ledger
        start, done, fail, cancel = ledger.start, ledger.done, ledger.fail, ledger.cancel
        accept = run.memo.accept if run.memo is not None else None
        # Nobody looks at a node's outputs dict: a one-output tool's value goes to its slot
        # without one (listeners are fixed when a run starts). A memo that `reads_slots` (a
        # store) reads a one-output tool's scalar value from its slot later, in bulk.
        bare = accept is None and ledger.listener is None
        lazy = (
            accept is not None
            and ledger.listener is None
            and getattr(run.memo, "reads_slots", False)
        )
        base, node_ids = self.base, self.node_ids
        ready, later = self.ready, self.later
        ordered = run.rng is None
        heappop, heappush = heapq.heappop, heapq.heappush
        lookup = self.lookup
        # Pacing (see _pace): check for cancellation after every node; yield for real once
        # `every` seconds of running have passed since this worker last resumed.
        every = interval()
        last = perf_counter()
        # The finish time of the node this worker ran last, while the worker has not suspended
        # since: it is still the time, and the next node's start (one clock read per node).
        now: float | None = None
        try:
            while True:
                if not ordered:
                    i = self.pop_random()
                elif later:
                    i = ready.popleft() if ready and ready[0] < later[0] else heappop(later)
                elif ready:
                    i = ready.popleft()
                else:
                    i = -1
                if i < 0:
                    if self.remaining <= 0:
                        return
                    slot.give_back()  # an idle worker holds no capacity
                    self.idle += 1
                    await self.lot.park()
                    now = None
                    last = perf_counter()
                    continue
                if not slot.held and not slot.take_nowait(limiters):
                    await slot.take(limiters)
                    now = None
                    last = perf_counter()
                frame.node_id = node_ids[i]
                frame.attempt = 1
                if fast[i]:
                    # The hot path, inlined: execute_node minus executors, timeout and retry.
                    idx = base + i
                    try:
                        a = args[i]
                        kwargs = a[0].build(values, a, lookup)
                        start(idx, kwargs, now)
                        target = targets[i]
                        result = await target.fn(**kwargs)
                        outs = target.outputs
                        if type(result) is not dict and len(outs) == 1:  # one output, bare
                            if bare or (
                                lazy
                                and (
                                    type(result) in _SCALARS
                                    or (type(result) is int and -_INT_LIMIT < result < _INT_LIMIT)
                                )
                            ):
                                outputs = None
                            else:
                                outputs = {outs[0]: result}
                                if accept is not None:  # a store encodes them first: an
                                    accept(node_ids[i], target, outputs)  # unstorable one fails
                            values[i] = result  # (its one output's slot)
                        else:
                            outputs = target.normalize(result)
                            if accept is not None:
                                accept(node_ids[i], target, outputs)
                            self.store(i, outputs)
                    except Exception as exc:
                        now = None
                        fail(idx, exc)
                        error = node_failed(node_ids[i], names[i], exc)
                        error.__cause__ = exc
                        self.on_failure(i, error)
                    except BaseException:
                        cancel(idx)
                        raise
                    else:
                        now = done(idx, outputs)
                        # Release the dependents (inlined `complete`).
                        pushed = 0
                        for d in dependents[i]:
                            left = indegree[d] - 1
                            indegree[d] = left
                            if not left:
                                # `ready` stays sorted: a node above its last goes there
                                # (cheaper than the heap; a fan-out's dependents all do).
                                if not ordered or not ready or d > ready[-1]:
                                    ready.append(d)
                                else:
                                    heappush(later, d)
                                pushed += 1
                        if pushed > 1:
                            self.wake(pushed - 1)  # this worker takes one of them itself
                        self.remaining -= 1
                        if self.remaining <= 0:
                            self.finish()
                else:
                    now = None
                    await self.run_node(i, slot, frame)
                if perf_counter() - last >= every:
                    await trio.lowlevel.checkpoint()
                    now = None
                    last = perf_counter()
                else:
                    await checkpoint_if_cancelled()
        finally:
            slot.give_back()

    def args_for(self, i: int) -> dict[str, Any]:
        """Node i's arguments dict (see `_plan.ArgShape`)."""
        a = self.plan.args[i]
        kwargs: dict[str, Any] = a[0].build(self.values, a, self.lookup)
        return kwargs

    def lookup(self, ref: InputRef | OutputRef) -> Any:
        if isinstance(ref, InputRef):
            return self.inputs[ref.name]
        value = self.values[self.plan.slot(self.plan.node_of(ref), ref.output)]
        if value is UNSET:
            raise _Missing(ref.node)
        return value

    async def run_node(self, i: int, slot: Slot, frame: Frame) -> None:
        """The general path: executors, timeouts, retries, sync tools, limits, maps, subgraphs."""
        plan = self.plan
        run = self.run
        idx = self.base + i
        node_id = self.node_ids[i]
        target = plan.targets[i]
        try:
            try:
                kwargs = self.args_for(i)
            except Exception as exc:
                run.ledger.start(idx)
                run.ledger.fail(idx, exc)
                raise node_failed(node_id, plan.names[i], exc) from exc
            kind = plan.kinds[i]
            if kind == TOOL:
                if target.limits:
                    outputs = await self.run_limited(target, kwargs, idx, slot, frame)
                else:
                    outputs = await execute_node(run, idx, target, kwargs, frame)
            elif kind == MAP:
                outputs = await self.run_map(i, target, kwargs, node_id, slot)
            else:
                outputs = await run.run_composite(
                    idx,
                    node_id,
                    slot,
                    lambda frame: target.run_body(run, target.check_inputs(kwargs), frame),
                )
        except Exception as exc:
            if not is_run_failure(exc):  # a map or subgraph node's own error: name the node
                error = node_failed(node_id, plan.names[i], exc)
                error.__cause__ = exc
                exc = error
            self.on_failure(i, exc)
            return
        self.complete(i, outputs)

    def complete(self, i: int, outputs: dict[str, Any]) -> None:
        """Node `i` is done: store its outputs, release its dependents, wake workers."""
        self.store(i, outputs)
        self.remaining -= 1
        pushed = 0
        indegree = self.indegree
        for d in self.plan.dependents[i]:
            indegree[d] -= 1
            if indegree[d] == 0:
                self.push_ready(d)
                pushed += 1
        if pushed > 1:
            self.wake(pushed - 1)  # this worker takes one of them itself
        if self.remaining <= 0:
            self.finish()

    def finish(self) -> None:
        """Every node is accounted for: let idle workers see it and exit."""
        self.idle = 0
        self.lot.unpark_all()

    async def run_limited(
        self, tool: Tool, kwargs: dict[str, Any], idx: int, slot: Slot, frame: Frame
    ) -> dict[str, Any]:
        resources = Slot()
        started = self.run.now()
        await resources.take(self.run.limiters_for(tool.limits)[len(slot.held) :])
        self.run.ledger.add_wait(idx, self.run.now() - started)
        try:
            return await execute_node(self.run, idx, tool, kwargs, frame)
        finally:
            resources.give_back()

    async def run_map(
        self, i: int, tool: Tool, kwargs: dict[str, Any], node_id: str, slot: Slot
    ) -> dict[str, Any]:
        param = self.plan.map_params[i]
        items = kwargs.pop(param)
        run = self.run

        async def body(frame: Frame) -> dict[str, list[Any]]:
            try:
                iterator = iter(items)
            except TypeError:
                raise TypeError(
                    f"map node {node_id!r} needs a list of items for {param!r}, "
                    f"got {type(items).__name__}"
                ) from None
            calls = map_calls(tool, iterator, param, kwargs, run)
            results = await FanOut(run, frame, calls, type(items) in SEQUENCES).run()
            return {out: [r[out] for r in results] for out in tool.outputs}

        outputs: dict[str, Any] = await run.run_composite(self.base + i, node_id, slot, body)
        return outputs

    # -- failures --------------------------------------------------------------------------

    def on_failure(self, i: int, exc: Exception | NodeFailed) -> None:
        self.failures.append(exc)
        self.failed.append(i)
        self.remaining -= 1
        if self.run.policy == "fail_fast":
            assert self.nursery is not None
            self.nursery.cancel_scope.cancel(reason=f"node {self.plan.ids[i]!r} failed")
        else:
            self.remaining -= self.skip_descendants(i)
            if self.remaining <= 0:
                self.finish()

    def skip_descendants(self, i: int) -> int:
        """Mark every not-yet-started descendant of failed node `i` SKIPPED; count them."""
        ledger = self.run.ledger
        plan = self.plan
        cause = ErrorInfo(
            type="DependencyFailed",
            message=f"skipped: dependency {self.prefix + plan.ids[i]!r} failed",
        )
        count = 0
        stack = [i]
        while stack:
            for d in plan.dependents[stack.pop()]:
                if ledger.skip(self.base + d, cause):
                    count += 1
                    stack.append(d)
        return count

    def outputs(self, *, partial: bool) -> dict[str, Any]:
        """The graph's output values; with `partial`, only those that could be computed."""
        values: dict[str, Any] = {}
        missing: list[str] = []
        for name, tree in self.plan.graph.outputs.items():
            try:
                values[name] = resolve(tree, self.lookup)
            except _Missing:
                missing.append(name)
        if missing and not partial:
            raise DependencyFailed(
                f"graph {self.plan.graph.name!r} cannot produce outputs {missing}: the nodes "
                "producing them failed or were skipped",
                missing=missing,
            )
        return values


async def run_plan(
    run: RunState, plan: Plan, inputs: Mapping[str, Any], frame: Frame
) -> dict[str, Any]:
    """Run every node of `plan` in one nursery; return the graph's outputs.

    Under `fail_fast` the first failure cancels running nodes and is raised. Otherwise
    independent branches finish, descendants of failures are SKIPPED, and the failures are
    raised (one bare, several as an ExceptionGroup) — except for a top-level `collect` run,
    which returns the outputs that could be computed.
    """
    nested = frame.graph_id != run.graph_id
    prefix = f"{frame.graph_id}." if nested else ""
    run.check_tools(plan.tools())  # before any node of this graph starts
    ledger = run.ledger
    ids = [prefix + node_id for node_id in plan.ids] if nested else plan.ids
    run.executors.check_constants(ids, plan.targets, plan)
    base = ledger.add_many(ids, plan.names, plan.executors)
    if run.memo is None:  # stored and cached outputs must be values
        run.remote_outputs.update(run.executors.remote_outputs(plan, base))
    indegree = list(plan.indegree)
    ready = collections.deque(i for i, d in enumerate(indegree) if d == 0)  # ascending
    state = _PlanRun(
        run=run,
        plan=plan,
        inputs=inputs,
        graph_id=frame.graph_id,
        prefix=prefix,
        node_ids=ids,
        base=base,
        cap=run.limiter.total_tokens,
        values=list(plan.initial),
        indegree=indegree,
        ready=ready,
        remaining=len(ids),
        # A memo that may reuse outputs must see every node; one that only stores them (a fresh
        # run with a store) keeps the fast path, which hands it the outputs (`accept`), or leaves
        # a scalar in its slot for a store that `reads_slots`.
        fast=plan.fast if run.memo is None or not run.memo.reuses else [False] * len(ids),
    )
    if run.memo is not None:
        # A resumed graph's stored DONE nodes: DONE now, no task each (a store that reads
        # outputs from their slots notes where this plan's are).
        run.memo.prefill(state)
    async with trio.open_nursery() as nursery:
        state.nursery = nursery
        state.wake(len(ready))
    if state.failures and run.policy == "fail_fast":
        for i in state.failed:
            state.skip_descendants(i)
    if state.failures:
        first = state.failures[0]
        if run.policy == "collect":
            if not nested:
                return state.outputs(partial=True)
            try:  # a nested graph under collect fails only if an output is missing
                return state.outputs(partial=False)
            except DependencyFailed as exc:
                raise exc from first
        if run.policy == "fail_fast" or len(state.failures) == 1:
            raise first
        raise ExceptionGroup(f"{len(state.failures)} nodes failed", state.failures)
    return state.outputs(partial=False)


@attrs.frozen(eq=False)
class CompiledGraph:
    """A `TaskGraph` as a run target: `trioflow.run(graph.compile(...), inputs=...)`."""

    graph: TaskGraph
    plan: Plan
    max_concurrency: float | None = None

    @classmethod
    def of(cls, graph: TaskGraph) -> CompiledGraph:
        return cls(graph, plan_of_graph(graph))

    @property
    def name(self) -> str:
        return self.graph.name

    @property
    def outputs(self) -> tuple[str, ...]:
        return tuple(self.graph.outputs)

    def check_inputs(self, inputs: Mapping[str, Any] | None) -> dict[str, Any]:
        return self.graph.check_inputs(inputs)  # defaults filled in

    async def run_body(self, run: RunState, inputs: dict[str, Any], frame: Frame) -> Any:
        return await run_plan(run, self.plan, inputs, frame)

    def tools(self) -> list[Tool]:
        return self.plan.tools()
