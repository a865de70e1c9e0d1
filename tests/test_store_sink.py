"""The run store as a sink: a fresh run of a static graph feeds its store from the ledger in bulk
(no events), reading one-output tools' scalar values from their slots. What it stores must be
exactly what the listener path and the serializer would store."""

from __future__ import annotations

import math
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import attrs
import trio
from hypothesis import HealthCheck, given, settings, strategies as st

import trioflow
from trioflow import NodeState
from trioflow._serialize import Serializer


def _sans_walls(record: trioflow.NodeRecord) -> trioflow.NodeRecord:
    """A record without its wall-clock times (the store's are from the run's own epoch, taken
    a moment before the live record's)."""
    return attrs.evolve(record, started_wall=None, finished_wall=None)


VALUES: list[Any] = []  # what `emit_<k>` returns for item i (set by each example)


def _emitter(k: int) -> Any:
    async def emit(i: int) -> Any:
        return VALUES[i]

    return trioflow.tool(name=f"emit{k}", outputs=[f"out{k}" if k else "y"])(emit)


EMIT = [_emitter(k) for k in range(6)]


@trioflow.tool(outputs=["a", "b"])
async def pair(i: int) -> dict[str, Any]:
    return {"a": i, "b": [i, str(i)]}


@trioflow.tool(outputs=["total"])
async def count(xs: list[Any]) -> int:
    return len(xs)


def _spread(tools: int) -> Any:
    """A graph of n nodes taking turns among `tools` one-output tools, a two-output node and a
    fan-in of them all."""

    def spread(n):  # type: ignore[no-untyped-def]
        outs = []
        for i in range(n):
            tool = EMIT[i % tools]
            outs.append(getattr(tool(i=i), tool.outputs[0]))
        return count(xs=[*outs, pair(i=n).a]).total

    return trioflow.graphify(name=f"spread{tools}", outputs=["total"])(spread)


SPREAD = {tools: _spread(tools) for tools in (1, 2, 3, 6)}


scalars = (
    st.integers()
    | st.text(max_size=5)
    | st.sampled_from(["$t", "\x00", "é", "\u2028", '"'])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.booleans()
    | st.none()
)


def _stored_texts_sqlite(path: Path, run_id: str) -> dict[str, str]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT node_id, outputs FROM nodes WHERE run_id = ?", (run_id,))
        return dict(rows.fetchall())
    finally:
        conn.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(scalars, min_size=1, max_size=14), st.sampled_from([1, 2, 3, 6]))
def test_stored_outputs_are_the_serializers_text(values: list[Any], tools: int) -> None:
    """Scalars of one, a few and many tools in one batch: each stored text is what the
    serializer writes for the node's outputs dict, in SQLite and in memory alike."""
    VALUES[:] = values
    n = len(values)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "runs.db"
        stores: list[trioflow.RunStore] = [trioflow.MemoryStore(), trioflow.SQLiteStore(path)]
        for store in stores:
            out = trio.run(
                lambda store=store: trioflow.run_async(
                    SPREAD[tools], {"n": n}, store=store, run_id="r"
                )
            )
            assert out["total"] == n + 1
        memory_texts = {
            node_id: row[15]
            for node_id, row in stores[0]._nodes["r"].items()  # type: ignore[attr-defined]
        }
        assert memory_texts == _stored_texts_sqlite(path, "r")
    dumps = Serializer("json").dumps
    for i, value in enumerate(values):
        tool = EMIT[i % tools]
        node_id = f"{tool.name}_{i // tools + 1}"
        assert memory_texts[node_id] == dumps({tool.outputs[0]: value}), (node_id, value)
    assert memory_texts["pair_1"] == dumps({"a": n, "b": [n, str(n)]})
    assert memory_texts["count_1"] == dumps({"total": n + 1})
    decoded = trioflow.MemoryStore().serializer.loads(memory_texts[f"{EMIT[0].name}_1"])
    first = decoded[EMIT[0].outputs[0]]
    assert first == values[0] or (isinstance(first, float) and math.isnan(first))


@trioflow.tool(outputs=["out"])
async def work(x: int) -> int:
    await trio.sleep(0.01 * (x % 3))
    return x * 2


@trioflow.tool(outputs=["sum"])
async def reduce_sum(xs: list[int]) -> int:
    return sum(xs)


@trioflow.graph_fn(name="doubled", outputs=["ys"])
async def doubled(xs: list[int]) -> list[int]:
    return [r["out"] for r in await trioflow.map(work, xs)]


@trioflow.graphify(name="inner", outputs=["total"])
def inner(xs):  # type: ignore[no-untyped-def]
    return reduce_sum(xs=[work(x=xs[i]).out for i in range(len(xs))]).sum


