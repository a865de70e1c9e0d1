"""Fault injection for services: random services x random faults x random exits, virtual time.

Each example registers services and starts SERVICE_TASKs of every form, injects faults (a start
that fails, a teardown that raises, hangs or is slow, a service that crashes), ends the runtime's
body in a random way (returns, raises, is cancelled from outside, hits the caller's deadline),
and checks the promises of issue 9:

- nothing hangs: the exit ends within the sum of the teardown bounds;
- every injected error surfaces: the body's exception comes out as itself, each failing or
  hanging teardown is named by the error that leaves `open_runtime` (message or notes);
- nothing is left running: no task of the runtime survives it, every handle is done, every
  shared-service count is back to zero;
- teardown runs one at a time, in reverse start order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from hypothesis import given, settings, strategies as st

import trioflow
from trioflow import _services
from trioflow.testing import live_tasks

BOUND = 2.0  # every service's close_timeout
KINDS = ("registered", "returning", "generator", "task_status")
FAULTS = ("none", "none", "close_raises", "close_hangs", "close_slow", "start_fails", "crash")


@attrs.frozen
class Plan:
    kind: str
    fault: str


plans = st.lists(
    st.builds(Plan, st.sampled_from(KINDS), st.sampled_from(FAULTS)), min_size=1, max_size=6
)
exits = st.sampled_from(["return", "raise", "cancel", "deadline"])


class Injected(Exception):
    pass


@attrs.define
class World:
    """What the services did, in order: (event, name, virtual time)."""

    events: list[tuple[str, str, float]] = attrs.field(factory=list)
    closing: int = 0  # teardowns running right now
    peak_closing: int = 0

    def log(self, event: str, name: str) -> None:
        self.events.append((event, name, trio.current_time()))

    async def teardown(self, name: str, fault: str) -> None:
        counted = fault != "crash"  # a crashed service tears down when it crashes, not at exit
        self.closing += counted
        self.peak_closing = max(self.peak_closing, self.closing)
        self.log("close", name)
        try:
            if fault == "close_raises":
                raise Injected(f"{name} cannot close")
            if fault == "close_hangs":
                await trio.sleep_forever()
            if fault == "close_slow":
                await trio.sleep(BOUND / 2)
            else:
                await trio.lowlevel.checkpoint()
            self.log("closed", name)
        finally:
            self.closing -= counted


def make_service(world: World, name: str, plan: Plan) -> Any:
    """A registered instance, or a service task, behaving as `plan` says."""

    class Instance:
        close_timeout = BOUND

        async def start(self) -> None:
            await trio.sleep(0.25)
            if plan.fault == "start_fails":
                raise Injected(f"{name} cannot start")
            world.log("start", name)

        async def aclose(self) -> None:
            await world.teardown(name, plan.fault)

    if plan.kind == "registered":
        return Instance()

    async def crash_later() -> None:
        await trio.sleep(1)
        raise Injected(f"{name} crashed")

    if plan.kind == "returning":

        @trioflow.service_task(name=name, close_timeout=BOUND)
        async def returning() -> Instance:
            instance = Instance()
            await instance.start()
            return instance

        return returning
    if plan.kind == "generator":

        @trioflow.service_task(name=name, close_timeout=BOUND)
        async def generator() -> AsyncIterator[str]:
            await Instance().start()
            async with trio.open_nursery() as nursery:
                if plan.fault == "crash":
                    nursery.start_soon(crash_later)
                yield name
                await world.teardown(name, plan.fault)  # fixture style: no try/finally
                nursery.cancel_scope.cancel()

        return generator

    @trioflow.service_task(name=name, close_timeout=BOUND)
    async def with_status(*, task_status: trio.TaskStatus[str]) -> None:
        await Instance().start()
        task_status.started(name)
        try:
            if plan.fault == "crash":
                await crash_later()
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True, deadline=trio.current_time() + BOUND):
                await world.teardown(name, plan.fault)

    return with_status


async def one_example(services: list[Plan], ending: str) -> None:
    world = World()
    names = [f"s{i}" for i in range(len(services))]
    tasks = {n: make_service(world, n, p) for n, p in zip(names, services, strict=True)}
    for name, plan in zip(names, services, strict=True):
        if plan.kind == "registered":
            trioflow.register_context_service(name, tasks[name])
    before = live_tasks()
    handles: list[trioflow.ServiceHandle[Any]] = []
    raised: BaseException | None = None
    body_time = 3.0
    with trio.fail_after(10_000):
        async with trio.open_nursery() as nursery:
            try:
                with trio.CancelScope() as outer:
                    if ending == "deadline":
                        outer.deadline = trio.current_time() + body_time + BOUND / 2
                    async with trioflow.open_runtime():
                        for name, plan in zip(names, services, strict=True):
                            if plan.kind != "registered":
                                handle = await tasks[name]()
                                handles.append(handle)
                                with trio.move_on_after(1):  # a start may fail: that is fine
                                    try:
                                        await handle
                                    except (Injected, trioflow.ServiceError):
                                        pass
                        if ending == "cancel":
                            nursery.start_soon(cancel_soon, outer)
                        await trio.sleep(body_time)
                        if ending == "raise":
                            raise KeyError("body")
                        if ending == "deadline":
                            await trio.sleep_forever()
            except BaseException as exc:  # inspected below; nothing here is swallowed silently
                raised = exc
    exit_took = trio.current_time()
    started = [n for (e, n, _) in world.events if e == "start"]
    closes = [n for (e, n, _) in world.events if e == "close"]
    registered_start_failed = any(
        p.kind == "registered" and p.fault == "start_fails" for p in services
    )

    # Nothing hangs: start-up, the body and one bound per service, at most.
    assert exit_took <= len(services) * (0.25 + 1) + body_time + len(services) * BOUND
    # Nothing is left running.
    assert live_tasks() == before
    assert all(h.done for h in handles)
    assert _services._leases == {}
    # One at a time, in reverse start order (a crashed service tore down when it crashed).
    assert world.peak_closing <= 1
    crashed = {n for n, p in zip(names, services, strict=True) if p.fault == "crash"}
    at_exit = [n for n in closes if n not in crashed]
    assert at_exit == [n for n in reversed(started) if n in at_exit]
    # Every error surfaces.
    if registered_start_failed:
        assert isinstance(raised, trioflow.ServiceError) and "cannot start" in str(raised)
        return
    if ending == "raise":
        assert isinstance(raised, KeyError)
    text = "" if raised is None else str(raised) + " ".join(getattr(raised, "__notes__", []))
    for name, plan in zip(names, services, strict=True):
        if name in closes and plan.fault in ("close_raises", "close_hangs"):
            assert f"'{name}'" in text, (name, plan, raised)
    if raised is not None and not isinstance(raised, KeyError):
        assert isinstance(raised, trioflow.ServiceError), repr(raised)
    for name in started:  # every started service was torn down (or named as failing to)
        assert name in closes or f"'{name}'" in text


async def cancel_soon(scope: trio.CancelScope) -> None:
    await trio.sleep(1)
    scope.cancel()


@settings(max_examples=300, deadline=None)
@given(services=plans, ending=exits)
def test_service_faults_never_lose_an_error_never_hang_never_leak(
    services: list[Plan], ending: str
) -> None:
    with trioflow.isolated_services():
        trio.run(one_example, services, ending, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.parametrize("ending", ["return", "raise", "cancel", "deadline"])
def test_every_fault_at_once(ending: str) -> None:
    services = [Plan(kind, fault) for kind in KINDS for fault in FAULTS if fault != "start_fails"]
    with trioflow.isolated_services():
        trio.run(one_example, services, ending, clock=trio.testing.MockClock(autojump_threshold=0))
