"""One contract, every executor: thread, process (trio-parallel) and Ray.

The same tests run against each executor driven directly (`async with ex: await ex.run(...)`).
Where the executors differ on purpose (a thread cannot be stopped), the test says so.
"""

from __future__ import annotations

import os
import pathlib
import threading
import time
from collections.abc import AsyncIterator

import pytest
import trio

import trioflow
from trioflow import ThreadExecutor, _executor, _process
from trioflow._shipping import shippable

# "process:run_sync": a ProcessExecutor that calls trio-parallel's own `run_sync`, as it does
# where it cannot drive the workers directly (see `trioflow._workers`); "thread:to_thread": a
# ThreadExecutor that calls `trio.to_thread.run_sync`, as it does where it cannot hand calls
# to Trio's threads directly (see `trioflow._threads`).
KINDS = ["thread", "thread:to_thread", "process", "process:run_sync", "ray"]


def make(kind: str, **options):
    if kind == "thread":
        return ThreadExecutor()
    if kind == "process":
        return trioflow.ProcessExecutor(**options)
    return trioflow.RayExecutor(**options)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    if request.param == "ray":
        request.getfixturevalue("ray_cluster")
    if request.param == "process:run_sync":
        request.getfixturevalue("monkeypatch").setattr(_process, "_DIRECT", False)
    if request.param == "thread:to_thread":
        request.getfixturevalue("monkeypatch").setattr(_executor, "DIRECT_THREADS", False)
    return str(request.param).split(":")[0]


@pytest.fixture
async def executor(kind: str) -> AsyncIterator[object]:
    async with make(kind) as ex:
        yield ex


def pid_alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie (read from /proc)."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def wait_for(predicate) -> None:
    """Poll for something another process does (no Trio event can cross the boundary)."""
    while not predicate():  # noqa: ASYNC110
        await trio.sleep(0.01)


# -- functions that run on the workers (module level, so the workers can import them) ------


def add(x: int, y: int = 0) -> int:
    return x + y


async def async_add(x: int, y: int) -> int:
    await trio.sleep(0.001)
    return x + y


class PaymentDeclined(Exception):
    """A user's exception class with ordinary args."""