@trioflow.graphify(name="outer", outputs=["a", "b", "c"])
def outer(vals):  # type: ignore[no-untyped-def]
    d = doubled(xs=vals)
    m = trioflow.map(work, vals)
    return {"a": inner(xs=d.ys).total, "b": d.ys, "c": reduce_sum(xs=m.out).sum}


async def test_nested_graphs_and_maps_store_what_the_run_recorded(autojump_clock: Any) -> None:
    events: list[trioflow.RunEvent] = []
    for listener in (None, events.append):  # the sink alone, and beside a listener
        store = trioflow.MemoryStore()
        with trio.fail_after(60):
            result = await trioflow.run_async(
                outer,
                {"vals": [1, 2, 3, 4]},
                store=store,
                run_id="r",
                record=True,
                on_event=listener,
            )
        assert result.outputs == {"a": 40, "b": [2, 4, 6, 8], "c": 20}
        live, stored = result.record, store.load("r")
        assert list(stored.nodes) == list(live.nodes)  # loaded in the run's own order
        for node_id, rec in live.nodes.items():
            assert _sans_walls(stored.nodes[node_id]) == _sans_walls(rec), node_id
        outputs = store.outputs("r")
        assert outputs["inner_1.reduce_sum_1"] == {"sum": 40}
        assert outputs["inner_1.work_4"] == {"out": 16}
        assert outputs["map_1.work_3"] == {"out": 6}
        assert outputs["reduce_sum_1"] == {"sum": 20}
        assert "inner_1" not in outputs and "map_1" not in outputs  # theirs are inner nodes'
        (info,) = store.runs()
        assert (
            info.state is NodeState.DONE
            and info.content_hash == outer.compile(vals=[1, 2, 3, 4]).content_hash
        )
    kinds = [e.kind for e in events]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    assert kinds.count("node_started") == kinds.count("node_finished") == len(result.record.nodes)


@trioflow.tool(outputs=["out"])
async def slow(x: int) -> int:
    await trio.sleep(10)
    return x


@trioflow.graphify(name="mixed", outputs=["out"])
def mixed(n):  # type: ignore[no-untyped-def]
    quick = [work(x=i).out for i in range(n)]
    return reduce_sum(xs=[*quick, slow(x=1).out]).sum


async def test_a_node_still_running_at_a_batch_is_stored_running_then_done(
    autojump_clock: Any,
) -> None:
    """A node is written RUNNING by the batch after it started (a crash then re-runs it, as it
    must), and DONE by the batch after it finished; the nodes done meanwhile are DONE."""
    store = trioflow.MemoryStore()
    seen: list[dict[str, NodeState]] = []

    async def look() -> None:
        await trio.sleep(5)
        seen.append(store.load("r").states())

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(look)
            await trioflow.run_async(mixed, {"n": 6}, store=store, run_id="r")
    (mid,) = seen
    assert mid["slow_1"] is NodeState.RUNNING
    assert all(mid[f"work_{k}"] is NodeState.DONE for k in range(1, 7))
    assert "reduce_sum_1" not in mid  # not started: no row yet
    final = store.load("r").states()
    assert set(final.values()) == {NodeState.DONE}
    assert store.outputs("r")["slow_1"] == {"out": 1}
    # The RUNNING row was replaced, not duplicated, and keeps its place in the run's order.
    assert list(store.load("r").nodes) == [*(f"work_{k}" for k in range(1, 7)), "slow_1",
                                           "reduce_sum_1"]  # fmt: skip


@trioflow.tool(outputs=["out"])
async def boom(x: int) -> int:
    raise ValueError(f"bad {x}")


@trioflow.graphify(name="failing", outputs=["out"])
def failing(n):  # type: ignore[no-untyped-def]
    ok = [work(x=i).out for i in range(n)]
    return reduce_sum(xs=[*ok, boom(x=7).out]).sum


async def test_failed_skipped_and_cancelled_nodes_are_stored_as_recorded(
    autojump_clock: Any,
) -> None:
    for policy in ("fail_fast", "collect"):
        store = trioflow.MemoryStore()
        with trio.fail_after(60):
            result = await trioflow.run_async(
                failing, {"n": 5}, store=store, run_id="r", on_error="collect"
            ) if policy == "collect" else None  # fmt: skip
            if result is None:
                try:
                    await trioflow.run_async(failing, {"n": 5}, store=store, run_id="r")
                except trioflow.NodeFailed as exc:
                    live = exc.record
                else:
                    raise AssertionError("the run should have failed")
            else:
                live = result.record
        stored = store.load("r")
        assert stored.states() == live.states()
        for node_id, rec in live.nodes.items():
            assert _sans_walls(stored.nodes[node_id]) == _sans_walls(rec), (policy, node_id)
        assert stored.nodes["boom_1"].error is not None
        assert "bad 7" in stored.nodes["boom_1"].error.message
        assert stored.nodes["reduce_sum_1"].state in (NodeState.SKIPPED, NodeState.CANCELLED)
        (info,) = store.runs()
        assert info.state is NodeState.FAILED


