"""@graphify: tracing, the TaskGraph as data, lowering, and error policies."""

from __future__ import annotations

import json
import math
import pathlib
import subprocess
import sys

import pytest
import trio
from helpers import Probe

import trioflow
from trioflow import GraphBuildError, NodeState


@trioflow.tool(outputs=["result"])
async def pick(items: list[int], index: int) -> int:
    return items[index]


@trioflow.tool(outputs=["out"])
async def work(x: int) -> int:
    return x * 2


@trioflow.tool(outputs=["sum"])
async def reduce_sum(xs: list[int]) -> int:
    # async on purpose: a sync tool runs in a thread, and MockClock(autojump_threshold=0)
    # jumps virtual time while every task waits on a thread.
    return sum(xs)


@trioflow.graphify(name="map_reduce", inputs=["vals"], outputs=["sum"])
def map_reduce(vals):  # type: ignore[no-untyped-def]
    results = [pick(items=vals, index=i) for i in range(len(vals))]
    outs = [work(x=v.result) for v in results]  # fan-out
    total = reduce_sum(xs=[o.out for o in outs])  # fan-in
    return {"sum": total.sum}


# -- the seed example ------------------------------------------------------------------------


@pytest.mark.parametrize(("vals", "expected"), [([1, 2, 3, 4], 20), ([], 0), ([5], 10)])
def test_seed_map_reduce_returns_the_right_sum(vals: list[int], expected: int) -> None:
    assert trioflow.run(map_reduce, inputs={"vals": vals}) == {"sum": expected}


def test_shape_dependent_trace_without_inputs_fails_loudly() -> None:
    with pytest.raises(GraphBuildError) as info:
        map_reduce.compile()
    err = info.value
    assert err.code == "shape-dependent"
    assert "len()" in str(err) and "graph input 'vals'" in str(err)
    source = pathlib.Path(__file__).read_text().splitlines()
    line = next(n for n, text in enumerate(source, 1) if "in range(len(vals))]" in text)
    assert f"test_graphify.py:{line}:" in str(err)  # the source line of len(vals)
    assert "compile(vals=" in err.hint


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (lambda vals: {"sum": reduce_sum(xs=list(vals)).sum}, "shape-dependent"),
        (lambda vals: {"sum": work(x=1).sum if vals else 0}, "shape-dependent"),
        (lambda vals: {"sum": work(x=1).nope}, "unknown-output"),
        (lambda vals: {"sum": len(work(x=1))}, "node-ref-not-a-value"),
        (lambda vals: {"sum": 1, "total": 1}, "bad-outputs"),
        (lambda vals: {"sum": work(x=vals[0] + 1).out}, "value-op"),
        (lambda vals: {"sum": work(x=1).out if work(x=2).out > 3 else 0}, "value-op"),
        (lambda vals: {"sum": [work(x=i) for i in range(vals)]}, "shape-dependent"),
        (lambda vals: {"sum": work(y=1).out}, "bad-call"),
    ],
)
def test_tracing_errors_have_a_code_and_a_hint(body: object, code: str) -> None:
    def fn(vals):  # type: ignore[no-untyped-def]
        return body(vals)  # type: ignore[operator]

    graph = trioflow.graphify(name="g", outputs=["sum"])(fn)
    with pytest.raises(GraphBuildError) as info:
        graph.compile()
    assert info.value.code == code


def test_known_values_drive_range_and_iteration() -> None:
    @trioflow.graphify(name="g", outputs=["out"])
    def g(n, vals):  # type: ignore[no-untyped-def]
        firsts = [work(x=i) for i in range(n)]
        rest = [work(x=v) for v in vals]
        return reduce_sum(xs=[r.out for r in firsts + rest]).sum

    assert len(g.compile(n=2, vals=[5, 6, 7]).nodes) == 6
    assert trioflow.run(g, inputs={"n": 2, "vals": [5]}) == {"out": 12}


def test_unknown_output_names_the_node() -> None:
    @trioflow.graphify(name="g", outputs=["y"])
    def g(x):  # type: ignore[no-untyped-def]
        return work(x=x).nope

    with pytest.raises(GraphBuildError, match=r"node 'work_1' has no output 'nope'") as info:
        g.compile()
    assert "its outputs are ['out']" in info.value.hint


# -- the TaskGraph as data ---------------------------------------------------------------------