class TwoPartError(Exception):
    """An exception whose __init__ does not take its own args: it cannot be unpickled."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"{code}/{detail}")


def fail_with(exc: Exception) -> None:
    raise exc


def fail_two_part() -> None:
    raise TwoPartError(7, "cannot come back")


def write_then_sleep(started: str, done: str, seconds: float) -> None:
    pathlib.Path(started).write_text(str(os.getpid()))
    time.sleep(seconds)
    pathlib.Path(done).write_text("the side effect after the cancel point")


def my_pid() -> int:
    return os.getpid()


# -- results ---------------------------------------------------------------------------------


async def test_returns_the_result(executor) -> None:
    with trio.fail_after(60):
        assert await executor.run(add, 1, y=2) == 3
        assert await executor.run(add, x=40, y=2) == 42


async def test_closures_and_lambdas_ship(executor) -> None:
    offset = 10
    with trio.fail_after(60):
        assert await executor.run(lambda v: v + offset, 5) == 15


async def test_async_def_runs_under_trio_on_the_worker(executor) -> None:
    with trio.fail_after(60):
        assert await executor.run(shippable(async_add), x=2, y=3) == 5


async def test_ships_is_declared(kind: str, executor) -> None:
    assert getattr(executor, "ships", False) is (kind != "thread")


async def test_runs_in_another_process_when_it_ships(kind: str, executor) -> None:
    with trio.fail_after(60):
        pid = await executor.run(my_pid)
    assert (pid != os.getpid()) is (kind != "thread")


# -- exceptions ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [KeyError("k", 1), PaymentDeclined("card 4242", 99), ZeroDivisionError("division by zero")],
    ids=["builtin-two-args", "user-class", "zero-division"],
)
async def test_exception_comes_back_as_its_own_class_with_its_args(executor, exc) -> None:
    with trio.fail_after(60):
        with pytest.raises(type(exc)) as info:
            await executor.run(fail_with, exc)
    assert type(info.value) is type(exc)  # no wrapper subclass (e.g. Ray's RayTaskError)
    assert info.value.args == exc.args


async def test_exception_that_cannot_come_back_is_a_remote_error(kind: str, executor) -> None:
    if kind == "thread":
        pytest.skip("nothing crosses a process boundary in a thread")
    with trio.fail_after(60):
        with pytest.raises(trioflow.RemoteError) as info:
            await executor.run(fail_two_part)
    err = info.value
    assert err.type_name == "TwoPartError"
    assert err.message == "7/cannot come back"
    assert str(err) == "TwoPartError: 7/cannot come back"
    assert "fail_two_part" in err.remote_traceback
    assert isinstance(err, trioflow.TrioflowError)


def unpicklable_result() -> object:
    return threading.Lock()


async def test_a_result_that_cannot_come_back_is_a_clear_error(kind: str, executor) -> None:
    if kind == "thread":
        pytest.skip("nothing is pickled in a thread")
    with trio.fail_after(60):
        with pytest.raises(TypeError, match="pickle") as info:
            await executor.run(unpicklable_result)
    assert any("could not" in note for note in getattr(info.value, "__notes__", []))


def die() -> None:
    os._exit(13)


async def test_a_worker_that_dies_fails_the_call_and_the_executor_goes_on(kind, executor) -> None:
    if kind == "thread":
        pytest.skip("a thread cannot die alone")
    with trio.fail_after(60):
        with pytest.raises(Exception) as info:
            await executor.run(die)
        assert not isinstance(info.value, trioflow.RemoteError)  # the executor's own error
        assert await executor.run(add, 2, 3) == 5


def exit_early() -> None:
    raise SystemExit(3)


async def test_sys_exit_in_a_worker_is_an_error_not_an_exit(kind: str, executor) -> None:
    if kind == "thread":
        pytest.skip("a thread's SystemExit is the thread's business")
    with trio.fail_after(60):
        with pytest.raises(trioflow.RemoteError) as info:
            await executor.run(exit_early)
    assert str(info.value) == "SystemExit: 3"  # fails the node; does not exit this process
    with trio.fail_after(60):
        assert await executor.run(add, 1, 2) == 3  # the executor still works


# -- cancellation ----------------------------------------------------------------------------

# The most a cancelled call may take to return, per executor (measured: well under these).
PROMPT = {"thread": None, "process": 1.0, "ray": 2.0}


async def test_cancelling_a_running_call_stops_the_work(kind: str, executor, tmp_path) -> None:
    started, done = tmp_path / "started", tmp_path / "done"
    seconds = 1.5
    scope = trio.CancelScope()
    returned: list[float] = []

    async def call() -> None:
        with scope:
            await executor.run(write_then_sleep, str(started), str(done), seconds)
        returned.append(time.perf_counter())

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            await wait_for(started.exists)
            began = time.perf_counter()
            scope.cancel()
    waited = returned[0] - began
    if PROMPT[kind] is None:
        # A thread cannot be stopped: the call is waited for (never abandoned), so its side
        # effect has happened by the time it returns.
        assert done.exists()
        assert waited > seconds / 2
        return
    assert waited < PROMPT[kind], f"{kind}: {waited:.3f}s from cancel to return"
    if kind == "process":  # the worker was killed and reaped
        assert not pid_alive(int(started.read_text()))
    # Past the moment the work would have finished, its side effect has still not happened.
    await trio.sleep(seconds + 0.5 - (time.perf_counter() - began))
    assert not done.exists()


async def test_a_deadline_around_a_call_stops_it(kind: str, executor, tmp_path) -> None:
    if kind == "thread":
        pytest.skip("covered above: a thread runs to its end")
    started, done = tmp_path / "started", tmp_path / "done"
    with trio.fail_after(60):
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(executor.run, write_then_sleep, str(started), str(done), 1.5)
                await wait_for(started.exists)
                scope.deadline = trio.current_time() + 0.3  # expires while the work runs
    assert scope.cancelled_caught
    await trio.sleep(2.0)
    assert not done.exists()


async def test_queued_calls_are_dropped_on_cancel(kind: str, tmp_path) -> None:
    if kind == "thread":
        pytest.skip("trio.to_thread has no queue of its own here")
    # One call at a time: a process pool of one, or a Ray task that needs the whole cluster.
    ex = make(kind, max_workers=1) if kind == "process" else make(kind, num_cpus=2)
    files = [(tmp_path / f"started{i}", tmp_path / f"done{i}") for i in range(3)]
    async with ex:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for started, done in files:
                    nursery.start_soon(ex.run, write_then_sleep, str(started), str(done), 1.0)
                await wait_for(lambda: any(s.exists() for s, _ in files))
                nursery.cancel_scope.cancel()
        await trio.sleep(1.5)
    assert sum(s.exists() for s, _ in files) == 1  # the two queued never started
    assert not any(d.exists() for _, d in files)


# -- processes do not outlive the executor ---------------------------------------------------


async def test_no_worker_process_outlives_the_process_executor(tmp_path) -> None:
    started, done = tmp_path / "started", tmp_path / "done"
    with trio.fail_after(60):
        async with trioflow.ProcessExecutor(max_workers=2) as ex:
            async with trio.open_nursery() as nursery:
                pids = [await ex.run(my_pid) for _ in range(2)]
                nursery.start_soon(ex.run, write_then_sleep, str(started), str(done), 5.0)
                await wait_for(started.exists)
                pids.append(int(started.read_text()))
                assert all(pid_alive(p) for p in pids)
                nursery.cancel_scope.cancel()
    assert not any(pid_alive(p) for p in pids)


# -- bad input -------------------------------------------------------------------------------


async def test_run_before_enter_is_a_clear_error(kind: str) -> None:
    if kind == "thread":
        pytest.skip("the thread executor needs no set-up")
    with pytest.raises(trioflow.TrioflowError, match="entered"):
        await make(kind).run(add, 1)


def test_bad_process_executor_arguments() -> None:
    with pytest.raises(trioflow.ConfigError, match="max_workers"):
        trioflow.ProcessExecutor(max_workers=0)
    with pytest.raises(trioflow.ConfigTypeError, match="max_workers"):
        trioflow.ProcessExecutor(max_workers="4")  # type: ignore[arg-type]
    with pytest.raises(trioflow.ConfigTypeError, match="kill_on_cancel"):
        trioflow.ProcessExecutor(kill_on_cancel=None)  # type: ignore[arg-type]


def test_bad_ray_executor_arguments() -> None:
    with pytest.raises(trioflow.ConfigError, match="num_cpu"):
        trioflow.RayExecutor(num_cpu=1)
    with pytest.raises(trioflow.ConfigError, match="num_gpus"):
        trioflow.RayExecutor(num_gpus=-1)
    with pytest.raises(trioflow.ConfigTypeError, match="resources"):
        trioflow.RayExecutor(resources=["gpu"])
    with pytest.raises(trioflow.ConfigTypeError, match="address"):
        trioflow.RayExecutor(address=6379)  # type: ignore[arg-type]


async def test_a_process_call_cancelled_before_it_starts_leaves_the_worker_alone() -> None:
    with trio.fail_after(60):
        async with trioflow.ProcessExecutor(max_workers=1) as ex:
            before = await ex.run(my_pid)
            with trio.CancelScope() as scope:
                scope.cancel()
                await ex.run(my_pid)
            assert scope.cancelled_caught
            assert await ex.run(my_pid) == before  # not killed and replaced


async def test_a_ray_wait_gives_the_outcome_as_a_future_and_result_unwraps_it(ray_cluster) -> None:
    import ray

    class OnlyFuture:
        """An object ref of a Ray without `ObjectRef._on_completed`: only `future()`."""

        def __init__(self, ref: object) -> None:
            self.future = ref.future  # type: ignore[attr-defined]

    with trio.fail_after(60):
        async with trioflow.RayExecutor() as ex:
            future = await ex.wait(ex.submit(add, 30, y=2))
            assert future.done() and future.result() == 32
            future = await ex.wait(ex.submit(fail_with, PaymentDeclined("card")))
            with pytest.raises(ray.exceptions.RayTaskError, match="card"):
                future.result()
            with pytest.raises(PaymentDeclined, match="card"):
                await ex.result(ex.submit(fail_with, PaymentDeclined("card")))
            # Through the public future instead of Ray's completion callback: the same.
            assert await ex.result(OnlyFuture(ex.submit(add, 3, y=4))) == 7
            with pytest.raises(PaymentDeclined, match="again"):
                await ex.result(OnlyFuture(ex.submit(fail_with, PaymentDeclined("again"))))
