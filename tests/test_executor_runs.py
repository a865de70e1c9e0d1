"""Remote nodes behave like local ones: through `trioflow.run` on "process" and "ray".

Capacity and limits are held while the remote work runs, retries and per-attempt timeouts
apply, a cancelled run stops the remote work, exceptions come back as the `__cause__` of
`NodeFailed` with their own class, and what cannot be shipped fails before anything starts.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pathlib
import pickle
import time
from collections.abc import AsyncIterator

import pytest
import trio

import trioflow
from trioflow import NodeState

KEYS = ["process", "ray"]


@pytest.fixture(params=KEYS)
def key(request: pytest.FixtureRequest) -> str:
    if request.param == "ray":
        request.getfixturevalue("ray_cluster")
    return str(request.param)


class PaymentDeclined(Exception):
    pass


class TwoPartError(Exception):
    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"{code}/{detail}")


def nap(seconds: float) -> None:
    time.sleep(seconds)


@contextlib.asynccontextmanager
async def warm_runtime(key: str) -> AsyncIterator[None]:
    """A runtime whose `key` executor already has two workers up (a process worker takes
    a second or more to start on a loaded machine; timeouts in these tests are about the work,
    not about starting workers)."""
    ex = trioflow.ProcessExecutor(max_workers=2) if key == "process" else trioflow.RayExecutor()
    warm_up = trioflow.tool(outputs=["y"], name="nap", executor=key)(nap)

    @trioflow.graph_fn(name="warm", outputs=["y"])
    async def warm() -> None:
        await trioflow.gather(warm_up(seconds=0.3), warm_up(seconds=0.3))

    async with trioflow.open_runtime(executors={key: ex}):
        await trioflow.run_async(warm)
        yield


def tools_on(key: str) -> dict[str, trioflow.Tool]:
    """The same tools on executor `key` (closures: they ship by value with cloudpickle)."""

    @trioflow.tool(outputs=["pid", "y"], executor=key)
    def square(x: int) -> dict:
        return {"pid": os.getpid(), "y": x * x}

    @trioflow.tool(outputs=["y"], executor=key)
    async def async_inc(x: int) -> int:
        await trio.sleep(0.001)  # a Trio run of its own, on the worker
        return x + 1

    @trioflow.tool(outputs=["y"], executor=key)
    def decline(card: str) -> None:
        raise PaymentDeclined(card, 402)

    @trioflow.tool(outputs=["y"], executor=key)
    def two_part() -> None:
        raise TwoPartError(7, "stays remote")

    @trioflow.tool(outputs=["y"], executor=key, retry=trioflow.Retry(attempts=3))
    def flaky(counter: str) -> int:
        path = pathlib.Path(counter)
        n = int(path.read_text()) + 1 if path.exists() else 1
        path.write_text(str(n))
        if n < 3:
            raise ConnectionError(f"attempt {n}")
        return n

    @trioflow.tool(outputs=["y"], executor=key, timeout=1.0, retry=trioflow.Retry(attempts=2))
    def stuck(started: str, done: str) -> None:
        with open(started, "a") as f:
            f.write("x")
        for _ in range(500):
            time.sleep(0.01)
        pathlib.Path(done).write_text("never")

    @trioflow.tool(outputs=["y"], executor=key, limits=["cpu"])
    def interval(seconds: float) -> tuple[float, float]:
        begin = time.time()
        time.sleep(seconds)
        return (begin, time.time())

    @trioflow.tool(outputs=["y"], executor=key)
    def slow(started: str, done: str) -> None:
        pathlib.Path(started).write_text(str(os.getpid()))
        for _ in range(300):
            time.sleep(0.01)
        pathlib.Path(done).write_text("never")

    return {t.name: t for t in locals().values() if isinstance(t, trioflow.Tool)}


async def test_results_and_the_record(key: str) -> None:
    t = tools_on(key)

    @trioflow.graph_fn(name="squares", outputs=["ys", "pids"])
    async def squares(xs: list[int]) -> dict:
        got = await trioflow.gather(*(t["square"](x=x) for x in xs))
        inc = await t["async_inc"](x=1)
        return {"ys": [g["y"] for g in got] + [inc["y"]], "pids": {g["pid"] for g in got}}

    with trio.fail_after(120):
        result = await trioflow.run_async(squares, {"xs": [1, 2, 3]}, record=True)
    assert result.outputs["ys"] == [1, 4, 9, 2]
    assert os.getpid() not in result.outputs["pids"]
    nodes = result.record.nodes
    assert {n.executor for n in nodes.values()} == {key}
    assert all(n.state is NodeState.DONE for n in nodes.values())


async def test_exception_is_the_cause_of_node_failed_with_its_class(key: str) -> None:
    t = tools_on(key)

    @trioflow.graph_fn(name="pay", outputs=["y"])
    async def pay() -> None:
        await t["decline"](card="4242")

    with trio.fail_after(120):
        with pytest.raises(trioflow.NodeFailed) as info:
            await trioflow.run_async(pay)
    cause = info.value.__cause__
    assert type(cause) is PaymentDeclined
    assert cause.args == ("4242", 402)
    assert info.value.node_id == "decline_1"
    assert info.value.record.nodes["decline_1"].error.type == "PaymentDeclined"


async def test_an_exception_that_cannot_come_back_is_a_remote_error(key: str) -> None:
    t = tools_on(key)

    @trioflow.graph_fn(name="g", outputs=["y"])
    async def g() -> None:
        await t["two_part"]()

    with trio.fail_after(120):
        with pytest.raises(trioflow.NodeFailed) as info:
            await trioflow.run_async(g)
    cause = info.value.__cause__
    assert type(cause) is trioflow.RemoteError
    assert str(cause) == "TwoPartError: 7/stays remote"
    assert "two_part" in cause.remote_traceback


async def test_retries_run_again_on_the_executor(key: str, tmp_path) -> None:
    t = tools_on(key)
    counter = tmp_path / "counter"

    @trioflow.graph_fn(name="g", outputs=["y"])
    async def g(counter: str) -> int:
        return (await t["flaky"](counter=counter))["y"]

    with trio.fail_after(120):
        result = await trioflow.run_async(g, {"counter": str(counter)}, record=True)
    assert result.outputs == {"y": 3}
    assert result.record.nodes["flaky_1"].attempts == 3


async def test_a_per_attempt_timeout_stops_each_attempt(key: str, tmp_path) -> None:
    t = tools_on(key)
    started, done = tmp_path / "started", tmp_path / "done"

    @trioflow.graph_fn(name="g", outputs=["y"])
    async def g(started: str, done: str) -> None:
        await t["stuck"](started=started, done=done)

    with trio.fail_after(120):
        async with warm_runtime(key):  # the timeout is about the work, not a worker's start
            began = time.perf_counter()
            with pytest.raises(trioflow.NodeFailed) as info:
                await trioflow.run_async(g, {"started": str(started), "done": str(done)})
    elapsed = time.perf_counter() - began
    assert type(info.value.__cause__) is trio.TooSlowError
    assert started.read_text() == "xx"  # two attempts, each stopped at its timeout
    assert elapsed < 5.0 - 0.5  # far less than one attempt's full 5 s
    await trio.sleep(5.0 - elapsed + 0.5)
    assert not done.exists()


async def test_a_run_timeout_stops_the_remote_work(key: str, tmp_path) -> None:
    t = tools_on(key)
    started, done = tmp_path / "started", tmp_path / "done"

    @trioflow.graph_fn(name="g", outputs=["y"])
    async def g(started: str, done: str) -> None:
        await t["slow"](started=started, done=done)

    with trio.fail_after(120):
        async with warm_runtime(key):
            with pytest.raises(trioflow.RunCancelled) as info:
                await trioflow.run_async(
                    g, {"started": str(started), "done": str(done)}, timeout=1.5
                )
    assert info.value.record.nodes["slow_1"].state is NodeState.CANCELLED
    assert started.exists()
    await trio.sleep(3.5)
    assert not done.exists()


async def test_limits_are_held_while_remote_work_runs(key: str) -> None:
    t = tools_on(key)

    @trioflow.graph_fn(name="g", outputs=["spans"], max_concurrency=4)
    async def g() -> list:
        got = await trioflow.gather(*(t["interval"](seconds=0.3) for _ in range(3)))
        return [r["y"] for r in got]

    with trio.fail_after(120):
        async with trioflow.open_runtime(limits={"cpu": 1}):
            spans = await trioflow.run_async(g)
    spans = sorted(spans["spans"])
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))  # one at a time


# -- checked before anything starts ----------------------------------------------------------


async def test_a_trio_object_in_a_graph_fn_call_fails_before_the_node_takes_a_slot(
    key: str,
) -> None:
    t = tools_on(key)
    seen = []

    @trioflow.graph_fn(name="g", outputs=["y"])
    async def g() -> None:
        try:
            await t["square"](x=trio.Event())
        except trioflow.ConfigError as exc:
            seen.append(str(exc))
            raise

    with trio.fail_after(60):
        with pytest.raises(trioflow.ConfigError) as info:
            await trioflow.run_async(g, record=True)
    assert type(info.value) is trioflow.ConfigError
    assert "'square_1'" in seen[0] and "trio.Event" in seen[0]


async def test_a_context_tool_cannot_go_to_another_process(key: str) -> None:
    @trioflow.tool(outputs=["y"], executor=key)
    def uses_context(x: int, context: trioflow.NodeContext) -> int:
        return x

    @trioflow.graph_fn(name="g", outputs=["y"])
    async def g() -> int:
        return (await uses_context(x=1))["y"]

    with trio.fail_after(60):
        with pytest.raises(trioflow.ConfigError, match=r"'uses_context_1'.*context"):
            await trioflow.run_async(g)


async def test_a_static_graph_is_checked_before_any_node_starts(key: str, tmp_path) -> None:
    t = tools_on(key)
    marker = tmp_path / "ran"

    @trioflow.tool(outputs=["y"])
    async def first(path: str) -> int:
        await trio.Path(path).write_text("ran")
        return 1

    lock = trio.Lock()

    @trioflow.graphify(name="static", outputs=["y"])
    def static(path):
        a = first(path=path)
        return t["square"](x=[a.y, {"lock": lock}]).y

    with trio.fail_after(60):
        with pytest.raises(trioflow.ConfigError, match=r"'square_1'.*trio.Lock"):
            await trioflow.run_async(static, {"path": str(marker)})
    assert not marker.exists()


async def test_a_context_tool_in_a_static_graph_fails_before_any_node_starts(key, tmp_path) -> None:
    marker = tmp_path / "ran"

    @trioflow.tool(outputs=["y"])
    async def first(path: str) -> int:
        await trio.Path(path).write_text("ran")
        return 1

    @trioflow.tool(outputs=["y"], executor=key)
    def uses_context(x: int, context: trioflow.NodeContext) -> int:
        return x

    @trioflow.graphify(name="static", outputs=["y"])
    def static(path):
        return uses_context(x=first(path=path).y).y

    with pytest.raises(trioflow.ConfigError, match=r"'uses_context_1'.*context"):
        await trioflow.run_async(static, {"path": str(marker)})
    assert not marker.exists()


def nbytes(data: object) -> int:
    return memoryview(data).nbytes  # type: ignore[arg-type]


async def test_a_large_buffer_argument_ships(key: str) -> None:
    # Large buffers (a numpy array, a PickleBuffer) reach the pickler's file as a PickleBuffer;
    # the check before submission used to refuse them as unpicklable.
    size = trioflow.tool(outputs=["n"], executor=key)(nbytes)

    @trioflow.graph_fn(name="g", outputs=["n"])
    async def g() -> int:
        return (await size(data=pickle.PickleBuffer(bytearray(300_000))))["n"]

    with trio.fail_after(120):
        assert await trioflow.run_async(g) == {"n": 300_000}


class Counted:
    """Counts how often it is pickled in this process (the workers only unpickle it)."""

    pickled = 0

    def __reduce__(self) -> tuple[type, tuple[()]]:
        Counted.pickled += 1
        return (Counted, ())


def type_name(v: object) -> str:
    return type(v).__name__


async def test_a_graph_fn_call_is_walked_once_by_the_check_then_once_to_ship() -> None:
    name_of = trioflow.tool(outputs=["y"], executor="process")(type_name)

    @trioflow.graph_fn(name="g", outputs=["y"])
    async def g() -> str:
        return (await name_of(v=Counted()))["y"]

    with trio.fail_after(120):
        async with trioflow.open_runtime(executors={"process": trioflow.ProcessExecutor(1)}):
            Counted.pickled = 0
            assert await trioflow.run_async(g) == {"y": "Counted"}
    # Once before the node takes a slot, once by trio-parallel to send it; not a third time
    # when the node starts with the very inputs that were just checked.
    assert Counted.pickled == 2


async def test_an_unknown_executor_key_fails_the_run_before_anything_starts(tmp_path) -> None:
    marker = tmp_path / "ran"

    @trioflow.tool(outputs=["y"])
    async def first(path: str) -> int:
        await trio.Path(path).write_text("ran")
        return 1

    @trioflow.tool(outputs=["y"], executor="gpu-farm")
    def remote(x: int) -> int:
        return x

    @trioflow.graphify(name="static", outputs=["y"])
    def static(path):
        return remote(x=first(path=path).y).y

    with pytest.raises(trioflow.ConfigError, match="gpu-farm"):
        await trioflow.run_async(static, {"path": str(marker)})
    assert not marker.exists()


# -- graphify on Ray: intermediates stay in the object store ---------------------------------

BLOB = 50_000_000


@trioflow.tool(outputs=["data", "tag"], executor="ray")
def make_blob(n: int) -> dict:
    return {"data": b"x" * n, "tag": "blob"}


@trioflow.tool(outputs=["size"], executor="ray")
def measure(data: bytes, tag: str) -> int:
    return len(data) + len(tag)


@trioflow.tool(outputs=["size"], executor="ray")
def total(sizes: list[int], parts: list[bytes]) -> int:
    return sum(sizes) + sum(len(p) for p in parts)


@trioflow.tool(outputs=["size"])
async def measure_here(data: bytes) -> int:
    return len(data)


@trioflow.graphify(name="on_ray", outputs=["size", "tag"])
def on_ray(n):
    blob = make_blob(n=n)
    a = measure(data=blob.data, tag=blob.tag)
    b = measure(data=blob.data, tag="")
    both = total(sizes=[a.size, b.size], parts=[blob.data])
    return {"size": both.size, "tag": blob.tag}


@trioflow.graphify(name="to_driver", outputs=["size"])
def to_driver(n):
    return measure_here(data=make_blob(n=n).data).size


@pytest.fixture
def fetched(ray_cluster, monkeypatch) -> list[int]:
    """Sizes of the values the driver fetched from Ray (a value it never fetches is not here)."""
    from trioflow._ray import RayExecutor

    sizes: list[int] = []
    original = RayExecutor.result

    async def result(self, ref):
        value = await original(self, ref)
        sizes.append(len(value) if isinstance(value, bytes | str | list) else 0)
        return value

    monkeypatch.setattr(RayExecutor, "result", result)
    return sizes


async def test_an_intermediate_passed_between_ray_nodes_stays_in_the_object_store(fetched) -> None:
    with trio.fail_after(120):
        result = await trioflow.run_async(on_ray, {"n": BLOB}, record=True)
    assert result.outputs == {"size": 3 * BLOB + 4, "tag": "blob"}  # computed on the workers
    assert result.record.nodes["make_blob_1"].executor == "ray"
    assert fetched and max(fetched) < 1000  # the 50 MB never came to this process

    fetched.clear()  # the control: a local reader needs the value here, so it is fetched
    with trio.fail_after(120):
        assert await trioflow.run_async(to_driver, {"n": BLOB}) == {"size": BLOB}
    assert max(fetched) == BLOB
