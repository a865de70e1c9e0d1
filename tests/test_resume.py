"""Durable runs in one process: persistence as the run goes, resume, replay, mismatches."""

from __future__ import annotations

import math
import pathlib
from collections import Counter
from typing import Any

import attrs
import pytest
import trio

import trioflow
from trioflow import NodeState

calls: Counter[str] = Counter()
broken: set[str] = set()


@pytest.fixture(autouse=True)
def _reset() -> None:
    calls.clear()
    broken.clear()


@attrs.frozen
class Row:
    key: str
    value: int


@trioflow.tool(outputs=["out"])
async def square(i: int) -> int:
    calls[f"square:{i}"] += 1
    await trio.sleep(5 if f"square:{i}" in broken else 1)  # fails after the others finished
    if f"square:{i}" in broken:
        raise RuntimeError(f"square {i} broke")
    return i * i


@trioflow.tool(outputs=["rows", "total"])
async def collect(xs: list[int]) -> dict[str, Any]:
    calls["collect"] += 1
    await trio.sleep(1)
    if "collect" in broken:
        raise RuntimeError("collect broke")
    return {"rows": [Row(str(i), x) for i, x in enumerate(xs)], "total": sum(xs)}


@trioflow.graphify(outputs=["total", "rows"])
def squares(n: int) -> dict[str, Any]:
    parts = [square(i=i) for i in range(n)]
    summary = collect(xs=[p.out for p in parts])
    return {"total": summary.total, "rows": summary.rows}


@trioflow.graph_fn(outputs=["total"])
async def chunk(start: int, stop: int) -> int:
    got = await trioflow.map(square, range(start, stop))
    return sum(g["out"] for g in got)


