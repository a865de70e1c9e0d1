"""SERVICE_TASK: handles, the three service forms, teardown, timeouts, restarts, FlowType."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio
import trio.testing

import trioflow
from trioflow import FlowType, NodeContext, ServiceError, ServiceState


@attrs.define
class Server:
    port: int
    log: list[str]
    closed: bool = False

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
        self.closed = True
        self.log.append(f"aclose {self.port}")


def returning_service(log: list[str], delay: float = 1.0) -> trioflow.ServiceTask[Server]:
    @trioflow.service_task
    async def start_server(port: int) -> Server:
        log.append(f"starting {port}")
        await trio.sleep(delay)
        if port < 0:
            raise OSError(f"bad port {port}")
        return Server(port, log)

    return start_server


async def test_a_call_returns_a_handle_at_once_and_awaiting_it_gives_the_instance(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    start_server = returning_service(log)
    with trio.fail_after(100):
        async with trioflow.open_runtime():
            handle = await start_server(8080)
            assert trio.current_time() == 0  # returned at once: the service is starting
            assert handle.state is ServiceState.STARTING and handle.uptime == 0.0
            server = await handle
            assert trio.current_time() == 1
            assert server is await handle  # the same instance every time
            assert handle.state is ServiceState.RUNNING
            await trio.sleep(5)
            assert handle.uptime == 5.0
            other = await (await start_server(8081))  # a second, independent instance
            assert other is not server
    assert log == ["starting 8080", "starting 8081", "aclose 8081", "aclose 8080"]


async def test_cancel_stops_only_that_service_and_runs_its_teardown(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    start_server = returning_service(log)
    with trio.fail_after(100):
        async with trioflow.open_runtime():
            a, b = await start_server(1), await start_server(2)
            server_a, server_b = await a, await b
            a.cancel(reason="not needed")
            await trio.sleep(1)
            assert a.state is ServiceState.STOPPED and server_a.closed
            assert b.state is ServiceState.RUNNING and not server_b.closed
            await b.aclose()
            assert b.state is ServiceState.STOPPED and server_b.closed
            assert b.uptime == 0.0


async def test_cancel_before_ready_is_safe(autojump_clock: trio.testing.MockClock) -> None:
    log: list[str] = []
    start_server = returning_service(log, delay=10)
    with trio.fail_after(100):
        async with trioflow.open_runtime():
            handle = await start_server(1)
            await trio.sleep(1)
            handle.cancel()
            with pytest.raises(ServiceError, match="stopped before it became ready"):
                await handle
            assert handle.state is ServiceState.STOPPED
            await handle.aclose()  # idempotent
    assert log == ["starting 1"]


async def test_an_init_failure_is_raised_from_await_and_the_runtime_keeps_running(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    start_server = returning_service(log)
    with trio.fail_after(100):
        async with trioflow.open_runtime():
            bad = await start_server(-1)
            with pytest.raises(OSError, match="bad port -1"):
                await bad
            assert bad.state is ServiceState.FAILED
            good = await (await start_server(5))
            assert good.port == 5


async def test_start_timeout_raises_service_error(autojump_clock: trio.testing.MockClock) -> None:
    @trioflow.service_task(start_timeout=2)
    async def slow() -> object:
        await trio.sleep(10)
        return object()

    with trio.fail_after(100):
        async with trioflow.open_runtime():
            handle = await slow()
            with pytest.raises(ServiceError, match="within 2.0s"):
                await handle
            assert handle.state is ServiceState.FAILED
            assert trio.current_time() == 2


async def test_async_generator_service_tears_down_after_yield_on_cancel_exit_and_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []

    @trioflow.service_task
    async def pool(name: str, crash_after: float | None = None) -> Any:
        log.append(f"open {name}")
        try:
            async with trio.open_nursery() as nursery:
                if crash_after is not None:

                    async def crash() -> None:
                        await trio.sleep(crash_after)
                        raise ConnectionError(f"{name} lost")

                    nursery.start_soon(crash)
                yield f"pool {name}"
                nursery.cancel_scope.cancel()
        finally:
            log.append(f"teardown {name}")

    with trio.fail_after(100):
        async with trioflow.open_runtime():
            cancelled = await pool("cancelled")
            assert await cancelled == "pool cancelled"
            await cancelled.aclose()
            crashing = await pool("crashing", crash_after=3)
            await crashing
            await trio.sleep(5)
            assert crashing.state is ServiceState.FAILED
            with pytest.raises(ConnectionError):
                await crashing
            await (await pool("at exit"))
    assert log == [
        "open cancelled",
        "teardown cancelled",
        "open crashing",
        "teardown crashing",
        "open at exit",
        "teardown at exit",
    ]


async def test_task_status_service_reports_ready_itself(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []

    @trioflow.service_task
    async def worker(name: str, *, task_status: trio.TaskStatus[str]) -> None:
        log.append("init")
        await trio.sleep(1)
        task_status.started(f"worker {name}")
        try:
            await trio.sleep_forever()
        finally:
            log.append("cleanup")

    with trio.fail_after(100):
        async with trioflow.open_runtime():
            assert await (await worker("w")) == "worker w"
    assert log == ["init", "cleanup"]


async def test_restart_on_failure_is_bounded_over_a_window(
    autojump_clock: trio.testing.MockClock,
) -> None:
    starts: list[float] = []

    @trioflow.service_task(restart="on-failure", max_restarts=3, within=60.0)
    async def flaky(*, task_status: trio.TaskStatus[int]) -> None:
        starts.append(trio.current_time())
        task_status.started(len(starts))
        await trio.sleep(10)
        raise RuntimeError("crash")

    with trio.fail_after(1000):
        async with trioflow.open_runtime():
            handle = await flaky()
            assert await handle == 1
            await trio.sleep(15)
            assert handle.state is ServiceState.RUNNING and await handle == 2  # the new instance
            await trio.sleep(100)
            assert handle.state is ServiceState.FAILED
    # Restarted at once after each crash; the 4th crash within 60 s is the end.
    assert starts == [0.0, 10.0, 20.0, 30.0]
    assert handle.restarts == 3


async def test_restarts_spread_out_in_time_are_not_limited(
    autojump_clock: trio.testing.MockClock,
) -> None:
    starts: list[float] = []

    @trioflow.service_task(restart="on-failure", max_restarts=1, within=5.0)
    async def flaky(*, task_status: trio.TaskStatus[None]) -> None:
        starts.append(trio.current_time())
        task_status.started()
        await trio.sleep(10)
        raise RuntimeError("crash")

    with trio.fail_after(1000):
        async with trioflow.open_runtime():
            handle = await flaky()
            await trio.sleep(45)
            handle.cancel()
    assert starts == [0.0, 10.0, 20.0, 30.0, 40.0]


async def test_runtime_exit_tears_services_down_in_reverse_start_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    start_server = returning_service(log, delay=0)
    with trio.fail_after(100):
        async with trioflow.open_runtime():
            for port in (1, 2, 3):
                await (await start_server(port))
    assert [e for e in log if e.startswith("aclose")] == ["aclose 3", "aclose 2", "aclose 1"]


async def test_calling_a_service_task_needs_a_runtime() -> None:
    start_server = returning_service([])
    with pytest.raises(ServiceError, match="needs a runtime"):
        await start_server(1)


async def test_a_service_started_from_a_node_lives_in_the_runtime(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    start_server = returning_service(log)
    handles: list[trioflow.ServiceHandle[Server]] = []

    @trioflow.graph_fn(name="g", outputs=["port"])
    async def g() -> int:
        handle = await start_server(9)
        handles.append(handle)
        return (await handle).port

    with trio.fail_after(100):
        async with trioflow.open_runtime():
            assert await trioflow.run_async(g) == {"port": 9}
            assert handles[0].state is ServiceState.RUNNING  # outlives the run, not the runtime
    assert handles[0].state is ServiceState.STOPPED


def test_bad_service_task_options() -> None:
    with pytest.raises(trioflow.ConfigError, match="restart must be"):
        trioflow.service_task(restart="always")  # type: ignore[arg-type]
    with pytest.raises(trioflow.ConfigError, match="start_timeout"):
        trioflow.service_task(start_timeout=0)
    with pytest.raises(trioflow.ConfigError, match="async def"):
        trioflow.service_task(lambda: None)


# -- FlowType ----------------------------------------------------------------------------------


class Model:
    def __init__(self) -> None:
        self.calls = 0
        self.closed = False

    async def __call__(self, prompt: str, temperature: float = 0.0) -> str:
        self.calls += 1
        return f"{prompt}:{temperature}:{self.calls}"

    async def aclose(self) -> None:
        self.closed = True


async def test_agent_tool_as_service_starts_once_per_runtime_and_is_reused() -> None:
    made: list[Model] = []

    @trioflow.task(flow_type=FlowType.AGENT_TOOL_AS_SERVICE, outputs=["text"])
    async def llm() -> Model:
        await trio.lowlevel.checkpoint()
        made.append(Model())
        return made[-1]

    assert isinstance(llm, trioflow.Tool)
    assert sorted(llm.spec.params) == ["prompt", "temperature"]
    assert llm.spec.required == {"prompt"}

    @trioflow.graph_fn(name="g", outputs=["texts"])
    async def g() -> list[str]:
        results = await trioflow.gather(llm(prompt="a"), llm(prompt="b", temperature=1.0))
        return [r["text"] for r in results]

    async with trioflow.open_runtime():
        first = await trioflow.run_async(g)
        second = await trioflow.run_async(g)
    assert len(made) == 1 and made[0].calls == 4 and made[0].closed
    texts = first["texts"] + second["texts"]
    assert [t.rsplit(":", 1)[0] for t in texts] == ["a:0.0", "b:1.0", "a:0.0", "b:1.0"]
    assert sorted(int(t.rsplit(":", 1)[1]) for t in texts) == [1, 2, 3, 4]  # one instance


def test_function_and_service_task_flow_types() -> None:
    @trioflow.task(flow_type=FlowType.FUNCTION_TASK, outputs=["y"])
    async def plain(x: int) -> int:
        return x

    @trioflow.task(flow_type=FlowType.SERVICE_TASK)
    async def svc() -> object:
        return object()

    assert isinstance(plain, trioflow.Tool)
    assert isinstance(svc, trioflow.ServiceTask)
    with pytest.raises(trioflow.ConfigTypeError, match="annotate its return type"):

        @trioflow.task(flow_type=FlowType.AGENT_TOOL_AS_SERVICE)
        async def unannotated():  # type: ignore[no-untyped-def]
            return Model()


async def test_agent_tool_reaches_the_context_of_its_node() -> None:
    class Echo:
        async def __call__(self, text: str) -> str:
            return f"{trioflow.current_context().node_id}:{text}"

    @trioflow.task(flow_type=FlowType.AGENT_TOOL_AS_SERVICE, outputs=["out"])
    async def echo() -> Echo:
        return Echo()

    @trioflow.graph_fn(name="g", outputs=["out"])
    async def g(context: NodeContext) -> str:
        return str((await echo(text="x"))["out"])

    assert await trioflow.run_async(g) == {"out": "echo_1:x"}