def test_compiled_graph_is_data() -> None:
    graph = map_reduce.compile(vals=[1, 2])
    assert list(graph.nodes) == ["pick_1", "pick_2", "work_1", "work_2", "reduce_sum_1"]
    assert graph.edges == [
        ("pick_1", "work_1"),
        ("pick_2", "work_2"),
        ("work_1", "reduce_sum_1"),
        ("work_2", "reduce_sum_1"),
    ]
    assert graph.inputs == ("vals",)
    assert graph.outputs == {"sum": trioflow.OutputRef("reduce_sum_1", "sum")}
    assert graph.topological_order() == list(graph.nodes)
    assert graph.nodes["pick_2"].args == {"items": trioflow.InputRef("vals"), "index": 1}


def test_graph_round_trips_through_json() -> None:
    @trioflow.graphify(name="g", outputs=["y"])
    def g(vals, cfg):  # type: ignore[no-untyped-def]
        a = work(x=vals[0])
        b = pick(items=[a.out, (1, {"k": cfg["depth"]}), {"$odd": None}], index=0)
        return b.result

    graph = g.compile()
    data = json.loads(json.dumps(graph.to_dict()))
    again = trioflow.TaskGraph.from_dict(data)
    assert again == graph
    assert again.content_hash == graph.content_hash


