"""trioflow.testing finds scheduler bugs: six planted bugs, each falsified and shrunk small.

The hand-written scheduler of docs/examples/scheduler_testing.py runs drawn graphs through
`check_scheduler`. Correct, it passes every invariant; with a bug planted, Hypothesis finds a
counterexample and shrinks it to a graph of one to three nodes. Then the pieces of the kit:
invariant messages, deadlock reports, token accounting, strategies within bounds, fakes.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import pathlib
import random
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings, strategies as st

import trioflow
import trioflow.testing
from trioflow import NodeRecord, NodeState, RunRecord
from trioflow.testing import (
    Dag,
    DagGraph,
    Deadlock,
    FakeService,
    RecordingService,
    SchedulerCase,
    TokenTracker,
    Workload,
    assert_all_finished,
    assert_cap_respected,
    assert_dependencies_respected,
    assert_failures_contained,
    assert_failures_surfaced,
    assert_makespan_bounds,
    assert_no_leftover_tokens,
    check_scheduler,
    dag_graphs,
    dags,
    nested_dag_graphs,
    peak_concurrency,
    run_in_virtual_time,
    run_scheduler,
    run_virtual,
    scheduler_cases,
)

ROOT = pathlib.Path(__file__).resolve().parent.parent


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        f"example_{name}", ROOT / "docs" / "examples" / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


example = load_example("scheduler_testing")
FIND = settings(max_examples=300, database=None, derandomize=True, deadline=None)


# -- any scheduler -----------------------------------------------------------------------------


def test_the_correct_hand_written_scheduler_passes_every_invariant() -> None:
    check_scheduler(example.schedule, settings=settings(FIND, max_examples=100))


@pytest.mark.parametrize("bug", example.BUGS)
def test_check_scheduler_finds_each_planted_bug_and_shrinks_it(bug: str) -> None:
    shrunk: list[SchedulerCase] = []
    scheduler = functools.partial(example.schedule, bug=bug)

    def remember(case: SchedulerCase) -> Any:
        shrunk.append(case)
        return case

    with pytest.raises(AssertionError) as info:
        check_scheduler(scheduler, cases=scheduler_cases().map(remember), settings=FIND)
    final = run_scheduler(scheduler, shrunk[-1])  # Hypothesis replays the shrunk case last
    assert final.violations()
    assert shrunk[-1].graph.size <= 3, info.value
    message = str(info.value)
    assert "node_" in message and "case: SchedulerCase(" in message


def test_the_docs_bug_shrinks_to_two_nodes() -> None:
    message = example.test_a_planted_bug_is_found_and_shrunk("dependent starts early")
    assert "node_2 started at 0.0 before node_1 finished at 1.0" in message
    assert "Dag(deps=((), (0,)))" in message
    # The reported case is Python: pasted back, it replays the failure.
    case = eval(
        message.split("case: ", 1)[1].split("\n", 1)[0], vars(trioflow.testing), {"math": math}
    )
    bad = functools.partial(example.schedule, bug="dependent starts early")
    assert run_scheduler(bad, case).violations()


def scheduler_for(case: DagGraph, bug: str, cap: float = 1) -> Any:
    return run_scheduler(functools.partial(example.schedule, bug=bug), case, max_concurrency=cap)


def flat(*deps: tuple[int, ...], fail: tuple[bool, ...] | None = None) -> DagGraph:
    return DagGraph(Dag(deps), durations=(1,) * len(deps), failures=fail or (False,) * len(deps))


def test_a_swallowed_failure_is_reported() -> None:
    run = scheduler_for(flat((), fail=(True,)), "swallowed failure")
    assert run.error is None
    assert any("failure of node_1 was swallowed" in v for v in run.violations())


def test_an_orphan_is_named() -> None:
    case = DagGraph(Dag(((), ())), durations=(1, 3), failures=(True, False))
    run = scheduler_for(case, "orphan after cancel", cap=2)
    assert run.orphans == ("node_2",)
    assert any("node_2 still running after the scheduler returned" in v for v in run.violations())


def test_a_leaked_token_names_the_node() -> None:
    run = scheduler_for(flat((), fail=(True,)), "leaked token on failure")
    assert run.tokens.leaked() == ["node_1"]
    assert any("tokens still held after the run by node_1" in v for v in run.violations())


def test_a_nested_graph_deadlock_is_reported_with_the_stuck_nodes() -> None:
    case = DagGraph(Dag(((),)), durations=(1,), failures=(False,), subgraphs={0: flat(())})
    run = scheduler_for(case, "nested-graph deadlock")
    assert isinstance(run.deadlock, Deadlock)
    assert run.deadlock.stuck == ("g1_1", "g1_1.node_1")
    assert run.deadlock.record is not None
    assert run.deadlock.record.nodes["g1_1"].state is NodeState.RUNNING
    assert "deadlock at t=0" in str(run.deadlock)
    assert run.error is None  # the harness cancelled the stuck run; no bare TooSlowError


def test_a_run_waiting_on_a_far_timer_is_a_stall_not_a_hang() -> None:
    async def sleepy(graph: Workload, *, max_concurrency: float) -> None:
        await trio.sleep(10**7)

    run = run_scheduler(sleepy, flat(()), max_concurrency=1, limit=100)
    assert type(run.deadlock).__name__ == "Stall"
    assert "no finish within the limit of 100 virtual seconds" in str(run.deadlock)
    assert "node_1" in str(run.deadlock)  # ready but never started


def test_the_token_tracker_names_double_releases_and_works_unlimited() -> None:
    async def main() -> TokenTracker:
        tokens = TokenTracker(math.inf)
        await tokens.acquire("a")
        await tokens.acquire("b")
        tokens.release("a")
        tokens.release("a")
        return tokens

    tokens = trio.run(main)
    with pytest.raises(AssertionError) as info:
        assert_no_leftover_tokens(tokens)
    assert str(info.value) == (
        "a released a token it does not hold (a double release); "
        "tokens still held after the run by b"
    )
    with pytest.raises(AssertionError, match="1 more token releases than acquires"):
        assert_no_leftover_tokens(-1)


def test_workload_refuses_a_nested_node_without_nested() -> None:
    async def naive(graph: Workload, *, max_concurrency: float) -> None:
        for node in graph.nodes:
            await graph.run(node)

    case = DagGraph(Dag(((),)), durations=(1,), failures=(False,), subgraphs={0: flat(())})
    run = run_scheduler(naive, case, max_concurrency=1)
    assert isinstance(run.error, TypeError)
    assert "g1_1 holds a nested graph" in str(run.error)


def test_a_scheduler_taking_rng_gets_one_per_case() -> None:
    seen: list[random.Random] = []

    async def with_rng(graph: Workload, *, max_concurrency: float, rng: random.Random) -> None:
        seen.append(rng)
        for node in sorted(graph.nodes, key=lambda _: rng.random()):
            await graph.run(node)

    case = SchedulerCase(flat((), ()), max_concurrency=1, rng=random.Random(3))
    assert run_scheduler(with_rng, case).violations() == []
    assert isinstance(seen[0], random.Random)


# -- trioflow runs: deadlocks, tokens, per-example state ---------------------------------------


def test_run_virtual_reports_a_deadlock_not_too_slow() -> None:
    @trioflow.tool(outputs=["out"])
    async def wait_forever() -> None:
        await trio.Event().wait()

    @trioflow.graph_fn(name="stuck", outputs=["out"])
    async def stuck() -> Any:
        return (await wait_forever())["out"]

    outcome = run_virtual(stuck)
    assert isinstance(outcome.deadlock, Deadlock)
    assert outcome.elapsed == 0  # found at once, not at the limit
    assert str(outcome.error) == (
        "deadlock at t=0: every task is waiting and nothing can wake one; stuck: wait_forever_1"
    )
    assert outcome.deadlock.stuck == ("wait_forever_1",)
    assert outcome.record.nodes["wait_forever_1"].state is NodeState.RUNNING


def test_leftover_tokens_are_counted_at_an_unlimited_cap() -> None:
    leaked = object()

    @trioflow.tool(outputs=["out"])
    async def leak() -> int:
        limiter = trioflow.current_runtime().global_limiter
        assert limiter is not None  # run_virtual counts even at max_concurrency=inf
        limiter.acquire_on_behalf_of_nowait(leaked)
        return 1

    @trioflow.graph_fn(name="leaky", outputs=["out"])
    async def leaky() -> Any:
        return (await leak())["out"]

    outcome = run_virtual(leaky, max_concurrency=math.inf)
    assert outcome.ok and outcome.leftover_tokens == 1
    with pytest.raises(AssertionError, match="tokens still held after the run by an unknown"):
        assert_no_leftover_tokens(outcome)


def test_a_leaked_slot_is_named_by_its_node() -> None:
    from trioflow._context import FRAME

    @trioflow.tool(outputs=["out"])
    async def forgetful() -> int:
        frame = FRAME.get()
        assert frame is not None and frame.slot is not None
        frame.slot.held = ()  # a planted core bug: the slot forgets what it holds
        return 1

    @trioflow.graph_fn(name="forgets", outputs=["out"])
    async def forgets() -> Any:
        return (await forgetful())["out"]

    outcome = run_virtual(forgets, max_concurrency=2)
    assert outcome.leftover_tokens == 1 and outcome.leaked_by == ("forgetful_1",)
    with pytest.raises(AssertionError, match="tokens still held after the run by forgetful_1"):
        assert_no_leftover_tokens(outcome)


def test_count_tokens_false_runs_an_unlimited_cap_without_a_runtime_limiter() -> None:
    seen: list[object] = []

    @trioflow.tool(outputs=["out"])
    async def look() -> int:
        seen.append(trioflow.current_runtime().global_limiter)
        return 1

    @trioflow.graph_fn(name="plain", outputs=["out"])
    async def plain() -> Any:
        return (await look())["out"]

    outcome = run_virtual(plain, max_concurrency=math.inf, count_tokens=False)
    assert outcome.ok and seen == [None] and outcome.leftover_tokens == 0


@trioflow.tool(outputs=["w"])
async def forecast(day: int, context: trioflow.NodeContext) -> str:
    await trio.sleep(3600)
    return str(await context.weather().today(day))


@trioflow.graph_fn(name="week", outputs=["ws"])
async def week(days: list[int]) -> list[str]:
    results = await trioflow.gather(*(forecast(day=d) for d in days))
    return [r["w"] for r in results]


@given(days=st.lists(st.integers(0, 6), max_size=4))
@settings(max_examples=20, suppress_health_check=[HealthCheck.too_slow])
def test_each_example_gets_a_fresh_clock_and_fresh_services(days: list[int]) -> None:
    fake = FakeService(today=lambda day: f"sunny-{day}")
    outcome = run_virtual(week, {"days": days}, services={"weather": fake})
    assert outcome.outputs == {"ws": [f"sunny-{d}" for d in days]}
    assert outcome.elapsed == (3600 if days else 0)  # a fresh clock: nothing carried over
    assert sorted(c.args for c in fake.calls) == sorted((d,) for d in days)  # this example's
    assert fake.started and fake.closed
    assert outcome.record.started_at == 0.0


def test_run_virtual_takes_a_services_factory() -> None:
    made: list[FakeService] = []

    def services() -> dict[str, object]:
        made.append(FakeService(today=lambda day: "rain"))
        return {"weather": made[-1]}

    assert run_virtual(week, {"days": [1]}, services=services).outputs == {"ws": ["rain"]}
    assert run_virtual(week, {"days": [2]}, services=services).outputs == {"ws": ["rain"]}
    assert [len(f.calls) for f in made] == [1, 1]


# -- rng ---------------------------------------------------------------------------------------


TICKS: list[int] = []


@trioflow.tool(outputs=["out"])
async def tick(i: int) -> int:
    TICKS.append(i)
    await trio.sleep(1)
    return i


@trioflow.tool(outputs=["out"])
async def instant(i: int) -> int:
    await trio.lowlevel.checkpoint()
    TICKS.append(i)
    return i


@trioflow.graphify(name="six_ready", outputs=["outs"])
def six_ready() -> Any:
    return [tick(i=i).out for i in range(6)]


@trioflow.graph_fn(name="six_gathered", outputs=["outs"])
async def six_gathered() -> list[int]:
    return [r["out"] for r in await trioflow.gather(*(tick(i=i) for i in range(6)))]


def item_orders(target: Any) -> set[tuple[int, ...]]:
    """The order the six items started in, for ten rngs (cap 1: one at a time)."""
    orders = set()
    for s in range(10):
        TICKS.clear()
        outcome = run_virtual(target, max_concurrency=1, rng=random.Random(s))
        assert outcome.outputs == {"outs": list(range(6))}
        orders.add(tuple(TICKS))
    return orders


def test_rng_changes_the_start_order_of_ready_nodes_in_a_static_graph() -> None:
    assert len(item_orders(six_ready)) > 1


def test_rng_changes_the_start_order_of_a_gather_in_a_graph_fn() -> None:
    assert len(item_orders(six_gathered)) > 1


@trioflow.graphify(name="six_mapped", outputs=["outs"])
def six_mapped() -> Any:
    return trioflow.map(tick, list(range(6))).out


def test_rng_changes_the_order_of_map_items() -> None:
    assert len(item_orders(six_mapped)) > 1


def test_an_interleaving_seed_picks_a_reproducible_task_order() -> None:
    @trioflow.graph_fn(name="six_at_once", outputs=["outs"])
    async def six_at_once() -> list[int]:
        return [r["out"] for r in await trioflow.gather(*(instant(i=i) for i in range(6)))]

    def order(seed: int) -> tuple[int, ...]:
        TICKS.clear()
        assert run_virtual(six_at_once, max_concurrency=math.inf, interleaving=seed).ok
        return tuple(TICKS)

    assert order(7) == order(7)  # one seed, one interleaving (Trio is seeded under Hypothesis)
    assert len({order(s) for s in range(10)}) > 1


def test_run_in_virtual_time_reports_a_deadlock() -> None:
    async def stuck() -> None:
        await trio.Event().wait()

    with pytest.raises(Deadlock, match="deadlock at t=0"):
        run_in_virtual_time(stuck)
    assert run_in_virtual_time(trio.sleep, 5) is None


def test_a_sync_tool_does_not_make_virtual_time_jump() -> None:
    import time

    @trioflow.tool(outputs=["out"], timeout=5)
    def blocking(x: int) -> int:
        time.sleep(0.2)  # real time in a worker thread: the watchdog waits for it
        return x

    @trioflow.graph_fn(name="sync_inside", outputs=["out"])
    async def sync_inside() -> int:
        return (await blocking(x=1))["out"]

    outcome = run_virtual(sync_inside)
    assert outcome.ok, outcome.error
    assert outcome.elapsed == 0  # the 5 s timeout did not fire early


def test_a_sync_tool_counts_as_busy_until_its_result_is_back_in_trio() -> None:
    # Trio's thread cache marks a worker idle just before it hands the result back; the kit
    # must not read that as "everything is blocked" and let virtual time jump to a timeout.
    import threading

    from trioflow._executor import threads_waited_on
    from trioflow.testing._watchdog import threads_busy

    seen: list[tuple[bool, int]] = []
    release = threading.Event()

    def waits() -> None:
        release.wait(5)

    async def main() -> None:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trioflow.ThreadExecutor().run, waits)
                await trio.testing.wait_all_tasks_blocked()
                seen.append((threads_busy(), threads_waited_on()))
                release.set()
        seen.append((threads_busy(), threads_waited_on()))

    trio.run(main)
    assert seen == [(True, 1), (False, 0)]

    @trioflow.tool(outputs=["out"], timeout=5)
    def quick(x: int) -> int:
        return x

    @trioflow.graph_fn(name="many_sync", outputs=["out"])
    async def many_sync() -> int:
        total = 0
        for i in range(200):
            total += (await quick(x=i))["out"]
        return total

    outcome = run_virtual(many_sync)
    assert outcome.ok, outcome.error
    assert (outcome.outputs, outcome.elapsed) == ({"out": sum(range(200))}, 0)


def test_the_docs_page_names_every_public_name() -> None:
    import trioflow.testing as kit

    page = (ROOT / "docs" / "testing.md").read_text()
    public = [
        n for n in dir(kit) if not n.startswith("_") and not isinstance(getattr(kit, n), ModuleType)
    ]
    missing = [n for n in public if f"`{n}" not in page and f"{n}(" not in page]
    assert not missing


# -- invariants --------------------------------------------------------------------------------


def test_invariant_messages_name_the_offending_nodes() -> None:
    record = RunRecord(
        run_id="r",
        graph_id="g",
        nodes={
            "a": NodeRecord("t", NodeState.FAILED, 0.0, 2.0, 1),
            "b": NodeRecord("t", NodeState.DONE, 1.0, 3.0, 1),
            "c": NodeRecord("t", NodeState.DONE, 1.5, 3.0, 2),
            "d": NodeRecord("t", NodeState.RUNNING, 1.8, None, 1),
        },
        started_at=0.0,
        finished_at=3.0,
    )
    with pytest.raises(AssertionError, match="c started at 1.5 before b finished at 3.0"):
        assert_dependencies_respected(record, [("b", "c")])
    with pytest.raises(AssertionError, match="b started although a never finished"):
        assert_dependencies_respected(record, [("a", "b")])
    with pytest.raises(
        AssertionError, match=r"cap 3 exceeded: 4 nodes ran at once: \['a', 'b', 'c', 'd'\]"
    ):
        assert_cap_respected(record, 3)
    with pytest.raises(AssertionError, match="b started although an ancestor failed"):
        assert_failures_contained(record, [("a", "b")])
    with pytest.raises(AssertionError, match="nodes left unfinished after the run: d is RUNNING"):
        assert_all_finished(record)
    with pytest.raises(AssertionError, match="a is FAILED with no error recorded"):
        assert_failures_surfaced(record, ValueError(), ["a"])
    with pytest.raises(AssertionError, match="b failed but is recorded DONE"):
        assert_failures_surfaced(record, ValueError(), ["b"])
    with pytest.raises(AssertionError, match="the run returned normally although b failed"):
        assert_failures_surfaced(record, None, ["b"])
    assert peak_concurrency(record) == (4, ["a", "b", "c", "d"])


def test_dag_graph_is_keyed_by_node_id() -> None:
    case = DagGraph(Dag(((), (0,), (0, 1))), durations=(1, 2, 3), failures=(False,) * 3)
    outcome = run_virtual(case.graph)
    assert outcome.outputs == case.expected()
    assert case.calls == {"node_1": 1, "node_2": 1, "node_3": 1}
    assert case.durations == {"node_1": 1.0, "node_2": 2.0, "node_3": 3.0}
    assert_makespan_bounds(outcome.record, case.graph.compile(), case.durations, 4)
    assert outcome.elapsed == 6
    assert case.dag.critical_path(case.seconds) == 6


@given(case=dag_graphs(max_nodes=6, max_seconds=2))
@settings(max_examples=25)
def test_failures_surface_in_trioflow_runs(case: DagGraph) -> None:
    for policy in ("fail_fast", "skip_dependents", "collect"):
        outcome = run_virtual(case.graph, max_concurrency=2, on_error=policy)
        assert_all_finished(outcome.record)
        assert_failures_surfaced(
            outcome.record, outcome.error, case.failing, collect=policy == "collect"
        )
        assert_no_leftover_tokens(outcome)


# -- strategies --------------------------------------------------------------------------------


@given(dag=dags(min_nodes=2, max_nodes=12, max_width=1, max_depth=12))
@settings(max_examples=50)
def test_tight_bounds_build_a_chain_without_rejecting(dag: Dag) -> None:
    assert 2 <= dag.size <= 12 and dag.width() == 1 and dag.depth() == dag.size


@given(
    dag=dags(min_nodes=1, max_nodes=12, max_width=2, max_depth=3),
    other=dags(max_nodes=9, max_deps=0, max_width=3),
)
@settings(max_examples=50)
def test_dags_respect_their_bounds(dag: Dag, other: Dag) -> None:
    assert 1 <= dag.size <= 6
    assert dag.width() <= 2 and dag.depth() <= 3
    assert other.size <= 3 and other.edges == []


def test_impossible_bounds_are_refused_early() -> None:
    with pytest.raises(ValueError, match="cannot fit in max_width=1 x depth 2"):
        dags(min_nodes=3, max_width=1, max_depth=2)


@given(dag=st.from_type(Dag))
@settings(max_examples=50)
def test_from_type_draws_valid_dags(dag: Dag) -> None:
    assert all(d < i for d, i in dag.edges)


def subgraph_names(case: DagGraph) -> Iterator[str]:
    for sub in case.subgraphs.values():
        yield sub.name
        yield from subgraph_names(sub)


@given(case=nested_dag_graphs(failures=False))
@settings(max_examples=30)
def test_nested_graphs_have_unique_names_and_record_ids(case: DagGraph) -> None:
    names = list(subgraph_names(case))
    assert len(names) == len(set(names))
    outcome = run_virtual(case.graph, max_concurrency=2)
    assert outcome.ok, outcome.error
    assert outcome.outputs == case.expected()
    assert set(outcome.record.nodes) == set(case.node_ids)
    assert case.calls == {node_id: 1 for node_id in case.durations}


# -- fakes -------------------------------------------------------------------------------------


class Real:
    def __init__(self) -> None:
        self.log: list[str] = []

    def status(self, job: str) -> str:
        self.log.append(job)
        return f"ok:{job}"

    async def submit(self, job: str) -> str:
        await trio.lowlevel.checkpoint()
        return f"id:{job}"

    async def __call__(self, text: str) -> str:
        return text.upper()


async def test_recording_service_keeps_sync_methods_sync_and_async_async() -> None:
    recording = RecordingService(Real())
    assert recording.status("a") == "ok:a"  # no await: the real method is sync
    assert await recording.submit("b") == "id:b"
    assert await recording("hi") == "HI"
    assert [c.method for c in recording.calls] == ["status", "submit", "__call__"]


async def test_fake_service_follows_its_spec() -> None:
    fake = FakeService(Real, status="fine", submit=lambda job: f"fake:{job}")
    assert fake.status("a") == "fine"
    assert await fake.submit("b") == "fake:b"
    assert [(c.method, c.args) for c in fake.calls] == [("status", ("a",)), ("submit", ("b",))]
    unspecced = FakeService(status="fine")
    assert await unspecced.status() == "fine"  # without a spec every method is async
    with pytest.raises(AttributeError, match=r"Real has no method 'restart'"):
        FakeService(Real, restart=None)