@trioflow.graph_fn(outputs=["total", "again"])
async def reactive(n: int) -> dict[str, Any]:
    halves = await trioflow.gather(
        lambda: chunk(start=0, stop=n // 2), lambda: chunk(start=n // 2, stop=n)
    )
    first = await square(i=1)  # equal calls: replayed by occurrence
    second = await square(i=1)
    return {"total": sum(h["total"] for h in halves), "again": first["out"] + second["out"]}


# -- arguments ------------------------------------------------------------------------------------


async def test_resume_needs_a_store_and_a_run_id() -> None:
    with pytest.raises(trioflow.ConfigError, match="needs a run store"):
        await trioflow.run_async(squares, inputs={"n": 2}, run_id="x", resume=True)
    with pytest.raises(trioflow.ConfigError, match="needs the run_id="):
        await trioflow.run_async(
            squares, inputs={"n": 2}, store=trioflow.MemoryStore(), resume=True
        )
    with pytest.raises(trioflow.ConfigTypeError, match="store must be"):
        await trioflow.run_async(squares, inputs={"n": 2}, store="runs.db")
    assert calls == Counter()


async def test_resume_of_an_unknown_run_id_starts_fresh(autojump_clock: Any) -> None:
    store = trioflow.MemoryStore()
    with trio.fail_after(60):
        out = await trioflow.run_async(
            squares, inputs={"n": 3}, store=store, run_id="new", resume=True
        )
    assert out["total"] == 5
    assert store.load("new").states()["collect_1"] is NodeState.DONE


async def test_reusing_a_run_id_without_resume_fails_before_any_node(autojump_clock: Any) -> None:
    store = trioflow.MemoryStore()
    with trio.fail_after(60):
        await trioflow.run_async(squares, inputs={"n": 2}, store=store, run_id="r")
        calls.clear()
        with pytest.raises(trioflow.ConfigError, match="'r' already exists.*resume=True"):
            await trioflow.run_async(squares, inputs={"n": 2}, store=store, run_id="r")
    assert calls == Counter()


# -- persistence ----------------------------------------------------------------------------------


async def test_the_store_holds_the_record_and_outputs_the_tools_returned(
    autojump_clock: Any,
) -> None:
    store = trioflow.MemoryStore()
    with trio.fail_after(60):
        result = await trioflow.run_async(
            squares, inputs={"n": 3}, store=store, run_id="r", record=True
        )
    stored = store.load("r")
    assert stored.states() == result.record.states()
    for node_id, rec in result.record.nodes.items():
        assert stored.nodes[node_id].started_at == rec.started_at
        assert stored.nodes[node_id].finished_at == rec.finished_at
        assert stored.nodes[node_id].attempts == rec.attempts
        assert stored.nodes[node_id].executor == rec.executor
    assert store.outputs("r")["collect_1"] == {
        "rows": [Row("0", 0), Row("1", 1), Row("2", 4)],
        "total": 5,
    }
    (info,) = store.runs()
    assert (info.run_id, info.graph, info.state, info.inputs) == (
        "r",
        "squares",
        NodeState.DONE,
        {"n": 3},
    )
    assert info.content_hash == squares.compile(n=3).content_hash


async def test_a_sync_tool_is_stored_as_run_in_a_thread() -> None:
    @trioflow.tool(outputs=["out"])
    def blocking(x: int) -> int:
        return x + 1

    @trioflow.graph_fn(outputs=["out"])
    async def g() -> int:
        return (await blocking(x=1))["out"]

    store = trioflow.MemoryStore()
    with trio.fail_after(10):
        await trioflow.run_async(g, store=store, run_id="r")
    assert store.load("r").nodes["blocking_1"].executor == "thread"
    assert store.outputs("r") == {"blocking_1": {"out": 2}}


async def test_a_failed_run_is_stored_with_its_errors(autojump_clock: Any) -> None:
    store = trioflow.MemoryStore()
    broken.add("square:1")
    with trio.fail_after(60):
        with pytest.raises(trioflow.NodeFailed):
            await trioflow.run_async(squares, inputs={"n": 3}, store=store, run_id="r")
    stored = store.load("r")
    assert stored.nodes["square_2"].state is NodeState.FAILED
    assert stored.nodes["square_2"].error is not None
    assert stored.nodes["square_2"].error.message == "square 1 broke"
    assert stored.nodes["collect_1"].state is NodeState.SKIPPED
    assert store.runs()[0].state is NodeState.FAILED


async def test_a_completion_is_committed_within_50_ms(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "runs.db"
    seen: dict[str, float] = {}

    @trioflow.tool(outputs=["out"])
    async def quick() -> int:
        return 1

    @trioflow.tool(outputs=["out"])
    async def slow(x: int) -> int:
        start = trio.current_time()
        reader = trioflow.SQLiteStore(path)  # another connection: sees only what is committed
        while True:
            states = await trio.to_thread.run_sync(lambda: reader.load("r").states())
            if states.get("quick_1") is NodeState.DONE:
                seen["after"] = trio.current_time() - start
                return x
            await trio.sleep(0.002)

    @trioflow.graphify(outputs=["out"])
    def two() -> dict[str, Any]:
        return {"out": slow(x=quick().out).out}

    with trio.fail_after(10):
        await trioflow.run_async(two, store=trioflow.SQLiteStore(path), run_id="r")
    # The writer's batch window is 20 ms, so an idle machine sees it in ~20-25 ms; the bound
    # leaves room for a loaded CI box (a writer that only committed at the end never sees it).
    assert seen["after"] < 0.25


async def test_one_writer_commits_batches_not_one_transaction_per_node(
    autojump_clock: Any,
) -> None:
    writes: list[int] = []

    class Counting(trioflow.MemoryStore):
        def write(self, ops: Any) -> None:
            # Rows per transaction: a "done" op holds many plain DONE rows of one run (columns).
            writes.append(sum(len(row[3][0]) if kind == "done" else 1 for kind, row in ops))
            super().write(ops)

    @trioflow.tool(outputs=["out"])
    async def tick(i: int) -> int:
        await trio.sleep(0.001)
        return i

    @trioflow.graphify(outputs=["out"])
    def many(n: int) -> dict[str, Any]:
        return {"out": [tick(i=i).out for i in range(n)]}

    store = Counting()
    with trio.fail_after(60):
        await trioflow.run_async(many, inputs={"n": 2000}, store=store, run_id="r")
    assert len(store.outputs("r")) == 2000
    assert sum(writes) >= 2000 and len(writes) <= 30  # 2,000 nodes, 0.5 s, 20 ms batches


async def test_a_failing_store_fails_the_run_with_its_error(autojump_clock: Any) -> None:
    class Broken(trioflow.MemoryStore):
        def write(self, ops: Any) -> None:
            raise trioflow.StoreError("disk full")

    with trio.fail_after(60):
        with pytest.raises(trioflow.StoreError, match="disk full"):
            await trioflow.run_async(squares, inputs={"n": 50}, store=Broken(), run_id="r")
    assert calls["collect"] == 0  # the run stopped


async def test_unstorable_outputs_fail_their_node_with_a_config_error(autojump_clock: Any) -> None:
    @trioflow.tool(outputs=["handle"])
    async def opens() -> object:
        return object()

    @trioflow.graphify(outputs=["handle"])
    def g() -> dict[str, Any]:
        return {"handle": opens().handle}

    store = trioflow.MemoryStore()
    with trio.fail_after(60):
        with pytest.raises(trioflow.NodeFailed) as info:
            await trioflow.run_async(g, store=store, run_id="r")
    assert isinstance(info.value.__cause__, trioflow.ConfigError)
    assert "node 'opens_1'" in str(info.value.__cause__)
    assert "builtins.object" in str(info.value.__cause__)
    assert store.load("r").nodes["opens_1"].state is NodeState.FAILED


async def test_unstorable_inputs_are_refused_before_the_run(autojump_clock: Any) -> None:
    with pytest.raises(trioflow.ConfigError, match="inputs of run 'r' cannot be stored"):
        await trioflow.run_async(
            reactive, inputs={"n": object()}, store=trioflow.MemoryStore(), run_id="r"
        )


async def test_runtime_store_is_every_runs_default_and_run_store_overrides(
    autojump_clock: Any,
) -> None:
    shared, own = trioflow.MemoryStore(), trioflow.MemoryStore()
    with trio.fail_after(60):
        async with trioflow.open_runtime(store=shared):
            await trioflow.run_async(squares, inputs={"n": 1}, run_id="a")
            await trioflow.run_async(squares, inputs={"n": 1}, run_id="b", store=own)
    assert [r.run_id for r in shared.runs()] == ["a"]
    assert [r.run_id for r in own.runs()] == ["b"]


# -- resume of a static graph ---------------------------------------------------------------------


async def test_resume_runs_only_what_did_not_finish(autojump_clock: Any) -> None:
    store = trioflow.MemoryStore()
    broken.update({"square:2", "square:4"})
    with trio.fail_after(60):
        with pytest.raises(ExceptionGroup):
            await trioflow.run_async(
                squares, inputs={"n": 6}, store=store, run_id="r", on_error="skip_dependents"
            )
        assert calls["square:0"] == 1 and calls["collect"] == 0
        broken.clear()
        result = await trioflow.run_async(
            squares, inputs={"n": 6}, store=store, run_id="r", resume=True, record=True
        )
    assert result.outputs["total"] == sum(i * i for i in range(6))
    assert result.outputs["rows"][5] == Row("5", 25)
    assert all(calls[f"square:{i}"] == 1 for i in (0, 1, 3, 5))  # reused, not run again
    assert calls["square:2"] == calls["square:4"] == 2 and calls["collect"] == 1
    reused = result.record.nodes["square_1"]
    assert (reused.state, reused.cached, reused.attempts) == (NodeState.DONE, False, 0)
    assert result.record.nodes["square_3"].attempts == 1
    assert store.load("r").states() == result.record.states()
    assert store.runs()[0].state is NodeState.DONE


@pytest.mark.parametrize("serializer", ["json", "pickle"])
async def test_resumed_nodes_are_heard_by_listeners_with_their_decoded_outputs(
    autojump_clock: Any, serializer: Any
) -> None:
    store = trioflow.MemoryStore(serializer=serializer)
    with trio.fail_after(60):
        await trioflow.run_async(squares, inputs={"n": 3}, store=store, run_id="r")
        heard: list[tuple[str, str | None, Any]] = []
        result = await trioflow.run_async(
            squares,
            inputs={"n": 3},
            store=store,
            run_id="r",
            resume=True,
            on_event=lambda e: heard.append((e.kind, e.node_id, e.outputs)),
        )
    assert result["rows"] == [Row("0", 0), Row("1", 1), Row("2", 4)]  # attrs values, decoded
    assert calls["collect"] == 1 and calls["square:2"] == 1  # nothing ran again
    finished = {node: outputs for kind, node, outputs in heard if kind == "node_finished"}
    assert finished["square_3"] == {"out": 4}
    assert finished["collect_1"]["rows"][2] == Row("2", 4)
    started = [node for kind, node, _ in heard if kind == "node_started"]
    assert sorted(started) == ["collect_1", "square_1", "square_2", "square_3"]


async def test_resume_with_other_input_values_is_a_mismatch(autojump_clock: Any) -> None:
    store = trioflow.MemoryStore()
    with trio.fail_after(60):
        await trioflow.run_async(squares, inputs={"n": 3}, store=store, run_id="r")
        calls.clear()
        with pytest.raises(trioflow.ResumeMismatch, match="'n' was 3, now 4"):
            await trioflow.run_async(squares, inputs={"n": 4}, store=store, run_id="r", resume=True)
    assert calls == Counter()


async def test_resume_of_a_changed_graph_is_a_mismatch(autojump_clock: Any) -> None:
    @trioflow.graphify(name="squares", outputs=["total", "rows"])
    def edited(n: int) -> dict[str, Any]:
        parts = [square(i=i + 1) for i in range(n)]  # another constant: another content_hash
        summary = collect(xs=[p.out for p in parts])
        return {"total": summary.total, "rows": summary.rows}

    store = trioflow.MemoryStore()
    with trio.fail_after(60):
        await trioflow.run_async(squares, inputs={"n": 3}, store=store, run_id="r")
        with pytest.raises(trioflow.ResumeMismatch, match="changed since run 'r'.*content_hash"):
            await trioflow.run_async(edited, inputs={"n": 3}, store=store, run_id="r", resume=True)
        with pytest.raises(trioflow.ResumeMismatch, match="ran graph 'squares', not 'reactive'"):
            await trioflow.run_async(
                reactive, inputs={"n": 3}, store=store, run_id="r", resume=True
            )


# -- replay of a graph_fn -------------------------------------------------------------------------


async def test_replay_returns_stored_outputs_inside_gather_map_and_nested_graphs(
    autojump_clock: Any,
) -> None:
    store = trioflow.MemoryStore()
    broken.add("square:7")
    with trio.fail_after(60):
        with pytest.raises(trioflow.NodeFailed):
            await trioflow.run_async(
                reactive, inputs={"n": 8}, store=store, run_id="r", max_concurrency=8
            )
        first = Counter(calls)
        done_first = {f"square:{math.isqrt(out['out'])}" for out in store.outputs("r").values()}
        assert done_first == {f"square:{i}" for i in range(7)}
        broken.clear()
        result = await trioflow.run_async(
            reactive, inputs={"n": 8}, store=store, run_id="r", resume=True, record=True
        )
    assert result.outputs == {"total": sum(i * i for i in range(8)), "again": 2}
    # Nothing that completed ran again: square(i=1) ran once in the map, and now only for the
    # two later equal calls (occurrences 2 and 3), which never ran in the first run.
    assert "square:1" in done_first and calls["square:1"] == 3
    assert all(calls[k] == first[k] for k in done_first - {"square:1"})
    assert calls["square:7"] == first["square:7"] + 1
    tool_nodes = {n: r for n, r in result.record.nodes.items() if r.tool == "square"}
    assert all(r.state is NodeState.DONE and not r.cached for r in tool_nodes.values())


async def test_replay_matches_equal_calls_by_occurrence(autojump_clock: Any) -> None:
    @trioflow.graph_fn(name="twice", outputs=["out"])
    async def twice() -> int:
        a = await square(i=3)
        b = await square(i=3)
        c = await square(i=3)
        return a["out"] + b["out"] + c["out"]

    store = trioflow.MemoryStore()
    with trio.fail_after(60):
        await trioflow.run_async(twice, store=store, run_id="r")
        assert calls["square:3"] == 3

        @trioflow.graph_fn(name="twice", outputs=["out"])
        async def four_times() -> int:  # the body was edited: one more equal call
            total = 0
            for _ in range(4):
                total += (await square(i=3))["out"]
            return total

        result = await trioflow.run_async(
            four_times, store=store, run_id="r", resume=True, record=True
        )
    assert result.outputs == {"out": 36}
    assert calls["square:3"] == 4  # three replayed, the fourth ran
    assert [r.attempts for r in result.record.nodes.values()] == [0, 0, 0, 1]


async def test_replay_with_other_inputs_is_a_mismatch(autojump_clock: Any) -> None:
    store = trioflow.MemoryStore()
    with trio.fail_after(60):
        await trioflow.run_async(reactive, inputs={"n": 2}, store=store, run_id="r")
        with pytest.raises(trioflow.ResumeMismatch, match="'n' was 2, now 3"):
            await trioflow.run_async(
                reactive, inputs={"n": 3}, store=store, run_id="r", resume=True
            )


@trioflow.tool(outputs=["out"])
async def last(total: int) -> int:
    calls["last"] += 1
    if "last" in broken:
        raise RuntimeError("last broke")
    return total + 1


@trioflow.graphify(outputs=["out"])
def mapped(items: list[int]) -> dict[str, Any]:
    squares_ = trioflow.map(square, items)
    summary = collect(xs=squares_.out)
    return {"out": last(total=summary.total).out}


async def test_resume_behind_a_map_reuses_its_items_and_dependents(autojump_clock: Any) -> None:
    store = trioflow.MemoryStore()
    broken.add("last")
    with trio.fail_after(60):
        with pytest.raises(trioflow.NodeFailed):
            await trioflow.run_async(mapped, {"items": [1, 2, 3]}, store=store, run_id="r")
        broken.clear()
        result = await trioflow.run_async(
            mapped, {"items": [1, 2, 3]}, store=store, run_id="r", resume=True, record=True
        )
    assert result.outputs == {"out": 15}
    assert calls["collect"] == 1 and calls["last"] == 2
    assert all(calls[f"square:{i}"] == 1 for i in (1, 2, 3))
    assert result.record.nodes["collect_1"].attempts == 0
    assert result.record.nodes["last_1"].attempts == 1


# -- what a resume reads and writes, from every kind of store -------------------------------------


@trioflow.tool(outputs=["out"])
async def cube(i: int) -> int:
    calls[f"cube:{i}"] += 1
    await trio.lowlevel.checkpoint()
    if f"cube:{i}" in broken:
        raise RuntimeError(f"cube {i} broke")
    return i**3


@trioflow.tool(outputs=["rows", "total"])
async def tabulate(xs: list[int]) -> dict[str, Any]:
    calls["tabulate"] += 1
    return {"rows": [Row(str(i), x) for i, x in enumerate(xs)], "total": sum(xs)}


@trioflow.graphify(outputs=["total", "rows"])
def cubes(n: int) -> dict[str, Any]:
    summary = tabulate(xs=[cube(i=i).out for i in range(n)])
    return {"total": summary.total, "rows": summary.rows}


# These run on the real clock (a SQLite store writes from a worker thread, which virtual time
# would jump past), with tools that do not sleep.


@pytest.fixture(params=["memory", "sqlite", "sqlite-pickle", "sqlite-row-by-row"])
def any_store(
    request: pytest.FixtureRequest, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> trioflow.RunStore:
    """Each way a resume reads a stored run: a MemoryStore's rows; SQLite in one query (JSON);
    SQLite row by row (pickled outputs, or a SQLite without JSON aggregates)."""
    if request.param == "memory":
        return trioflow.MemoryStore()
    if request.param == "sqlite-row-by-row":
        monkeypatch.setattr("trioflow._sqlite._JSON_AGGREGATES", False)
    serializer = "pickle" if request.param == "sqlite-pickle" else "json"
    return trioflow.SQLiteStore(tmp_path / "runs.db", serializer=serializer)


async def test_resume_reuses_what_finished_from_every_store(any_store: trioflow.RunStore) -> None:
    broken.update({"cube:2", "cube:4"})
    with trio.fail_after(60):
        with pytest.raises(ExceptionGroup):
            await trioflow.run_async(
                cubes, inputs={"n": 6}, store=any_store, run_id="r", on_error="skip_dependents"
            )
        broken.clear()
        result = await trioflow.run_async(
            cubes, inputs={"n": 6}, store=any_store, run_id="r", resume=True, record=True
        )
        with pytest.raises(trioflow.ResumeMismatch, match="'n' was 6, now 5"):
            await trioflow.run_async(
                cubes, inputs={"n": 5}, store=any_store, run_id="r", resume=True
            )
    assert result.outputs == {
        "total": sum(i**3 for i in range(6)),
        "rows": [Row(str(i), i**3) for i in range(6)],
    }
    assert all(calls[f"cube:{i}"] == 1 for i in (0, 1, 3, 5))  # reused, not run again
    assert calls["cube:2"] == calls["cube:4"] == 2 and calls["tabulate"] == 1
    assert [result.record.nodes[f"cube_{i + 1}"].attempts for i in range(6)] == [0, 0, 1, 0, 1, 0]
    assert any_store.load("r").states() == result.record.states()
    assert any_store.outputs("r")["tabulate_1"]["rows"][5] == Row("5", 125)
    # Resumed once more, everything is reused: the stored outputs, decoded, are the values.
    calls.clear()
    again = await trioflow.run_async(
        cubes, inputs={"n": 6}, store=any_store, run_id="r", resume=True, record=True
    )
    assert again.outputs == result.outputs and calls == Counter()
    assert all(rec.attempts == 0 for rec in again.record.nodes.values())


async def test_replay_matches_equal_calls_by_occurrence_from_every_store(
    any_store: trioflow.RunStore,
) -> None:
    @trioflow.graph_fn(name="thrice", outputs=["out"])
    async def thrice() -> int:
        got = [await cube(i=i) for i in (3, 2, 3, 3)]
        return sum(g["out"] for g in got)

    @trioflow.graph_fn(name="thrice", outputs=["out"])
    async def edited() -> int:  # one more equal call, and another order
        got = [await cube(i=i) for i in (3, 3, 3, 2, 3)]
        return sum(g["out"] for g in got)

    with trio.fail_after(60):
        assert await trioflow.run_async(thrice, store=any_store, run_id="r") == {"out": 89}
        result = await trioflow.run_async(
            edited, store=any_store, run_id="r", resume=True, record=True
        )
    assert result.outputs == {"out": 116}
    assert calls["cube:3"] == 4 and calls["cube:2"] == 1  # only the fourth 3 ran
    assert [r.attempts for r in result.record.nodes.values()] == [0, 0, 0, 0, 1]


class _Counting:
    """A store that remembers every row written to it."""

    def __init__(self, store: trioflow.RunStore) -> None:
        self.store = store
        self.written: list[tuple[str, str]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    @property
    def serializer(self) -> Any:
        return self.store.serializer

    def write(self, ops: Any) -> None:
        for kind, row in ops:
            if kind == "done":  # many plain DONE node rows of one run, as columns
                self.written += [("node", node_id) for node_id in row[3][0]]
            else:
                self.written.append((kind, row[1]))
        self.store.write(ops)


async def test_a_resume_with_nothing_left_to_run_writes_only_its_run_row(
    any_store: trioflow.RunStore,
) -> None:
    counting = _Counting(any_store)
    with trio.fail_after(60):
        await trioflow.run_async(cubes, inputs={"n": 50}, store=counting, run_id="r")
        assert len([kind for kind, _ in counting.written if kind == "node"]) >= 51
        before = any_store.load("r")
        counting.written.clear()
        out = await trioflow.run_async(
            cubes, inputs={"n": 50}, store=counting, run_id="r", resume=True
        )
    assert out["total"] == sum(i**3 for i in range(50))
    assert {kind for kind, _ in counting.written} == {"run"}  # started, then finished
    assert any_store.load("r").nodes == before.nodes  # no node row was written again


async def test_stored_outputs_that_cannot_be_read_are_a_store_error(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    path = tmp_path / "runs.db"
    with trio.fail_after(60):
        await trioflow.run_async(cubes, {"n": 3}, store=trioflow.SQLiteStore(path), run_id="r")
        conn = sqlite3.connect(path)
        with conn:
            conn.execute("UPDATE nodes SET outputs = '{\"out\":' WHERE node_id = 'cube_2'")
        conn.close()
        for row_by_row in (False, True):
            monkeypatch.setattr("trioflow._sqlite._JSON_AGGREGATES", not row_by_row)
            calls.clear()
            with pytest.raises(trioflow.StoreError, match="outputs of run 'r' cannot be read"):
                await trioflow.run_async(
                    cubes, {"n": 3}, store=trioflow.SQLiteStore(path), run_id="r", resume=True
                )
            assert calls == Counter()
            # The failed resume covered no committed row (a CANCELLED one, say): still there.
            assert set(trioflow.SQLiteStore(path).load("r").states().values()) == {NodeState.DONE}


@trioflow.graph_fn(name="cubed", outputs=["ys"])
async def cubed(xs: list[int]) -> list[int]:
    return [r["out"] for r in await trioflow.map(cube, xs)]


@trioflow.graphify(name="inner", outputs=["total"])
def inner(xs: Any) -> Any:
    return tabulate(xs=[cube(i=xs[i]).out for i in range(3)]).total


@trioflow.tool(outputs=["out"])
async def finish(a: int, b: list[int]) -> int:
    calls["finish"] += 1
    if "finish" in broken:
        raise RuntimeError("finish broke")
    return a + sum(b)


@trioflow.graphify(name="outer", outputs=["out"])
def outer(vals: Any) -> Any:
    d = cubed(xs=vals)
    m = trioflow.map(cube, vals)
    return finish(a=inner(xs=d.ys).total, b=m.out).out


async def test_resume_reuses_nested_graphs_and_map_items_from_every_store(
    any_store: trioflow.RunStore,
) -> None:
    broken.add("finish")
    with trio.fail_after(60):
        with pytest.raises(trioflow.NodeFailed):
            await trioflow.run_async(outer, {"vals": [1, 2, 3]}, store=any_store, run_id="r")
        first = Counter(calls)
        broken.clear()
        result = await trioflow.run_async(
            outer, {"vals": [1, 2, 3]}, store=any_store, run_id="r", resume=True, record=True
        )
    assert result.outputs == {"out": (1 + 8**3 + 27**3) + (1 + 8 + 27)}
    assert calls - first == Counter({"finish": 1})  # only the node that failed ran again
    nodes = result.record.nodes
    assert {"cubed_1.cube_1", "inner_1.cube_3", "map_1.cube_2"} <= set(nodes)
    assert all(rec.attempts == 0 for node, rec in nodes.items() if "." in node)  # inner nodes
    assert any_store.load("r").states() == result.record.states()


@trioflow.tool(outputs=["total"])
async def add_up(xs: list[int]) -> int:
    calls["add_up"] += 1
    return sum(xs)


@trioflow.graphify(outputs=["total"])
def cube_total(n: int) -> Any:
    return add_up(xs=[cube(i=i).out for i in range(n)]).total


@pytest.mark.parametrize("why", ["too big to join", "no JSON functions"])
async def test_a_stored_run_sqlite_cannot_join_is_read_row_by_row(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, why: str
) -> None:
    import sqlite3

    import trioflow._sqlite

    store = trioflow.SQLiteStore(tmp_path / "runs.db")
    with trio.fail_after(60):
        await trioflow.run_async(cube_total, {"n": 40}, store=store, run_id="r")
        if why == "too big to join":  # 40 outputs joined are longer than this; each is not
            assert store._writer is not None
            store._writer.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 200)
        else:
            query = trioflow._sqlite._RESUME.replace("json_group_array", "no_such_function")
            monkeypatch.setattr("trioflow._sqlite._RESUME", query)
        calls.clear()
        result = await trioflow.run_async(
            cube_total, {"n": 40}, store=store, run_id="r", resume=True, record=True
        )
    assert result.outputs == {"total": sum(i**3 for i in range(40))} and calls == Counter()
    assert all(rec.attempts == 0 for rec in result.record.nodes.values())


@trioflow.tool(outputs=["n"])
async def ticket(queue: str) -> int:
    calls[f"ticket:{queue}"] += 1
    return calls[f"ticket:{queue}"]  # another value each time: replay must keep the order


async def test_replay_returns_equal_calls_outputs_in_the_order_they_ran_from_every_store(
    any_store: trioflow.RunStore,
) -> None:
    @trioflow.graph_fn(name="tickets", outputs=["got"])
    async def tickets() -> list[int]:
        return [(await ticket(queue="a"))["n"] for _ in range(12)]  # ids ticket_1..ticket_12

    @trioflow.graph_fn(name="tickets", outputs=["got"])
    async def edited() -> list[int]:
        first = await ticket(queue="b")  # a new call first: every id shifts by one
        return [first["n"]] + [(await ticket(queue="a"))["n"] for _ in range(13)]

    with trio.fail_after(60):
        assert await trioflow.run_async(tickets, store=any_store, run_id="r") == {
            "got": list(range(1, 13))
        }
        again = await trioflow.run_async(edited, store=any_store, run_id="r", resume=True)
    assert again == {"got": [1, *range(1, 14)]}  # the 12 stored in their order, then a new one
    assert calls == Counter({"ticket:a": 13, "ticket:b": 1})
