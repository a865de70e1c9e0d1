"""Property: the worker fan-out behaves like the simple reference semantics of a fan-out.

The reference is plain Trio: a `gather`/`map` spawns one task per call, each call takes a token
of one `CapacityLimiter(cap)` before its task is spawned (in item order, the semantics before
fan-outs ran on workers), a nested gather is a nursery of its own, and under `fail_fast` the
first failure cancels the rest of its fan-out. Random graph_fn programs (awaited calls, gathers,
maps, nested gathers and sequences; random durations and failures; a body that catches a
failed step and goes on) run both ways in virtual time, and must give

- the same outputs (a failed step is a failed step in both),
- the same node states (every call that runs ends DONE or FAILED as drawn; under `fail_fast`
  a call of a failed fan-out may instead be CANCELLED or never start),
- the same start time for every call of a flat program (no nested fan-outs): both admit calls
  in item order as soon as a token is free,
- a cap never exceeded (counted in the tools), and every call starting only after the calls
  it awaited (the earlier steps of its sequence) finished,
- records that are exact: each node's started/finished times are the ones its tool saw.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import attrs
import trio
import trio.testing
from hypothesis import given, settings, strategies as st

import trioflow

# -- programs -----------------------------------------------------------------------------------
# A call is ("call", key); ("gather", ops) fans out; ("map", keys) maps the tool over keys;
# ("seq", ops) is a nested async callable awaiting its ops in turn (only inside a gather).


@attrs.define
class Program:
    steps: list[Any]
    durations: dict[int, int]
    failing: set[int]


@st.composite
def programs(draw: st.DrawFn) -> Program:
    keys = iter(range(10_000))

    def call() -> st.SearchStrategy[Any]:
        return st.builds(lambda: ("call", next(keys)))

    def inner(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(
            st.tuples(st.just("gather"), st.lists(children, min_size=1, max_size=4)),
            st.tuples(st.just("seq"), st.lists(children, min_size=1, max_size=3)),
        )

    nested = st.recursive(call(), inner, max_leaves=8)
    step = st.one_of(
        call(),
        st.tuples(st.just("gather"), st.lists(nested, min_size=1, max_size=5)),
        st.builds(lambda n: ("map", [next(keys) for _ in range(n)]), st.integers(1, 6)),
    )
    steps = draw(st.lists(step, min_size=1, max_size=4))
    used = sorted(_keys(steps))
    durations = {k: draw(st.integers(0, 3)) for k in used}
    failing = {k for k in used if draw(st.integers(0, 9)) == 0}
    return Program(steps, durations, failing)


def _keys(op: Any) -> list[int]:
    if isinstance(op, list):
        return [k for sub in op for k in _keys(sub)]
    kind, body = op
    if kind == "call":
        return [body]
    if kind == "map":
        return list(body)
    return _keys(body)


def _nested(op: Any) -> bool:
    """Whether a step holds a fan-out inside a fan-out, or a sequence."""
    return op[0] == "gather" and any(sub[0] != "call" for sub in op[1])


# -- what the tools see -------------------------------------------------------------------------


@attrs.define
class Seen:
    program: Program
    running: int = 0
    peak: int = 0
    starts: dict[int, float] = attrs.field(factory=dict)
    ends: dict[int, float] = attrs.field(factory=dict)
    outcomes: dict[int, str] = attrs.field(factory=dict)

    async def work(self, key: int) -> int:
        assert key not in self.starts, f"call {key} ran twice"
        self.starts[key] = trio.current_time()
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await trio.sleep(self.program.durations[key])
        except trio.Cancelled:
            self.outcomes[key] = "CANCELLED"
            raise
        finally:
            self.running -= 1
            self.ends[key] = trio.current_time()
        if key in self.program.failing:
            self.outcomes[key] = "FAILED"
            raise ValueError(f"call {key} failed")
        self.outcomes[key] = "DONE"
        return key * 10


# -- the two interpreters -----------------------------------------------------------------------


async def run_trioflow(program: Program, cap: float, policy: str) -> tuple[Any, Seen, Any]:
    seen = Seen(program)
    node_keys: dict[str, int] = {}

    @trioflow.tool(outputs=["v"], name="work")
    async def work(key: int) -> int:
        return await seen.work(key)

    async def op(node: Any) -> Any:
        kind, body = node
        if kind == "call":
            return (await work(key=body))["v"]
        if kind == "map":
            return [r["v"] for r in await trioflow.map(work, body)]
        if kind == "seq":
            return [await op(sub) for sub in body]
        return await trioflow.gather(*(_item(sub) for sub in body))

    def _item(sub: Any) -> Any:
        if sub[0] == "call":
            return work(key=sub[1])
        return lambda: op(sub)

    @trioflow.graph_fn(name="program", outputs=["out"])
    async def main() -> list[Any]:
        out: list[Any] = []
        for step in program.steps:
            try:
                out.append(_values(await op(step)))
            except Exception:
                out.append("failed")
        return out

    def listen(event: trioflow.RunEvent) -> None:
        if event.kind == "node_started":
            assert event.inputs is not None and event.node_id is not None
            node_keys[event.node_id] = event.inputs["key"]

    result = await trioflow.run_async(
        main, max_concurrency=cap, on_error=policy, record=True, on_event=listen
    )
    record = {node_keys[n]: r for n, r in result.record.nodes.items() if n in node_keys}
    return result.outputs["out"], seen, record


def _values(value: Any) -> Any:
    if isinstance(value, dict):
        return value["v"]
    if isinstance(value, list):
        return [_values(v) for v in value]
    return value


async def run_reference(program: Program, cap: float, policy: str) -> tuple[Any, Seen]:
    seen = Seen(program)
    limiter = trio.CapacityLimiter(cap)
    fail_fast = policy == "fail_fast"

    async def call(key: int) -> int:
        try:
            return await seen.work(key)
        finally:
            limiter.release_on_behalf_of(key)

    async def fan_out(items: list[Any]) -> list[Any]:
        results: list[Any] = [None] * len(items)
        failures: list[Exception] = []

        async def one(i: int, item: Any) -> None:
            try:
                if item[0] == "call":
                    results[i] = await call(item[1])
                else:
                    results[i] = await op(item)
            except Exception as exc:
                failures.append(exc)
                if fail_fast:
                    nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            for i, item in enumerate(items):
                if item[0] == "call":  # capacity first, then the task
                    await limiter.acquire_on_behalf_of(item[1])
                nursery.start_soon(one, i, item)
        if failures:
            raise failures[0]
        return results

    async def op(node: Any) -> Any:
        kind, body = node
        if kind == "call":
            await limiter.acquire_on_behalf_of(body)
            return await call(body)
        if kind == "map":
            return await fan_out([("call", k) for k in body])
        if kind == "seq":
            return [await op(sub) for sub in body]
        return await fan_out(body)

    out: list[Any] = []
    for step in program.steps:
        try:
            out.append(await op(step))
        except Exception:
            out.append("failed")
    return out, seen


def run_virtual(fn: Any, *args: Any) -> Any:
    async def main() -> Any:
        with trio.fail_after(10_000):
            return await fn(*args)

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


# -- the property -------------------------------------------------------------------------------


def _order_constraints(steps: list[Any]) -> list[tuple[list[int], list[int]]]:
    """(before, after) key lists: every call of `after` awaited every call of `before`."""
    pairs: list[tuple[list[int], list[int]]] = []

    def sequence(ops: list[Any]) -> None:
        for a, b in itertools.pairwise(ops):
            pairs.append((_keys(a), _keys(b)))
        for sub in ops:
            walk(sub)

    def walk(node: Any) -> None:
        kind, body = node
        if kind == "gather":
            for sub in body:
                walk(sub)
        elif kind == "seq":
            sequence(body)

    sequence(steps)
    return pairs


@settings(max_examples=150, deadline=None)
@given(
    program=programs(),
    cap=st.one_of(st.integers(1, 4), st.just(math.inf)),
    policy=st.sampled_from(["fail_fast", "skip_dependents", "collect"]),
)
def test_worker_fan_out_matches_the_reference(program: Program, cap: float, policy: str) -> None:
    out, seen, record = run_virtual(run_trioflow, program, cap, policy)
    ref_out, ref = run_virtual(run_reference, program, cap, policy)

    assert out == ref_out
    assert seen.peak <= cap
    assert ref.peak <= cap

    if policy != "fail_fast":  # every fan-out runs all its calls: the same calls end the same way
        assert seen.outcomes == ref.outcomes
    else:
        for k in program.durations:
            drawn = "FAILED" if k in program.failing else "DONE"
            assert seen.outcomes.get(k, "never") in (drawn, "CANCELLED", "never")
        for step, value in zip(program.steps, out, strict=True):
            if value != "failed":  # a step that did not fail ran every call to the end
                assert all(seen.outcomes[k] == "DONE" for k in _keys(step))
    # The run's record says what the tools saw, at the times they saw it.
    assert set(record) == set(seen.starts)
    for key, node in record.items():
        assert node.state.name == seen.outcomes[key]
        assert node.started_at == seen.starts[key]
        assert node.finished_at == seen.ends[key]

    for before, after in _order_constraints(program.steps):
        finished = [seen.ends[k] for k in before if k in seen.ends]
        for k in after:
            if k in seen.starts and finished:
                assert seen.starts[k] >= max(finished), (k, before)

    if policy != "fail_fast" and not any(_nested(step) for step in program.steps):
        assert seen.starts == ref.starts


def test_fan_outs_sharing_the_capacity_take_turns() -> None:
    """A worker keeps its token from one call to the next only while no other task waits for
    it: two maps at a cap of 1 alternate, as they do when each call takes a token anew."""
    starts: dict[str, float] = {}

    @trioflow.tool(outputs=["v"])
    async def step(name: str) -> str:
        starts[name] = trio.current_time()
        await trio.sleep(1)
        return name

    @trioflow.graph_fn(outputs=["out"])
    async def two_maps() -> list[Any]:
        return await trioflow.gather(
            lambda: trioflow.map(step, ["a1", "a2", "a3"]),
            lambda: trioflow.map(step, ["b1", "b2", "b3"]),
        )

    async def main() -> Any:
        with trio.fail_after(100):
            return await trioflow.run_async(two_maps, max_concurrency=1)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    order = sorted(starts, key=starts.__getitem__)
    assert [name[0] for name in order] in (list("ababab"), list("bababa")), order
    assert sorted(starts.values()) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