def test_content_hash_depends_on_structure_not_input_values() -> None:
    a = map_reduce.compile(vals=[1, 2, 3])
    assert a.content_hash == map_reduce.compile(vals=[7, 8, 9]).content_hash
    assert a.content_hash != map_reduce.compile(vals=[1, 2]).content_hash
    code = (
        "import sys; sys.path.insert(0, 'tests'); import test_graphify as t; "
        "print(t.map_reduce.compile(vals=[1, 2, 3]).content_hash)"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == a.content_hash  # stable across processes


def test_graph_from_dict_runs_by_import_path() -> None:
    data = json.loads(json.dumps(map_reduce.compile(vals=[1, 2, 3]).to_dict()))
    graph = trioflow.TaskGraph.from_dict(data)
    assert trioflow.run(graph, inputs={"vals": [1, 2, 3]}) == {"sum": 12}


def test_mermaid_and_dot_draw_the_graph() -> None:
    graph = map_reduce.compile(vals=[1])
    assert graph.to_mermaid() == (
        "flowchart TD\n"
        "    in_vals[/vals/]\n"
        '    n_pick_1["pick_1"]\n'
        '    n_work_1["work_1"]\n'
        '    n_reduce_sum_1["reduce_sum_1"]\n'
        "    in_vals --> n_pick_1\n"
        "    n_pick_1 --> n_work_1\n"
        "    n_work_1 --> n_reduce_sum_1\n"
        "    n_reduce_sum_1 --> out_sum\n"
        "    out_sum[\\sum\\]\n"
    )
    dot = graph.to_dot()
    assert dot.startswith('digraph "map_reduce" {')
    assert "n_pick_1 -> n_work_1;" in dot and "n_reduce_sum_1 -> out_sum;" in dot


# -- beyond the reference: projections, map, subgraphs, defaults --------------------------------


def test_projections_are_resolved_at_run_time() -> None:
    @trioflow.tool(outputs=["items", "meta"])
    async def load() -> dict[str, object]:
        return {"items": [10, 20, 30], "meta": {"scale": 3}}

    @trioflow.graphify(name="g", outputs=["a", "b", "c"])
    def g(vals):  # type: ignore[no-untyped-def]
        loaded = load()
        a = work(x=vals[1])
        b = work(x=loaded.items[2])
        c = work(x=loaded["meta"]["scale"])
        return {"a": a.out, "b": b.out, "c": c.out}

    graph = g.compile()  # no shape depends on a value: compiles without inputs
    assert len(graph.nodes) == 4
    assert trioflow.run(g, inputs={"vals": [0, 5]}) == {"a": 10, "b": 60, "c": 6}


def test_map_fans_out_over_a_list_known_only_at_run_time() -> None:
    @trioflow.tool(outputs=["items"])
    async def produce(n: int) -> list[int]:
        return list(range(n))

    @trioflow.tool(outputs=["out", "neg"])
    async def both(x: int, scale: int) -> dict[str, int]:
        return {"out": x * scale, "neg": -x}

    @trioflow.graphify(name="g", outputs=["sum", "negs"])
    def g(n):  # type: ignore[no-untyped-def]
        mapped = trioflow.map(both, produce(n=n).items, scale=10)
        return {"sum": reduce_sum(xs=mapped.out).sum, "negs": mapped.neg}

    result = trioflow.run(g, inputs={"n": 4}, record=True)
    assert result.outputs == {"sum": 60, "negs": [0, -1, -2, -3]}  # type: ignore[union-attr]
    nodes = result.record.nodes  # type: ignore[union-attr]
    assert list(nodes)[:3] == ["produce_1", "map_1", "reduce_sum_1"]
    assert {f"map_1.both_{k}" for k in range(1, 5)} <= set(nodes)


def test_graphify_and_graph_fn_inside_a_graphify_are_subgraph_nodes() -> None:
    @trioflow.graph_fn(name="doubled", outputs=["ys"])
    async def doubled(xs: list[int]) -> list[int]:
        return [r["out"] for r in await trioflow.map(work, xs)]

    @trioflow.graphify(name="inner", outputs=["total"])
    def inner(xs):  # type: ignore[no-untyped-def]
        return reduce_sum(xs=[work(x=xs[i]).out for i in range(len(xs))]).sum

    @trioflow.graphify(name="outer", outputs=["a", "b"])
    def outer(vals):  # type: ignore[no-untyped-def]
        d = doubled(xs=vals)
        return {"a": inner(xs=d.ys).total, "b": d.ys}

    result = trioflow.run(outer, inputs={"vals": [1, 2, 3]}, record=True)
    assert result.outputs == {"a": 24, "b": [2, 4, 6]}  # type: ignore[union-attr]
    nodes = result.record.nodes  # type: ignore[union-attr]
    assert nodes["doubled_1"].tool == "doubled" and nodes["inner_1"].tool == "inner"
    assert {"doubled_1.work_1", "inner_1.work_3", "inner_1.reduce_sum_1"} <= set(nodes)
    assert all(n.state is NodeState.DONE for n in nodes.values())


def test_optional_inputs_take_their_defaults() -> None:
    @trioflow.graphify(name="g", outputs=["out"])
    def g(x, factor=3):  # type: ignore[no-untyped-def]
        return pick(items=[x, factor], index=1).result

    assert trioflow.run(g, inputs={"x": 1}) == {"out": 3}
    assert trioflow.run(g, inputs={"x": 1, "factor": 5}) == {"out": 5}
    with pytest.raises(trioflow.ConfigError, match="missing required inputs"):
        trioflow.run(g, inputs={})


def test_bad_graphify_declarations() -> None:
    with pytest.raises(trioflow.ConfigError, match="does not match the parameters"):
        trioflow.graphify(inputs=["a"])(lambda b: b)
    with pytest.raises(trioflow.ConfigTypeError, match="traces a plain def"):

        @trioflow.graphify
        async def nope() -> None: ...


# -- lowering ----------------------------------------------------------------------------------


def chain_and_fan(probe: Probe, width: int, seconds: float = 1.0) -> trioflow.Graphify:
    @trioflow.tool(outputs=["out"])
    async def step(x: int, key: int) -> int:
        await probe.work(key, seconds)
        return x + 1

    @trioflow.graphify(name="g", outputs=["total"])
    def g(x):  # type: ignore[no-untyped-def]
        head = step(x=x, key=0)
        fan = [step(x=head.out, key=k) for k in range(1, width + 1)]
        return reduce_sum(xs=[f.out for f in fan]).sum

    return g


@pytest.mark.parametrize(("cap", "makespan"), [(1, 11), (3, 5), (4, 4), (math.inf, 2)])
async def test_static_graph_respects_the_cap_and_dependencies(
    autojump_clock: trio.testing.MockClock, cap: float, makespan: float
) -> None:
    probe = Probe()
    g = chain_and_fan(probe, width=10)
    with trio.fail_after(100):
        result = await trioflow.run_async(g, {"x": 0}, max_concurrency=cap, record=True)
    assert result.outputs == {"total": 20}
    assert probe.peak == min(cap, 10)
    assert trio.current_time() == makespan
    nodes = result.record.nodes
    for dep, node in g.compile().edges:
        assert nodes[dep].finished_at <= nodes[node].started_at


async def test_ready_nodes_start_in_insertion_order(autojump_clock: trio.testing.MockClock) -> None:
    probe = Probe()
    g = chain_and_fan(probe, width=6)
    with trio.fail_after(100):
        result = await trioflow.run_async(g, {"x": 0}, max_concurrency=2, record=True)
    starts = {k: n.started_at for k, n in result.record.nodes.items() if k.startswith("step")}
    assert sorted(starts, key=lambda k: (starts[k], int(k.split("_")[1]))) == [
        f"step_{k}" for k in range(1, 8)
    ]
    assert [starts[f"step_{k}"] for k in range(1, 8)] == [0, 1, 1, 2, 2, 3, 3]


# -- error policies ----------------------------------------------------------------------------


def diamond_with_failure(log: list[str]) -> trioflow.Graphify:
    @trioflow.tool(outputs=["out"])
    async def ok(x: int, seconds: int) -> int:
        try:
            await trio.sleep(seconds)
        except trio.Cancelled:
            log.append(f"cancelled {x}")
            raise
        log.append(f"done {x}")
        return x

    @trioflow.tool(outputs=["out"])
    async def bad(x: int) -> int:
        await trio.sleep(x)
        raise ValueError(f"bad {x}")

    @trioflow.graphify(name="g", outputs=["a", "b"])
    def g():  # type: ignore[no-untyped-def]
        failing = bad(x=1)
        after = ok(x=ok(x=failing.out, seconds=1).out, seconds=1)  # dependents of the failure
        independent = ok(x=2, seconds=5)
        bad(x=3)  # its output is not needed by the graph's outputs
        return {"a": after.out, "b": independent.out}

    return g


async def test_fail_fast_cancels_running_nodes_and_skips_dependents(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    with trio.fail_after(100), pytest.raises(trioflow.NodeFailed) as info:
        await trioflow.run_async(diamond_with_failure(log), max_concurrency=math.inf)
    assert info.value.node_id == "bad_1"
    assert isinstance(info.value.__cause__, ValueError)
    assert log == ["cancelled 2"]
    assert trio.current_time() == 1
    states = info.value.record.states()  # type: ignore[union-attr]
    assert states["ok_1"] is NodeState.SKIPPED and states["ok_2"] is NodeState.SKIPPED
    assert states["ok_3"] is NodeState.CANCELLED and states["bad_2"] is NodeState.CANCELLED
    error = info.value.record.nodes["ok_2"].error  # type: ignore[union-attr]
    assert error is not None and "bad_1" in error.message


async def test_skip_dependents_finishes_independent_branches_and_lists_every_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    with trio.fail_after(100), pytest.raises(ExceptionGroup) as info:
        await trioflow.run_async(
            diamond_with_failure(log), max_concurrency=math.inf, on_error="skip_dependents"
        )
    assert sorted(e.node_id for e in info.value.exceptions) == ["bad_1", "bad_2"]  # type: ignore[attr-defined]
    assert log == ["done 2"]
    record = info.value.exceptions[0].record  # type: ignore[attr-defined]
    assert record.states() == {
        "bad_1": NodeState.FAILED,
        "ok_1": NodeState.SKIPPED,
        "ok_2": NodeState.SKIPPED,
        "ok_3": NodeState.DONE,
        "bad_2": NodeState.FAILED,
    }


async def test_a_failure_off_the_output_path_still_fails_the_run() -> None:
    @trioflow.tool(outputs=["out"])
    async def bad() -> None:
        raise RuntimeError("nobody needs my output")

    @trioflow.graphify(name="g", outputs=["x"])
    def g():  # type: ignore[no-untyped-def]
        bad()
        return work(x=1).out

    with pytest.raises(trioflow.NodeFailed) as info:
        await trioflow.run_async(g)
    assert info.value.node_id == "bad_1"


async def test_collect_returns_computable_outputs_and_errors(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    with trio.fail_after(100):
        result = await trioflow.run_async(
            diamond_with_failure(log), max_concurrency=math.inf, on_error="collect"
        )
    assert result.outputs == {"b": 2}
    assert sorted(result.errors) == ["bad_1", "bad_2"]
    assert result.errors["bad_1"].message == "bad 1"
    assert result.record.nodes["ok_2"].state is NodeState.SKIPPED


async def test_node_failure_in_a_nested_graphify_is_a_dependency_failure_under_collect() -> None:
    @trioflow.tool(outputs=["out"])
    async def bad(x: int) -> int:
        raise ValueError(x)

    @trioflow.graphify(name="inner", outputs=["y"])
    def inner(x):  # type: ignore[no-untyped-def]
        return bad(x=x).out

    @trioflow.graph_fn(name="outer", outputs=["y"])
    async def outer() -> str:
        try:
            await inner(x=1)
        except trioflow.DependencyFailed as exc:
            return f"missing {list(exc.missing)}"
        return "no error"

    result = await trioflow.run_async(outer, on_error="collect")
    assert result.outputs == {"y": "missing ['y']"}
    assert result.record.nodes["inner_1.bad_1"].state is NodeState.FAILED


def test_a_graph_without_nodes_passes_its_inputs_through() -> None:
    @trioflow.graphify(name="g", outputs=["same", "second"])
    def g(vals):  # type: ignore[no-untyped-def]
        return {"same": vals, "second": vals[1]}

    assert g.compile().nodes == {}
    assert trioflow.run(g, inputs={"vals": [1, 2]}) == {"same": [1, 2], "second": 2}


def test_static_nodes_take_the_general_path_for_sync_context_and_limited_tools() -> None:
    @trioflow.tool(outputs=["thread_node"])
    def sync_tool(x: int) -> str:  # runs in a worker thread
        return trioflow.current_context().node_id

    @trioflow.tool(outputs=["me"], limits=["gpu"])
    async def with_context(x: str, context: trioflow.NodeContext) -> str:
        return f"{context.node_id}<-{x}"

    @trioflow.graphify(name="g", outputs=["out"])
    def g():  # type: ignore[no-untyped-def]
        return with_context(x=sync_tool(x=1).thread_node).me

    async def main() -> object:
        async with trioflow.open_runtime(limits={"gpu": 1}):
            return await trioflow.run_async(g)

    assert trio.run(main) == {"out": "with_context_1<-sync_tool_1"}
    with pytest.raises(trioflow.ConfigError, match=r"limits=\['gpu'\]"):
        trioflow.run(g)  # the runtime run() opens defines no "gpu" limit: fails before it starts


async def test_static_nodes_retry_and_time_out(autojump_clock: trio.testing.MockClock) -> None:
    attempts: list[int] = []

    @trioflow.tool(outputs=["out"], timeout=2, retry=trioflow.Retry(attempts=3, backoff=1))
    async def flaky(context: trioflow.NodeContext) -> int:
        attempts.append(context.attempt)
        if context.attempt < 3:
            await trio.sleep(10)  # times out after 2 s
        return context.attempt

    @trioflow.graphify(name="g", outputs=["out"])
    def g():  # type: ignore[no-untyped-def]
        return flaky().out

    with trio.fail_after(100):
        result = await trioflow.run_async(g, record=True)
    assert result.outputs == {"out": 3}
    assert attempts == [1, 2, 3]
    assert trio.current_time() == 2 + 1 + 2 + 1
    assert result.record.nodes["flaky_1"].attempts == 3


def test_every_argument_shape_reads_the_right_slot() -> None:
    """Plain outputs of multi-output nodes, fan-ins mixing them, projections, constants (a
    mutable one is fresh in every run), an empty list, a tool returning a dict for its one
    output: each argument reads the value it names, in every run of the one lowered plan."""
    seen: list[list[int]] = []

    @trioflow.tool(outputs=["lo", "hi"])
    async def split(n: int) -> dict[str, int]:
        return {"lo": n - 1, "hi": n + 1}

    @trioflow.tool(outputs=["d"])
    async def as_dict(k: str) -> dict[str, dict[str, int]]:
        return {"d": {k: 1}}  # a dict value for the one output goes through the outputs rule

    @trioflow.tool(outputs=["out"])
    async def combine(a: int, xs: list[int], acc: list[int], none: list[int], tag: str) -> int:
        acc.append(a)  # mutates its constant argument: the next run must not see this
        seen.append(list(acc))
        return a * 1000 + sum(xs) + len(none) + len(tag)

    @trioflow.graphify(name="shapes", outputs=["out", "d", "hi"])
    def shapes(n):  # type: ignore[no-untyped-def]
        s1, s2 = split(n=n), split(n=10)
        d = as_dict(k="x")
        c = combine(a=s1.hi, xs=[s2.lo, s1.lo, s2.hi, d.d["x"]], acc=[7], none=[], tag="ab")
        return {"out": c.out, "d": d.d, "hi": s2.hi}

    for n in (3, 5):
        assert trioflow.run(shapes, inputs={"n": n}) == {
            "out": (n + 1) * 1000 + 9 + (n - 1) + 11 + 1 + 0 + 2,
            "d": {"x": 1},
            "hi": 11,
        }
    assert seen == [[7, 4], [7, 6]]
