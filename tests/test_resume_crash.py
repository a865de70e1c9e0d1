"""Crashes that really crash: a 2,021-node run killed half-way, then resumed.

The child (`tests/crash_run.py`) logs every node right before its tool returns, so the test
knows which nodes ran in which attempt. What the store says was committed at the crash must not
run again; everything else must; the final outputs must be an uninterrupted run's.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
import trio

import trioflow

ROOT = pathlib.Path(__file__).parent.parent
CHILD = pathlib.Path(__file__).parent / "crash_run.py"
N, GROUP = 1900, 19
ALL_KEYS = (
    {f"square:{i}" for i in range(N)} | {f"add:{k}" for k in range(0, N, GROUP)} | {"add:total"}
)
EXPECTED = {
    "total": sum(i * i for i in range(N)),
    "parts": [sum(i * i for i in range(k, k + GROUP)) for k in range(0, N, GROUP)],
}


def _env(log: pathlib.Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "CRASH_LOG": str(log)}


def _child(
    store: pathlib.Path, kind: str, log: pathlib.Path, *resume: str
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(CHILD), str(store), "nightly", kind, *resume],
        cwd=ROOT,
        env=_env(log),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _keys(log: pathlib.Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def _wait_for(log: pathlib.Path, count: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while len(_keys(log)) < count:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the child did not get half-way in 60 s"
        time.sleep(0.005)


def _committed(store_path: pathlib.Path) -> dict[str, dict[str, object]]:
    """Node id → outputs of every node the store holds as DONE."""
    store = trioflow.SQLiteStore(store_path)
    record = store.load("nightly")
    outputs = store.outputs("nightly")
    done = {  # tool nodes: nested graphs and maps keep no outputs of their own
        n
        for n, r in record.nodes.items()
        if r.state is trioflow.NodeState.DONE and r.tool in ("square", "add")
    }
    assert set(outputs) == done
    return outputs


def _keys_of(store_path: pathlib.Path, outputs: dict[str, dict[str, object]]) -> set[str]:
    """The log keys of stored nodes: squares by their output, sums by their node ids' log."""
    # Each tool logs "key" and its node id lands in the store; map through the outputs, which
    # identify squares uniquely (i*i) and sums by position among the add nodes of the log.
    keys = set()
    record = trioflow.SQLiteStore(store_path).load("nightly")
    for node_id, out in outputs.items():
        tool = record.nodes[node_id].tool
        if tool == "square":
            keys.add(f"square:{math.isqrt(int(out['out']))}")  # type: ignore[call-overload]
        elif tool == "add":
            keys.add(_add_key(int(out["out"])))  # type: ignore[call-overload]
    return keys


_PART_SUMS = {sum(i * i for i in range(k, k + GROUP)): f"add:{k}" for k in range(0, N, GROUP)}


def _add_key(value: int) -> str:
    return _PART_SUMS.get(value, "add:total")


def _resume(store: pathlib.Path, kind: str, log: pathlib.Path) -> dict[str, object]:
    proc = _child(store, kind, log, "--resume")
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()  # never leave a child behind when the test fails
    assert proc.returncode == 0, err
    result: dict[str, object] = json.loads(out)
    return result


