"""Fault injection: random graphs x random failures, hangs, timeouts, retries and cancels.

Each example builds a random DAG whose nodes succeed, fail, hang (with a per-attempt timeout),
fail a few attempts before a retry succeeds, or hang forever under a run deadline or an outer
cancel; runs it as a static graph (`@graphify`) or a reactive one (`@graph_fn`, layer by
layer with `gather`) under a random error policy and cap, in virtual time. It checks that:

- the run ends (under `trio.fail_after`: a hang fails the example in milliseconds);
- nothing is left running: no tool body, no task, no node RUNNING or PENDING in the record;
- every injected error that was raised by a tool surfaces: raised (or in `RunResult.errors`
  under `collect`; under `fail_fast`, the first is raised and every other one is FAILED in
  the raised error's `.record`), and its node is FAILED — never CANCELLED, never silent;
- a run without faults returns the right outputs.

`EXAMPLES` runs per CI job (the `trioflow-ci` profile, derandomized) — see the closing note.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import trio
import trio.testing
from hypothesis import given, settings, strategies as st

import trioflow
from trioflow import NodeState

EXAMPLES = 400


@attrs.frozen
class Node:
    deps: tuple[int, ...]
    kind: str  # ok | fail | hang | flaky | forever
    seconds: int


@attrs.frozen
class Case:
    nodes: tuple[Node, ...]
    static: bool
    policy: str
    cap: float
    timeout: int | None
    outer_cancel: int | None


@st.composite
def cases(draw: st.DrawFn) -> Case:
    n = draw(st.integers(1, 7))
    nodes = []
    for i in range(n):
        deps = tuple(sorted(draw(st.sets(st.integers(0, i - 1), max_size=3)))) if i else ()
        kind = draw(st.sampled_from(["ok", "ok", "ok", "fail", "hang", "flaky", "forever"]))
        nodes.append(Node(deps, kind, draw(st.integers(0, 4))))
    timeout = draw(st.none() | st.integers(1, 12))
    outer = draw(st.none() | st.integers(1, 12))
    if timeout is None and outer is None and any(nd.kind == "forever" for nd in nodes):
        timeout = draw(st.integers(1, 12))  # something must end a node that never returns
    return Case(
        nodes=tuple(nodes),
        static=draw(st.booleans()),
        policy=draw(st.sampled_from(["fail_fast", "skip_dependents", "collect"])),
        cap=draw(st.sampled_from([1, 2, 3, math.inf])),
        timeout=timeout,
        outer_cancel=outer,
    )


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


class Injected(Exception):
    """The error a `fail` node raises."""


def build(case: Case, live: list[int], raised: dict[str, BaseException]) -> Any:
    attempts: dict[int, int] = {}

    async def body(i: int, deps: list[int]) -> int:
        node = case.nodes[i]
        live[0] += 1
        try:
            await trio.sleep(node.seconds)
            if node.kind == "fail":
                exc = Injected(f"node {i}")
                raised[f"n{i}"] = exc
                raise exc
            if node.kind in ("hang", "forever"):
                await trio.sleep_forever()
            if node.kind == "flaky":
                attempts[i] = attempts.get(i, 0) + 1
                if attempts[i] < 3:
                    raise OSError("try again")
            return i + sum(deps)
        finally:
            live[0] -= 1

    retry = trioflow.Retry(attempts=3, retry_on=(OSError,))
    tools = {
        "ok": trioflow.tool(outputs=["out"], name="ok")(body),
        "fail": trioflow.tool(outputs=["out"], name="fail")(body),
        "hang": trioflow.tool(outputs=["out"], name="hang", timeout=2)(body),
        "flaky": trioflow.tool(outputs=["out"], name="flaky", retry=retry)(body),
        "forever": trioflow.tool(outputs=["out"], name="forever")(body),
    }

    if case.static:

        @trioflow.graphify(name="g", outputs=["out"])
        def g():  # type: ignore[no-untyped-def]
            refs: list[Any] = []
            for i, node in enumerate(case.nodes):
                deps = [refs[d].out for d in node.deps]
                refs.append(tools[node.kind](i=i, deps=deps))
            return [r.out for r in refs]

        return g

    @trioflow.graph_fn(name="g", outputs=["out"])
    async def gf() -> list[int]:
        values: dict[int, int] = {}
        pending = list(range(len(case.nodes)))
        while pending:
            layer = [i for i in pending if all(d in values for d in case.nodes[i].deps)]
            calls = [
                tools[case.nodes[i].kind](i=i, deps=[values[d] for d in case.nodes[i].deps])
                for i in layer
            ]
            for i, result in zip(layer, await trioflow.gather(*calls), strict=True):
                values[i] = result["out"]
            pending = [i for i in pending if i not in values]
        return [values[i] for i in range(len(case.nodes))]

    return gf


def expected(case: Case) -> list[int]:
    values: list[int] = []
    for i, node in enumerate(case.nodes):
        values.append(i + sum(values[d] for d in node.deps))
    return values


async def check(case: Case) -> None:
    live = [0]
    raised: dict[str, BaseException] = {}
    graph = build(case, live, raised)
    tasks_before = trio.lowlevel.current_statistics().tasks_living
    result: Any = None
    error: BaseException | None = None
    with trio.fail_after(10_000):  # virtual seconds: a hang fails fast
        with trio.move_on_after(case.outer_cancel or math.inf) as outer:
            try:
                result = await trioflow.run_async(
                    graph,
                    on_error=case.policy,
                    max_concurrency=case.cap,
                    timeout=case.timeout,
                    record=True,
                )
            except trio.Cancelled:
                raise
            except Exception as exc:
                error = exc
    # nothing is left running
    assert live[0] == 0
    assert trio.lowlevel.current_statistics().tasks_living == tasks_before
    if outer.cancelled_caught:
        return  # Trio's own Cancelled passed through untouched; nothing else to report
    record = result.record if result is not None else _record_of(error)
    assert record is not None, repr(error)
    states = record.states()
    assert not {NodeState.RUNNING, NodeState.PENDING} & set(states.values()), states
    # every injected error that was raised surfaces, on a FAILED node
    failed_messages = {
        rec.error.message
        for rec in record.nodes.values()
        if rec.state is NodeState.FAILED and rec.error is not None
    }
    for exc in raised.values():
        assert str(exc) in failed_messages, (str(exc), states)
    causes = {str(leaf.__cause__) for leaf in _leaves(error)} if error is not None else set()
    if case.policy == "collect":
        assert error is None, repr(error)
        reported = {info.message for info in result.errors.values()}
        assert {str(e) for e in raised.values()} <= reported
    elif raised:
        assert error is not None, "an injected failure vanished"
        if case.policy == "skip_dependents":
            assert {str(e) for e in raised.values()} <= causes
        else:
            assert causes & {str(e) for e in raised.values()}
    faults = {"fail", "hang", "forever"} & {nd.kind for nd in case.nodes}
    if not faults and error is None and NodeState.CANCELLED not in states.values():
        assert result.outputs == {"out": expected(case)}


def _record_of(error: BaseException | None) -> Any:
    if error is None:
        return None
    for leaf in _leaves(error):
        record = getattr(leaf, "record", None)
        if record is not None:
            return record
    return None


@settings(max_examples=EXAMPLES)
@given(case=cases())
def test_faults_never_vanish_and_runs_never_hang(case: Case) -> None:
    clock = trio.testing.MockClock(autojump_threshold=0)
    trio.run(check, case, clock=clock)
