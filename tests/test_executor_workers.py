"""A ProcessExecutor drives trio-parallel's workers directly (`trioflow._workers`).

What that path must get right beyond the executor contract (run against it, and against
trio-parallel's own `run_sync`, in test_executors.py): messages larger than a pipe holds, a
worker that died while idle, a cancel that waits for the call, and the fallback.
"""

from __future__ import annotations

import os
import pathlib
import random
import signal
import time

import pytest
import trio

import trioflow
from trioflow import _process, _workers
from trioflow._workers import DirectWorkers

pytest.importorskip("trio_parallel")


def my_pid() -> int:
    return os.getpid()


def echo_twice(data: bytes) -> tuple[int, bytes]:
    return len(data), data + data


def write_then_sleep(started: str, done: str, seconds: float) -> None:
    pathlib.Path(started).write_text(str(os.getpid()))
    time.sleep(seconds)
    pathlib.Path(done).write_text("finished")


def gone(pid: int) -> bool:
    """Whether a process has exited (it may still wait to be reaped)."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


async def test_the_workers_are_driven_directly_unless_told_not_to(monkeypatch) -> None:
    async with trioflow.ProcessExecutor(max_workers=1) as ex:
        assert isinstance(ex._run_sync.__self__, DirectWorkers)
    monkeypatch.setattr(_process, "_DIRECT", False)
    async with trioflow.ProcessExecutor(max_workers=1) as ex:
        assert ex._run_sync == ex._context.run_sync
        assert await ex.run(pow, 2, 5) == 32


async def test_only_a_verified_trio_parallel_is_driven_directly(monkeypatch) -> None:
    async with trioflow.ProcessExecutor(max_workers=1) as ex:
        context = ex._context
        assert DirectWorkers.of(context) is not None
        assert DirectWorkers.of(object()) is None  # not a context with the expected internals
        monkeypatch.setattr(_workers, "VERIFIED", ("0.9.",))
        _workers._verified_version.cache_clear()
        try:
            assert DirectWorkers.of(context) is None  # a version not read and tested here
        finally:
            monkeypatch.undo()
            _workers._verified_version.cache_clear()


async def test_messages_larger_than_a_pipe_holds_go_both_ways() -> None:
    data = os.urandom(3 * 1024 * 1024)  # a pipe holds 64 KiB: many writes and reads each way
    with trio.fail_after(60):
        async with trioflow.ProcessExecutor(max_workers=2) as ex:
            async with trio.open_nursery() as nursery:  # two at once, on two workers
                got: list[tuple[int, bytes]] = []

                async def one() -> None:
                    got.append(await ex.run(echo_twice, data))

                nursery.start_soon(one)
                nursery.start_soon(one)
            assert got == [(len(data), data + data)] * 2
            assert await ex.run(pow, 3, 3) == 27  # and the workers are still in step


async def test_a_worker_that_died_while_idle_is_replaced() -> None:
    with trio.fail_after(60):
        async with trioflow.ProcessExecutor(max_workers=1) as ex:
            pid = await ex.run(my_pid)
            os.kill(pid, signal.SIGKILL)
            while not gone(pid):  # noqa: ASYNC110 (another process: no event to wait on)
                await trio.sleep(0.01)
            other = await ex.run(my_pid)  # its pipe is broken: the call takes a new worker
            assert other != pid
            assert await ex.run(my_pid) == other


async def test_without_kill_on_cancel_a_cancel_waits_for_the_call(tmp_path) -> None:
    started, done = tmp_path / "started", tmp_path / "done"
    with trio.fail_after(60):
        async with trioflow.ProcessExecutor(max_workers=1, kill_on_cancel=False) as ex:
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(ex.run, write_then_sleep, str(started), str(done), 0.5)
                    while not started.exists():  # noqa: ASYNC110
                        await trio.sleep(0.01)
                    scope.cancel()
            assert done.exists()  # the call ran to its end before the cancel returned
            assert await ex.run(my_pid) == int(started.read_text())  # the same worker, kept


def slow_square(x: int, seconds: float) -> int:
    time.sleep(seconds)
    return x * x


async def test_cancels_at_every_stage_leave_the_pool_consistent() -> None:
    """Calls cancelled while queued, while being sent, and while running, mixed with calls
    that finish: every finished call has its own answer, and the workers stay in step."""
    rng = random.Random(11)
    with trio.fail_after(120):
        async with trioflow.ProcessExecutor(max_workers=2) as ex:
            answers: dict[int, int] = {}
            cancelled = 0

            async def one(i: int) -> None:
                nonlocal cancelled
                with trio.move_on_after(rng.choice([0, 0.001, 0.01, 0.05, 1.0])) as scope:
                    answers[i] = await ex.run(slow_square, i, rng.choice([0, 0.002, 0.02]))
                cancelled += scope.cancelled_caught

            for _ in range(4):
                async with trio.open_nursery() as nursery:
                    for i in range(32):
                        nursery.start_soon(one, i)
            assert cancelled > 0 and answers  # both happened
            assert all(v == k * k for k, v in answers.items())
            got = [await ex.run(slow_square, i, 0) for i in range(8)]
            assert got == [i * i for i in range(8)]