@pytest.mark.parametrize("kind", ["graphify", "graph_fn"])
def test_sigkill_half_way_then_resume_reruns_only_what_was_not_committed(
    tmp_path: pathlib.Path, kind: str
) -> None:
    store, first, second = tmp_path / "runs.db", tmp_path / "1.log", tmp_path / "2.log"
    proc = _child(store, kind, first)
    _wait_for(first, len(ALL_KEYS) // 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    ran_first = set(_keys(first))
    assert len(ran_first) < len(ALL_KEYS)  # really half-way
    committed = _committed(store)
    committed_keys = _keys_of(store, committed)
    assert len(committed_keys) == len(committed)
    assert committed_keys <= ran_first
    assert len(committed_keys) >= len(ALL_KEYS) // 3  # commits keep up (~50 ms behind)

    outputs = _resume(store, kind, second)

    ran_second = _keys(second)
    assert Counter(ran_second).most_common(1)[0][1] == 1  # each node at most once
    assert set(ran_second) == ALL_KEYS - committed_keys  # nothing committed ran again
    assert outputs == EXPECTED
    final = _committed(store)
    assert _keys_of(store, final) == ALL_KEYS
    if kind == "graphify":  # same node ids: every committed output is still there, unchanged
        assert {n: final[n] for n in committed} == committed


def test_sigint_half_way_commits_what_finished_and_resume_finishes(tmp_path: pathlib.Path) -> None:
    store, first, second = tmp_path / "runs.db", tmp_path / "1.log", tmp_path / "2.log"
    proc = _child(store, "graphify", first)
    _wait_for(first, len(ALL_KEYS) // 2, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    ran_first = set(_keys(first))
    committed_keys = _keys_of(store, _committed(store))
    # Everything that finished was committed on the way out (at most the nodes interrupted
    # between their log line and their return are missing).
    assert committed_keys <= ran_first
    assert len(ran_first - committed_keys) <= 8
    record = trioflow.SQLiteStore(store).load("nightly")
    assert trioflow.NodeState.RUNNING not in set(record.states().values())
    assert trioflow.SQLiteStore(store).runs()[0].state is trioflow.NodeState.CANCELLED

    assert _resume(store, "graphify", second) == EXPECTED
    assert set(_keys(second)) == ALL_KEYS - committed_keys


async def test_a_cancelled_run_commits_every_completion_and_resume_finishes(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import crash_run

    log = tmp_path / "1.log"
    monkeypatch.setenv("CRASH_LOG", str(log))
    store = trioflow.SQLiteStore(tmp_path / "runs.db")
    with trio.fail_after(60):
        with trio.CancelScope() as scope:

            async def watch() -> None:  # polls a file the child tools write
                while len(_keys(log)) < len(ALL_KEYS) // 2:  # noqa: ASYNC110
                    await trio.sleep(0.005)
                scope.cancel(reason="half-way")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                await trioflow.run_async(
                    crash_run.static_sums,
                    inputs={"n": N},
                    store=store,
                    run_id="nightly",
                    max_concurrency=8,
                )
    assert scope.cancelled_caught
    committed_keys = _keys_of(tmp_path / "runs.db", _committed(tmp_path / "runs.db"))
    assert committed_keys == set(_keys(log))  # every completion made it to the file

    monkeypatch.setenv("CRASH_LOG", str(tmp_path / "2.log"))
    with trio.fail_after(60):
        outputs = await trioflow.run_async(
            crash_run.static_sums,
            inputs={"n": N},
            store=store,
            run_id="nightly",
            resume=True,
            max_concurrency=8,
        )
    assert outputs == EXPECTED
    assert set(_keys(tmp_path / "2.log")) == ALL_KEYS - committed_keys


def test_two_processes_running_graphs_into_one_store_lose_nothing(tmp_path: pathlib.Path) -> None:
    store = tmp_path / "shared.db"
    trioflow.SQLiteStore(store).close()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CRASH_DELAY": "0"}
    script = (
        "import sys, trioflow, crash_run\n"
        "store = trioflow.SQLiteStore(sys.argv[1])\n"
        "for r in range(3):\n"
        "    trioflow.run(crash_run.static_sums, inputs={'n': 300}, store=store,\n"
        "                 run_id=f'{sys.argv[2]}-{r}', max_concurrency=16)\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(store), name],
            cwd=CHILD.parent,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b")
    ]
    try:
        for p in procs:
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, err
    finally:
        for p in procs:
            p.kill()
    shared = trioflow.SQLiteStore(store)
    runs = shared.runs()
    assert sorted(r.run_id for r in runs) == [f"{n}-{r}" for n in "ab" for r in range(3)]
    for info in runs:
        assert info.state is trioflow.NodeState.DONE
        record = shared.load(info.run_id)
        assert len(record.nodes) == 300 + 16 + 1
        assert set(record.states().values()) == {trioflow.NodeState.DONE}
        outputs = shared.outputs(info.run_id)
        assert outputs["add_17"] == {"out": sum(i * i for i in range(300))}
