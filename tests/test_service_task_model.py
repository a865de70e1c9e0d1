"""Random sequences of start / cancel / await / crash against a model of the services.

Each example runs one runtime in virtual time; after every step the handles' states and the
set of live instances must match a plain model, and after the runtime closes nothing is left.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio
import trio.testing
from hypothesis import given, strategies as st

import trioflow
from trioflow import ServiceError, ServiceState

MAX_RESTARTS = 1

operations = st.lists(
    st.one_of(
        st.just(("start",)),
        st.tuples(st.just("cancel"), st.integers(0, 2)),
        st.tuples(st.just("await"), st.integers(0, 2)),
        st.tuples(st.just("crash"), st.integers(0, 2)),
        st.just(("sleep",)),
    ),
    max_size=25,
)


@attrs.define
class Control:
    crash: trio.Event = attrs.field(factory=trio.Event)
    starts: int = 0


@attrs.define
class Model:
    state: ServiceState = ServiceState.RUNNING
    starts: int = 1


@given(ops=operations)
def test_services_follow_the_model(ops: list[tuple[Any, ...]]) -> None:
    live: set[int] = set()
    controls: list[Control] = []

    @trioflow.service_task(restart="on-failure", max_restarts=MAX_RESTARTS, within=1000.0)
    async def svc(key: int, *, task_status: trio.TaskStatus[tuple[int, int]]) -> None:
        control = controls[key]
        control.starts += 1
        control.crash = trio.Event()
        live.add(key)
        try:
            task_status.started((key, control.starts))
            await control.crash.wait()
            raise RuntimeError(f"service {key} crashed")
        finally:
            live.discard(key)

    async def main() -> None:
        handles: list[trioflow.ServiceHandle[tuple[int, int]]] = []
        models: list[Model] = []
        with trio.fail_after(10_000):
            async with trioflow.open_runtime():
                for op in ops:
                    name = op[0]
                    if name == "start":
                        controls.append(Control())
                        handle = await svc(len(handles))
                        assert await handle == (len(handles), 1)
                        handles.append(handle)
                        models.append(Model())
                    elif name == "sleep":
                        await trio.sleep(1)
                    elif handles:
                        i = op[1] % len(handles)
                        handle, model = handles[i], models[i]
                        if name == "cancel":
                            await handle.aclose()
                            if model.state is ServiceState.RUNNING:
                                model.state = ServiceState.STOPPED
                        elif name == "crash" and model.state is ServiceState.RUNNING:
                            controls[i].crash.set()
                            await trio.sleep(1)
                            if model.starts <= MAX_RESTARTS:
                                model.starts += 1
                            else:
                                model.state = ServiceState.FAILED
                        elif name == "await":
                            if model.state is ServiceState.RUNNING:
                                assert await handle == (i, model.starts)
                            elif model.state is ServiceState.FAILED:
                                with pytest.raises(RuntimeError, match="crashed"):
                                    await handle
                            else:
                                with pytest.raises(ServiceError, match="stopped"):
                                    await handle
                    assert [h.state for h in handles] == [m.state for m in models]
                    running = {i for i, m in enumerate(models) if m.state is ServiceState.RUNNING}
                    assert live == running
        assert live == set()
        assert all(h.state in (ServiceState.STOPPED, ServiceState.FAILED) for h in handles)
        assert [c.starts for c in controls] == [m.starts for m in models]

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
