"""A ThreadExecutor hands calls to Trio's worker threads directly (`trioflow._threads`).

What that path must keep of `trio.to_thread.run_sync`'s contract beyond the executor contract
(run against it, and against `to_thread` itself, in test_executors.py): `trio.from_thread`
inside the call, context variables, sniffio's view, Trio's count of running threads, a cancel
that the thread can see, `max_threads`, and the fallback. Each test runs on both paths.
"""

from __future__ import annotations

import contextvars
import threading
import time
import types

import pytest
import sniffio
import trio
import trio.testing

import trioflow
from trioflow import ThreadExecutor, _executor, _threads


@pytest.fixture(params=["direct", "to_thread"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "to_thread":
        monkeypatch.setattr(_executor, "DIRECT_THREADS", False)
    return str(request.param)


async def test_the_direct_path_is_used_where_trio_is_verified(path: str) -> None:
    with trio.fail_after(30):
        async with ThreadExecutor() as ex:
            assert ex._direct is (path == "direct")
            assert await ex.run(pow, 2, 5) == 32
    verified = _threads.VERIFIED
    _threads.VERIFIED = ("0.0.",)
    _threads.available.cache_clear()
    try:
        with trio.fail_after(30):
            async with ThreadExecutor() as ex:
                assert not ex._direct  # another Trio release: `trio.to_thread.run_sync`
                assert await ex.run(pow, 2, 5) == 32
    finally:
        _threads.VERIFIED = verified
        _threads.available.cache_clear()
    internals = _threads._t
    _threads._t = types.SimpleNamespace()  # a verified release without the internals used
    try:
        assert not _threads.available()
    finally:
        _threads._t = internals
        _threads.available.cache_clear()
    assert _threads.available()


async def test_from_thread_reaches_the_waiting_task(path: str) -> None:
    seen: list[object] = []

    async def in_trio(x: int) -> int:
        await trio.lowlevel.checkpoint()
        seen.append(trio.lowlevel.current_task())
        return x + 1

    def call(x: int) -> tuple[int, int]:
        return trio.from_thread.run(in_trio, x), trio.from_thread.run_sync(lambda: x * 10)

    with trio.fail_after(30):
        async with ThreadExecutor() as ex:
            assert await ex.run(call, 4) == (5, 40)
            # run in the task that waits, as Trio does
            assert seen == [trio.lowlevel.current_task()]


async def test_a_call_sees_its_context_and_not_the_event_loop(path: str) -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    def call() -> tuple[str, str]:
        got = var.get()
        var.set("thread")  # (a copy: never seen by the caller)
        try:
            sniffio.current_async_library()
        except sniffio.AsyncLibraryNotFoundError:
            library = "none"
        else:
            library = "some"
        return got, library

    var.set("caller")
    with trio.fail_after(30):
        async with ThreadExecutor() as ex:
            assert await ex.run(call) == ("caller", "none")
    assert var.get() == "caller"


async def test_a_cancelled_call_is_waited_for_and_can_see_the_cancel(path: str) -> None:
    started = threading.Event()
    stop_seen = threading.Event()

    def polite() -> str:
        started.set()
        for _ in range(30_000):  # (a thread can only poll; ~30 s at most)
            try:
                trio.from_thread.check_cancelled()
            except trio.Cancelled:
                stop_seen.set()
                return "stopped"
            time.sleep(0.001)
        return "never cancelled"

    async def cancel_once_started(scope: trio.CancelScope) -> None:
        await trio.to_thread.run_sync(started.wait, 30)
        scope.cancel()

    got: list[str] = []
    with trio.fail_after(30):
        async with ThreadExecutor() as ex:
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(cancel_once_started, scope)
                    got.append(await ex.run(polite))  # waited for: its result comes back
                    await trio.lowlevel.checkpoint()  # and the task is cancelled
            assert scope.cancelled_caught
    assert got == ["stopped"]
    assert stop_seen.is_set()  # the call ran until it saw the cancel


async def test_trio_counts_the_running_threads(path: str) -> None:
    release = threading.Event()
    started = threading.Event()

    def held() -> int:
        started.set()
        release.wait(30)
        return 7

    with trio.fail_after(30):
        async with ThreadExecutor() as ex, trio.open_nursery() as nursery:
            nursery.start_soon(ex.run, held)
            await trio.to_thread.run_sync(started.wait, 30)
            assert trio.testing.active_thread_count() == 1
            assert _executor.threads_waited_on() == 1
            release.set()
            await trio.testing.wait_all_threads_completed()
            assert trio.testing.active_thread_count() == 0
        assert _executor.threads_waited_on() == 0


async def test_errors_come_back_as_raised(path: str) -> None:
    def fail(message: str) -> None:
        raise KeyError(message)

    async def not_sync() -> None:
        return None

    with trio.fail_after(30):
        async with ThreadExecutor() as ex:
            with pytest.raises(KeyError, match="boom"):
                await ex.run(fail, "boom")
            with pytest.raises(TypeError, match="appears to be asynchronous"):
                await ex.run(not_sync)
            with trio.CancelScope() as scope:
                scope.cancel()
                await ex.run(pytest.fail, "a call cancelled before it starts never runs")
            assert scope.cancelled_caught


async def test_a_thread_executor_holds_to_max_threads(path: str) -> None:
    lock = threading.Lock()
    running = [0, 0]  # now, most at once
    pair = threading.Barrier(2, timeout=30)  # two must be in at once, or this fails

    def enter(i: int) -> int:
        with lock:
            running[0] += 1
            running[1] = max(running)
        pair.wait()
        with lock:
            running[0] -= 1
        return i

    got: list[int] = []

    async def one(ex: ThreadExecutor, i: int) -> None:
        got.append(await ex.run(enter, i))

    with trio.fail_after(60):
        async with ThreadExecutor(max_threads=2) as ex, trio.open_nursery() as nursery:
            for i in range(6):
                nursery.start_soon(one, ex, i)
    assert running[1] == 2
    assert sorted(got) == list(range(6))


async def test_a_thread_node_runs_on_the_direct_path(path: str) -> None:
    names: set[str] = set()

    @trioflow.tool(outputs=["y"])
    def double(x: int) -> int:
        names.add(threading.current_thread().name)
        return trio.from_thread.run_sync(lambda: x * 2)

    @trioflow.graph_fn
    async def twice(n: int) -> list[int]:
        return [r["y"] for r in await trioflow.gather(*(double(x=i) for i in range(n)))]

    with trio.fail_after(30):
        result = await trioflow.run_async(twice, {"n": 20}, max_concurrency=4)
    assert result == {"result": [2 * i for i in range(20)]}
    # The direct path leaves the thread cache's names; `to_thread` names a thread per call.
    prefix = "Trio thread " if path == "direct" else "trioflow: "
    assert names and all(name.startswith(prefix) for name in names), names
