"""Service teardown under faults: bounded, ordered, never losing an error (issue 9).

Every test runs in virtual time inside `fail_after`, so a teardown that hangs fails the test
instead of hanging CI.
"""

from __future__ import annotations

import logging
import os
import pathlib
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import trioflow
from trioflow import NodeContext, ServiceError, ServiceState


@attrs.define
class Recorder(trioflow.Service):
    name: str
    log: list[str]

    async def start(self) -> None:
        await trio.lowlevel.checkpoint()
        self.log.append(f"start {self.name}")

    async def close(self) -> None:
        await trio.sleep(1)  # a teardown that takes time: it must not be cancelled
        self.log.append(f"close {self.name}")


@attrs.define
class Stuck:
    """An instance whose aclose() never returns."""

    async def aclose(self) -> None:
        await trio.sleep_forever()


async def cancel_at(scope: trio.CancelScope, when: float) -> None:
    await trio.sleep_until(when)
    scope.cancel()


# -- item 3: the body's error survives a cancel during teardown ---------------------------------


async def test_the_body_error_survives_a_cancel_that_lands_during_teardown(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    trioflow.register_context_service("slow", Recorder("slow", log))

    @trioflow.service_task
    async def svc(*, task_status: trio.TaskStatus[str]) -> None:
        task_status.started("svc")
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):  # a teardown that overruns every bound
                await trio.sleep(40)
            log.append("svc torn down")

    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            with pytest.raises(KeyError, match="body") as info:
                with trio.CancelScope() as outer:
                    nursery.start_soon(cancel_at, outer, 0.5)  # lands while "svc" stops
                    async with trioflow.open_runtime():
                        await (await svc())
                        raise KeyError("body")
    assert log == ["start slow", "close slow", "svc torn down"]
    assert any("'svc' did not close within 10.0s" in note for note in info.value.__notes__)


# -- item 6: every teardown is bounded, reported, and the others still run ---------------------