async def test_a_store_failing_mid_run_fails_the_run_with_its_error(autojump_clock: Any) -> None:
    """The writer's failure cancels the run; the run raises the store's error, not the group
    of `Cancelled` its nested graphs' nurseries raise."""

    class Broken(trioflow.MemoryStore):
        def write(self, ops: Any) -> None:
            raise trioflow.StoreError("disk full")

    for graph, inputs in ((outer, {"vals": [1, 2, 3, 4]}), (mixed, {"n": 6})):
        raised: BaseException | None = None
        with trio.fail_after(60):
            try:
                await trioflow.run_async(graph, inputs, store=Broken(), run_id="r")
            except BaseException as exc:  # whatever it is (a group of Cancelled would escape)
                raised = exc
        assert isinstance(raised, trioflow.StoreError), repr(raised)
        assert "disk full" in str(raised)


class _ProtocolOnly:
    """A `RunStore` of another kind: only the protocol's methods (no `bulk_rows`)."""

    blocking = False  # in memory: called inline, so virtual time stays exact

    def __init__(self) -> None:
        self.inner = trioflow.MemoryStore()
        self.kinds: set[str] = set()

    @property
    def serializer(self) -> Any:
        return self.inner.serializer

    def runs(self) -> list[trioflow.RunInfo]:
        return self.inner.runs()

    def load(self, run_id: str) -> trioflow.RunRecord:
        return self.inner.load(run_id)

    def outputs(self, run_id: str) -> dict[str, dict[str, Any]]:
        return self.inner.outputs(run_id)

    def begin(self, row: Any, *, resume: bool) -> Any:
        return self.inner.begin(row, resume=resume)

    def write(self, ops: Any) -> None:
        self.kinds.update(kind for kind, _ in ops)
        self.inner.write(ops)

    def cache_get(self, key: str) -> Any:
        return self.inner.cache_get(key)

    def cache_of(self, tool: str, version: str, limit: int) -> Any:
        return self.inner.cache_of(tool, version, limit)


async def test_a_store_of_another_kind_gets_node_rows(autojump_clock: Any) -> None:
    store = _ProtocolOnly()
    assert isinstance(store, trioflow.RunStore)
    with trio.fail_after(60):
        out = await trioflow.run_async(mixed, {"n": 6}, store=store, run_id="r")
    assert out["out"] == sum(2 * i for i in range(6)) + 1
    assert store.kinds == {"run", "node"}  # never a "done" op: it did not ask for them
    assert store.outputs("r")["work_4"] == {"out": 6}
    assert set(store.load("r").states().values()) == {NodeState.DONE}


@trioflow.tool(outputs=["out"], cache=True)
async def quick_cached(x: int) -> int:
    return x + 1


@trioflow.graphify(name="one_cached", outputs=["out"])
def one_cached(x):  # type: ignore[no-untyped-def]
    return quick_cached(x=x).out


async def test_a_cache_row_is_written_with_its_node_in_the_last_batch(autojump_clock: Any) -> None:
    """A cached node that finishes as the run ends: its cache row goes in the same (last) batch
    as its node row, so the next run hits it."""
    store = trioflow.MemoryStore()
    with trio.fail_after(60):
        assert (await trioflow.run_async(one_cached, {"x": 1}, store=store))["out"] == 2
        again = await trioflow.run_async(one_cached, {"x": 1}, store=store, record=True)
    assert again.outputs == {"out": 2}
    assert again.record.nodes["quick_cached_1"].cached


async def test_long_ints_are_stored_or_fail_their_node_as_without_the_sink(
    autojump_clock: Any,
) -> None:
    """An int too long to print in bulk later goes through the store's per-node encoding."""
    VALUES[:] = [10**700, -(10**650), 7]
    store = trioflow.MemoryStore()
    with trio.fail_after(60):
        await trioflow.run_async(SPREAD[1], {"n": 3}, store=store, run_id="r")
    outputs = store.outputs("r")
    assert [outputs[f"emit0_{k}"]["y"] for k in (1, 2, 3)] == VALUES
    VALUES[:] = [10**5000]  # beyond Python's own limit for printing an int: the node fails
    with trio.fail_after(60):
        try:
            await trioflow.run_async(SPREAD[1], {"n": 1}, store=trioflow.MemoryStore())
        except trioflow.NodeFailed as exc:
            assert exc.node_id == "emit0_1" and isinstance(exc.__cause__, ValueError)
        else:
            raise AssertionError("the node should have failed")