async def test_a_service_task_whose_aclose_hangs_is_cut_short_and_reported(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    log: list[str] = []

    @trioflow.service_task(close_timeout=3)
    async def stuck() -> Stuck:
        return Stuck()

    @trioflow.service_task
    async def good(name: str) -> AsyncIterator[str]:
        yield name
        log.append(f"closed {name}")

    with trio.fail_after(100):
        with pytest.raises(ServiceError, match="'stuck' did not") as info:
            async with trioflow.open_runtime():
                await (await good("first"))
                handle = await stuck()
                await handle
                await (await good("last"))
    assert log == ["closed last", "closed first"]  # the others were still torn down
    assert trio.current_time() == 3  # cut short at its own bound
    assert handle.state is ServiceState.FAILED and handle.done
    assert "3.0s" in str(info.value)
    assert any("'stuck' did not" in r.getMessage() for r in caplog.records)  # and logged


async def test_a_registered_service_whose_close_hangs_does_not_stop_the_others(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []

    @attrs.define
    class Hangs(Recorder):
        close_timeout = 2.0

        async def close(self) -> None:
            await trio.sleep_forever()

    trioflow.register_context_service("a", Recorder("a", log))
    trioflow.register_context_service("b", Hangs("b", log))
    trioflow.register_context_service("c", Recorder("c", log))
    with trio.fail_after(100):
        with pytest.raises(ServiceError, match=r"'b' did not close within 2.0s"):
            async with trioflow.open_runtime():
                pass
    assert log == ["start a", "start b", "start c", "close c", "close a"]
    assert trio.current_time() == 1 + 2 + 1  # c's close, b's bound, a's close


async def test_several_teardown_failures_come_out_as_one_service_error_naming_each(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Broken(trioflow.Service):
        async def close(self) -> None:
            raise OSError("disk gone")

    class Hangs(trioflow.Service):
        close_timeout = 1.0

        async def close(self) -> None:
            await trio.sleep_forever()

    trioflow.register_context_service("broken", Broken())
    trioflow.register_context_service("hangs", Hangs())
    with trio.fail_after(100):
        with pytest.raises(ServiceError, match="2 teardowns failed") as info:
            async with trioflow.open_runtime():
                pass
    message = str(info.value)
    assert "'hangs' did not close" in message and "'broken' failed to close" in message
    group = info.value.__cause__
    assert isinstance(group, ExceptionGroup)
    assert [type(e.__cause__) for e in group.exceptions] == [type(None), OSError]


async def test_the_callers_deadline_ends_runtime_exit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    @trioflow.service_task  # the default close_timeout (10 s) is longer than the caller waits
    async def stuck() -> Stuck:
        return Stuck()

    with trio.fail_after(100):
        with pytest.raises(ServiceError, match="'stuck' did not.* before the caller's deadline"):
            with trio.move_on_after(5):
                async with trioflow.open_runtime():
                    await (await stuck())
                    await trio.sleep(1)
        assert trio.current_time() == 5


async def test_the_body_error_comes_out_as_itself_with_the_teardown_error_noted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    @trioflow.service_task(close_timeout=1)
    async def stuck() -> Stuck:
        return Stuck()

    with trio.fail_after(100):
        with pytest.raises(KeyError) as info:
            async with trioflow.open_runtime():
                await (await stuck())
                raise KeyError("body")
    assert any("'stuck' did not" in note for note in info.value.__notes__)


# -- item 7: a generator service written like a pytest fixture ----------------------------------


async def test_a_fixture_style_generator_runs_its_teardown_on_aclose_cancel_and_exit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[tuple[str, float]] = []

    @trioflow.service_task
    async def fixture(name: str) -> AsyncIterator[str]:
        yield name  # no try/finally: the code below is the teardown
        await trio.sleep(1)  # teardown may await: it is shielded (and bounded)
        log.append((name, trio.current_time()))

    with trio.fail_after(100):
        async with trioflow.open_runtime():
            closed = await fixture("aclose")
            await closed
            await closed.aclose()
            cancelled = await fixture("cancel")
            await cancelled
            cancelled.cancel()
            await trio.sleep(5)
            await (await fixture("exit"))
    assert log == [("aclose", 1), ("cancel", 2), ("exit", 7)]
    assert closed.state is cancelled.state is ServiceState.STOPPED


async def test_a_fixture_style_generator_runs_its_teardown_when_the_service_fails(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []

    async def crash() -> None:
        await trio.sleep(3)
        raise ConnectionError("lost")

    @trioflow.service_task
    async def pool() -> AsyncIterator[str]:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(crash)
            yield "pool"
            log.append("teardown")  # no finally

    with trio.fail_after(100):
        async with trioflow.open_runtime():
            handle = await pool()
            await handle
            await trio.sleep(5)
            assert handle.state is ServiceState.FAILED
            with pytest.raises(ConnectionError):
                await handle
    assert log == ["teardown"]


# -- item 8: a cancelled runtime tears services down one by one, in reverse ---------------------


async def test_a_cancelled_runtime_tears_services_down_one_by_one_in_reverse(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[tuple[str, str, float]] = []

    @trioflow.service_task
    async def svc(name: str, *, task_status: trio.TaskStatus[str]) -> None:
        task_status.started(name)
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                log.append(("begin", name, trio.current_time()))
                await trio.sleep(1)
                log.append(("end", name, trio.current_time()))

    with trio.fail_after(100):
        with trio.move_on_after(5):
            async with trioflow.open_runtime():
                for name in ("a", "b", "c"):
                    await (await svc(name))
                await trio.sleep_forever()
    assert log == [
        ("begin", "c", 5),
        ("end", "c", 6),
        ("begin", "b", 6),
        ("end", "b", 7),
        ("begin", "a", 7),
        ("end", "a", 8),
    ]


# -- item 9: one start/teardown rule, plain `def` hooks run in a worker thread ------------------


def test_plain_def_start_and_close_run_in_a_worker_thread() -> None:
    loop_thread: list[int] = []
    calls: list[tuple[str, bool]] = []

    class Blocking(trioflow.Service):
        def start(self) -> None:  # type: ignore[override]
            calls.append(("start", threading.get_ident() != loop_thread[0]))

        def close(self) -> None:  # type: ignore[override]
            calls.append(("close", threading.get_ident() != loop_thread[0]))

    trioflow.register_context_service("blocking", Blocking())

    async def main() -> None:
        loop_thread.append(threading.get_ident())
        async with trioflow.open_runtime():
            calls.append(("body", False))

    trio.run(main)
    assert calls == [("start", True), ("body", False), ("close", True)]


async def test_registered_services_and_service_tasks_share_one_teardown_rule() -> None:
    closed: list[str] = []

    class OnlyAclose:  # like httpx.AsyncClient
        async def aclose(self) -> None:
            closed.append("aclose")

    class SyncShutdown:
        def shutdown(self) -> None:
            closed.append("shutdown")

    @trioflow.service_task
    async def task_with_aclose() -> OnlyAclose:
        return OnlyAclose()

    trioflow.register_context_service("client", OnlyAclose())
    trioflow.register_context_service("pool", SyncShutdown())
    with trio.fail_after(10):
        async with trioflow.open_runtime():
            await (await task_with_aclose())
    assert closed == ["aclose", "shutdown", "aclose"]


# -- item 10: a shared service is never closed under a run that uses it --------------------------


@attrs.define(eq=False)
class Shared(trioflow.Service):
    up: bool = False
    starts: int = 0
    closes: int = 0

    async def start(self) -> None:
        await trio.sleep(0.5)
        self.up = True
        self.starts += 1

    async def close(self) -> None:
        self.up = False
        self.closes += 1

    async def use(self, seconds: float) -> bool:
        assert self.up, "used before start or after close"
        await trio.sleep(seconds)
        return self.up


@trioflow.tool(outputs=["up"])
async def use_shared(seconds: float, context: NodeContext) -> bool:
    return bool(await context.shared().use(seconds))


@trioflow.graph_fn(name="uses_shared", outputs=["up"])
async def uses_shared(seconds: float) -> bool:
    return bool((await use_shared(seconds=seconds))["up"])


async def test_concurrent_runs_without_a_runtime_share_one_start_and_one_close(
    autojump_clock: trio.testing.MockClock,
) -> None:
    shared = Shared()
    trioflow.register_context_service("shared", shared)
    results: dict[float, Any] = {}

    async def one(seconds: float) -> None:
        results[seconds] = await trioflow.run_async(uses_shared, {"seconds": seconds})

    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            for seconds in (1.0, 3.0, 2.0):
                nursery.start_soon(one, seconds)
    assert results == {1.0: {"up": True}, 2.0: {"up": True}, 3.0: {"up": True}}
    assert (shared.starts, shared.closes, shared.up) == (1, 1, False)
    assert trio.current_time() == 3.5  # one start (0.5 s), shared by all three runs


def test_two_threads_running_at_once_never_close_the_service_under_each_other() -> None:
    shared = Shared()
    trioflow.register_context_service("shared", shared)
    first_is_using = threading.Event()
    second_finished = threading.Event()

    @trioflow.tool(outputs=["up"])
    async def hold(context: NodeContext) -> bool:
        service = context.shared()
        first_is_using.set()
        await trio.to_thread.run_sync(second_finished.wait, 10)
        return bool(service.up)

    @trioflow.graph_fn(name="holds", outputs=["up"])
    async def holds() -> bool:
        return bool((await hold())["up"])

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(trioflow.run, holds)
        assert first_is_using.wait(10)
        second = pool.submit(trioflow.run, uses_shared, {"seconds": 0.01})
        assert second.result(10) == {"up": True}
        second_finished.set()
        assert first.result(10) == {"up": True}  # the second run did not close it
    assert (shared.starts, shared.closes, shared.up) == (1, 1, False)


# -- item 11: awaiting a handle during a restart waits for the new instance ----------------------


async def test_awaiting_a_handle_during_a_restart_gives_the_new_instance(
    autojump_clock: trio.testing.MockClock,
) -> None:
    instances = 0

    async def crash() -> None:
        await trio.sleep(10)
        raise RuntimeError("crash")

    async def slow_to_stop() -> None:
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(2)

    @trioflow.service_task(restart="on-failure")
    async def flaky() -> AsyncIterator[int]:
        nonlocal instances
        instances += 1
        async with trio.open_nursery() as nursery:
            nursery.start_soon(crash)
            nursery.start_soon(slow_to_stop)
            yield instances

    with trio.fail_after(100):
        async with trioflow.open_runtime():
            handle = await flaky()
            assert await handle == 1
            await trio.sleep(11)  # crashed at 10, tearing down until 12
            assert handle.state is ServiceState.STOPPING
            assert await handle == 2  # waited for the restarted instance
            assert trio.current_time() == 12
            assert handle.restarts == 1
            handle.cancel()


# -- item 13: a cancel or a Ctrl-C comes out bare ----------------------------------------------


async def test_an_enclosing_cancel_comes_out_of_open_runtime_as_bare_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    @trioflow.service_task
    async def svc() -> AsyncIterator[int]:
        yield 1

    caught: list[BaseException] = []
    with trio.fail_after(100):
        with trio.move_on_after(1):
            try:
                async with trioflow.open_runtime():
                    await (await svc())
                    await trio.sleep_forever()
            except BaseException as exc:
                caught.append(exc)
                raise
    assert [type(e) for e in caught] == [trio.Cancelled]


@pytest.mark.parametrize("where", ["body", "service"])
async def test_a_keyboard_interrupt_comes_out_of_open_runtime_bare(
    where: str, autojump_clock: trio.testing.MockClock
) -> None:
    log: list[str] = []

    @trioflow.service_task
    async def svc(*, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        await trio.sleep(1)
        if where == "service":
            raise KeyboardInterrupt  # as trio delivers a Ctrl-C to whichever task runs

    trioflow.register_context_service("rec", Recorder("rec", log))
    with trio.fail_after(100):
        with pytest.raises(KeyboardInterrupt) as info:
            async with trioflow.open_runtime():
                await svc()
                if where == "body":
                    raise KeyboardInterrupt
                await trio.sleep(5)
    assert type(info.value) is KeyboardInterrupt
    assert log == ["start rec", "close rec"]  # and the services were still closed


# -- issue 8: the handle and the registry -------------------------------------------------------


async def test_service_handle_is_final_read_only_and_made_only_by_a_service_task(
    autojump_clock: trio.testing.MockClock,
) -> None:
    assert getattr(trioflow.ServiceHandle, "__final__", False) is True
    with pytest.raises(TypeError, match="service_task"):
        trioflow.ServiceHandle()

    @trioflow.service_task
    async def svc() -> int:
        return 1

    with trio.fail_after(10):
        async with trioflow.open_runtime():
            handle = await svc()
            with pytest.raises(AttributeError):
                handle.state = ServiceState.RUNNING
            with pytest.raises(AttributeError):
                handle.restarts = 5
            assert handle.name == "svc"


def test_isolated_services_gives_a_fresh_registry_and_restores_the_old_one() -> None:
    outer = object()
    trioflow.register_context_service("outer", outer)
    fake = object()
    with trioflow.isolated_services({"db": fake}):

        @trioflow.graph_fn(name="g", outputs=["db"])
        async def g(context: NodeContext) -> Any:
            with pytest.raises(ServiceError, match=r"registered: \['db'\]"):
                context.outer  # noqa: B018 - attribute access is the lookup
            return context.db()

        assert trioflow.run(g) == {"db": fake}
        trioflow.register_context_service("inner", object())
    assert trioflow.isolated_services.__module__ == "trioflow"

    @trioflow.graph_fn(name="h", outputs=["found"])
    async def h(context: NodeContext) -> bool:
        with pytest.raises(ServiceError, match="no service named 'inner'"):
            context.inner  # noqa: B018
        return context.outer() is outer

    assert trioflow.run(h) == {"found": True}


def test_the_plugin_fixture_isolates_the_registry(trioflow_isolated_services: None) -> None:
    # conftest.py makes this fixture autouse; asking for it by name works as well.
    trioflow.register_context_service("leaks", object())
    assert "leaks" in trioflow._services.registered_services()


def test_the_registration_above_did_not_leak() -> None:
    assert "leaks" not in trioflow._services.registered_services()


def test_bad_close_timeout() -> None:
    with pytest.raises(trioflow.ConfigError, match="close_timeout"):
        trioflow.service_task(close_timeout=0)
    with pytest.raises(trioflow.ConfigError, match="close_timeout"):
        trioflow.service_task(close_timeout=float("inf"))


def test_logging_is_quiet_for_a_clean_exit(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="trioflow")
    trioflow.register_context_service("rec", Recorder("rec", []))

    async def main() -> None:
        async with trioflow.open_runtime():
            pass

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert caplog.records == []


async def test_a_close_error_already_raised_by_aclose_is_not_raised_again_at_exit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    @trioflow.service_task(close_timeout=1)
    async def stuck() -> Stuck:
        return Stuck()

    with trio.fail_after(100):
        async with trioflow.open_runtime():  # exits cleanly: the error was delivered once
            handle = await stuck()
            await handle
            with pytest.raises(ServiceError, match="'stuck' did not finish its teardown"):
                await handle.aclose()
            assert handle.state is ServiceState.FAILED


async def test_a_ctrl_c_during_teardown_still_closes_the_rest_then_comes_out_bare(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []

    class Interrupted(trioflow.Service):
        async def close(self) -> None:
            raise KeyboardInterrupt

    trioflow.register_context_service("a", Recorder("a", log))
    trioflow.register_context_service("b", Interrupted())
    trioflow.register_context_service("c", Recorder("c", log))
    with trio.fail_after(100):
        with pytest.raises(KeyboardInterrupt) as info:
            async with trioflow.open_runtime():
                pass
    assert type(info.value) is KeyboardInterrupt
    assert log == ["start a", "start c", "close c", "close a"]


CTRL_C = """
import os, signal, trio, trioflow

log = []

class Closing(trioflow.Service):
    def __init__(self, name, interrupt=False):
        self.name, self.interrupt = name, interrupt

    async def close(self):
        if self.interrupt:  # a real SIGINT, delivered by trio to the main task
            await trio.to_thread.run_sync(os.kill, os.getpid(), signal.SIGINT)
            await trio.sleep(5)
        log.append("close " + self.name)

trioflow.register_context_service("a", Closing("a"))
trioflow.register_context_service("b", Closing("b", interrupt=True))
trioflow.register_context_service("c", Closing("c"))

async def main():
    async with trioflow.open_runtime():
        pass

try:
    trio.run(main)
except KeyboardInterrupt:
    print("bare KeyboardInterrupt", log)
"""


def test_a_real_ctrl_c_during_teardown_comes_out_bare_after_closing_the_rest() -> None:
    root = pathlib.Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", CTRL_C],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "bare KeyboardInterrupt ['close c', 'close a']"


async def test_an_agent_tool_instance_that_hangs_on_close_is_bounded_and_named(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Model:
        async def __call__(self, prompt: str) -> str:
            return prompt

        async def aclose(self) -> None:
            await trio.sleep_forever()

    @trioflow.task(flow_type=trioflow.FlowType.AGENT_TOOL_AS_SERVICE, outputs=["text"])
    async def llm() -> Model:
        return Model()

    @trioflow.graph_fn(name="g", outputs=["text"])
    async def g() -> str:
        return str((await llm(prompt="hi"))["text"])

    with trio.fail_after(100):
        with pytest.raises(ServiceError, match="'llm' did not close within 10.0s"):
            async with trioflow.open_runtime():
                assert await trioflow.run_async(g) == {"text": "hi"}
        assert trio.current_time() == 10


async def test_a_run_that_needs_a_service_while_another_closes_it_waits_and_restarts_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    @attrs.define(eq=False)
    class SlowClose(Shared):
        async def close(self) -> None:
            await trio.sleep(1)
            await super().close()

    shared = SlowClose()
    trioflow.register_context_service("shared", shared)
    seen: list[tuple[str, float]] = []

    async def first() -> None:
        await trioflow.run_async(uses_shared, {"seconds": 1.0})  # start 0-0.5, use, close 1.5-2.5
        seen.append(("first done", trio.current_time()))

    async def second() -> None:
        await trio.sleep(2)  # arrives while the first run's runtime is closing the service
        assert await trioflow.run_async(uses_shared, {"seconds": 1.0}) == {"up": True}
        seen.append(("second done", trio.current_time()))

    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(first)
            nursery.start_soon(second)
    # second: waits for the close (until 2.5), starts it again (3.0), uses it (4.0), closes (5.0)
    assert seen == [("first done", 2.5), ("second done", 5.0)]
    assert (shared.starts, shared.closes, shared.up) == (2, 2, False)
