"""Context services: lifecycle, registry, Service helpers, and the built-ins."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow
from trioflow import NodeContext, ServiceError


class Recorder(trioflow.Service):
    def __init__(self, name: str, log: list[str], *, fail_start: bool = False) -> None:
        self.name = name
        self.log = log
        self.fail_start = fail_start

    async def start(self) -> None:
        await trio.lowlevel.checkpoint()
        if self.fail_start:
            raise OSError(f"{self.name} cannot start")
        self.log.append(f"start {self.name}")

    async def close(self) -> None:
        await trio.lowlevel.checkpoint()
        self.log.append(f"close {self.name}")


# -- lifecycle ---------------------------------------------------------------------------------


async def test_services_start_in_order_and_close_in_reverse() -> None:
    log: list[str] = []
    for name in ("a", "b", "c"):
        trioflow.register_context_service(name, Recorder(name, log))
    async with trioflow.open_runtime():
        log.append("body")
    assert log == ["start a", "start b", "start c", "body", "close c", "close b", "close a"]


@pytest.mark.parametrize("how", ["error", "cancel"])
async def test_services_are_closed_when_the_body_fails_or_is_cancelled(how: str) -> None:
    log: list[str] = []
    trioflow.register_context_service("a", Recorder("a", log))
    trioflow.register_context_service("b", Recorder("b", log))
    with trio.move_on_after(5) as scope:
        try:
            async with trioflow.open_runtime():
                if how == "error":
                    raise KeyError("body")
                scope.cancel()
                await trio.sleep_forever()
        except KeyError:
            log.append("KeyError came out as itself")
    expected = ["start a", "start b", "close b", "close a"]
    if how == "error":
        expected.append("KeyError came out as itself")  # after teardown, unwrapped
    assert log == expected


async def test_a_service_that_fails_to_start_closes_the_ones_started() -> None:
    log: list[str] = []
    trioflow.register_context_service("a", Recorder("a", log))
    trioflow.register_context_service("b", Recorder("b", log, fail_start=True))
    with pytest.raises(ServiceError, match="'b' failed to start") as info:
        async with trioflow.open_runtime():
            log.append("body")  # pragma: no cover - never reached
    assert isinstance(info.value.__cause__, OSError)
    assert log == ["start a", "close a"]


def test_run_outside_a_runtime_opens_one_for_the_run() -> None:
    log: list[str] = []
    trioflow.register_context_service("rec", Recorder("rec", log))

    @trioflow.graph_fn(name="g", outputs=["n"])
    async def g(context: NodeContext) -> str:
        return str(context.rec().name)

    assert trioflow.run(g) == {"n": "rec"}
    assert log == ["start rec", "close rec"]


# -- registry ----------------------------------------------------------------------------------


async def test_context_name_returns_the_instance_and_unknown_names_list_the_registered() -> None:
    trioflow.register_context_service("db", {"kind": "db"})
    trioflow.register_context_service("cache", {"kind": "cache"})

    @trioflow.tool(outputs=["kind"])
    async def use(context: NodeContext) -> str:
        assert context.db() is context.db()
        with pytest.raises(
            ServiceError, match=r"no service named 'nope'; registered: \['cache', 'db'\]"
        ):
            context.nope  # noqa: B018 - attribute access is the lookup
        return str(context.db()["kind"])

    @trioflow.graph_fn(name="g", outputs=["kind"])
    async def g() -> Any:
        return (await use())["kind"]

    assert await trioflow.run_async(g) == {"kind": "db"}


async def test_reregistering_replaces_and_keeps_the_start_order() -> None:
    log: list[str] = []
    trioflow.register_context_service("a", Recorder("a", log))
    trioflow.register_context_service("b", Recorder("b", log))
    trioflow.register_context_service("a", Recorder("fake-a", log))
    async with trioflow.open_runtime() as rt:
        assert rt.lookup("a").name == "fake-a"
    assert log == ["start fake-a", "start b", "close b", "close fake-a"]


@pytest.mark.parametrize("name", ["channel", "memory", "artifacts", "logger", "kv", "run_id"])
def test_builtin_names_are_refused(name: str) -> None:
    with pytest.raises(trioflow.ConfigError, match="built-in"):
        trioflow.register_context_service(name, object())


async def test_a_callable_service_can_be_called_directly() -> None:
    class Predictor(trioflow.Service):
        async def __call__(self, text: str) -> str:
            return f"predicted {text} for {self.ctx().node_id}"

    trioflow.register_context_service("predictor", Predictor())

    @trioflow.graph_fn(name="g", outputs=["y"])
    async def g(context: NodeContext) -> str:
        return str(await context.predictor("hi"))

    assert await trioflow.run_async(g) == {"y": "predicted hi for g"}


async def test_runtime_scoped_registration_is_not_shared_between_runtimes() -> None:
    log: list[str] = []
    async with trioflow.open_runtime() as first:
        await first.register("local", Recorder("one", log))
        assert first.lookup("local").name == "one"
        async with trioflow.open_runtime() as second:
            with pytest.raises(ServiceError, match="no service named 'local'"):
                second.lookup("local")
    assert log == ["start one", "close one"]


# -- Service helpers ---------------------------------------------------------------------------


class Counter(trioflow.Service):
    def __init__(self) -> None:
        self.value = 0
        self.incr = self.critical()(self.incr)  # the seed's spelling

    async def incr(self) -> int:
        current = self.value
        await trio.sleep(0.01)  # a race window that would lose updates without the lock
        self.value = current + 1
        return self.value

    @trioflow.critical
    async def add_twice(self) -> None:  # class-level spelling; re-enters the lock
        await self.incr()
        await self.incr()


def count_in_graph(counter: Counter, n: int) -> trioflow.GraphFn:
    trioflow.register_context_service("counter", counter)

    @trioflow.tool(outputs=["v"])
    async def bump(context: NodeContext) -> int:
        return int(await context.counter().incr())

    @trioflow.graph_fn(name="g", outputs=["n"])
    async def g() -> int:
        await trioflow.gather(*(bump() for _ in range(n)))
        return counter.value

    return g


async def test_critical_loses_no_update_under_50_concurrent_calls(
    autojump_clock: trio.testing.MockClock,
) -> None:
    counter = Counter()
    with trio.fail_after(100):
        result = await trioflow.run_async(count_in_graph(counter, 50), max_concurrency=50)
        await counter.add_twice()
    assert result == {"n": 50}
    assert counter.value == 52


def test_the_lock_works_in_two_sequential_trio_runs() -> None:
    counter = Counter()
    graph = count_in_graph(counter, 5)
    assert trioflow.run(graph, max_concurrency=5) == {"n": 5}
    assert trioflow.run(graph, max_concurrency=5) == {"n": 10}


async def test_ctx_is_the_calling_nodes_context_under_concurrency(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class WhoAmI(trioflow.Service):
        async def who(self, delay: float) -> str:
            before = self.ctx().node_id
            await trio.sleep(delay)
            assert self.ctx().node_id == before
            return before

    trioflow.register_context_service("whoami", WhoAmI())

    @trioflow.tool(outputs=["me"])
    async def ask(delay: float, context: NodeContext) -> str:
        return str(await context.whoami().who(delay))

    @trioflow.graph_fn(name="g", outputs=["mes"])
    async def g() -> list[str]:
        results = await trioflow.gather(*(ask(delay=3 - i) for i in range(3)))
        return [r["me"] for r in results]

    with trio.fail_after(10):
        assert await trioflow.run_async(g) == {"mes": ["ask_1", "ask_2", "ask_3"]}
    with pytest.raises(trioflow.ContextError):
        WhoAmI().ctx()


async def test_run_blocking_keeps_the_loop_responsive_and_waits_for_its_thread() -> None:
    service = trioflow.Service()
    release = threading.Event()
    finished: list[str] = []

    def blocking() -> str:
        release.wait(10)
        finished.append("thread")
        return "done"

    async def tick() -> None:
        await trio.sleep(0.01)
        finished.append("tick")
        release.set()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tick)
            assert await service.run_blocking(blocking) == "done"
    assert finished == ["tick", "thread"]

    # Cancelled while the thread runs: the caller waits for the thread before unwinding.
    release.clear()
    finished.clear()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tick)
            with trio.move_on_after(0.001):
                await service.run_blocking(blocking)
            finished.append("caller unwound")
    assert finished == ["tick", "thread", "caller unwound"]


# -- built-ins ---------------------------------------------------------------------------------


async def test_channel_messages_reach_subscribers_and_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    @trioflow.tool(outputs=["ok"])
    async def talk(word: str, context: NodeContext) -> bool:
        await context.channel().send_text(f"said {word}")
        return True

    @trioflow.graph_fn(name="g", outputs=["ok"])
    async def g() -> bool:
        await trioflow.gather(talk(word="a"), talk(word="b"))
        return True

    caplog.set_level(logging.INFO, logger="trioflow.channel")
    async with trioflow.open_runtime() as rt, rt.messages() as messages:
        await trioflow.run_async(g, run_id="r")
        got = [messages.receive_nowait(), messages.receive_nowait()]
    assert sorted((m.node_id, m.text, m.run_id) for m in got) == [
        ("talk_1", "said a", "r"),
        ("talk_2", "said b", "r"),
    ]
    assert sorted(r.getMessage() for r in caplog.records) == [
        "[r/talk_1] said a",
        "[r/talk_2] said b",
    ]


async def test_memory_is_a_per_run_event_log() -> None:
    @trioflow.tool(outputs=["n"])
    async def note(x: int, context: NodeContext) -> int:
        await context.memory().record("seen", x)
        return len(context.memory().events("seen"))

    @trioflow.graph_fn(name="g", outputs=["n", "last", "mine"])
    async def g(context: NodeContext) -> dict[str, Any]:
        await note(x=1)
        await note(x=2)
        memory = context.memory()
        return {
            "n": len(memory.events()),
            "last": memory.last("seen").data,
            "mine": [e.data for e in memory.events(node_id="note_2")],
        }

    assert await trioflow.run_async(g) == {"n": 2, "last": 2, "mine": [2]}
    assert await trioflow.run_async(g) == {"n": 2, "last": 2, "mine": [2]}  # a new run, a new log


async def test_artifacts_are_content_addressed_on_disk(tmp_path: Path) -> None:
    source = tmp_path / "input.txt"
    source.write_bytes(b"hello")

    @trioflow.tool(outputs=["a", "b", "c"])
    async def store(context: NodeContext) -> dict[str, str]:
        store = context.artifacts()
        a = await store.put(b"hello")
        b = await store.put(source)
        c = await store.put(b"other")
        assert await store.get(a) == b"hello"
        assert store.path(a).read_bytes() == b"hello"
        with pytest.raises(ServiceError, match="not an artifact URI"):
            store.path("http://x")
        return {"a": a, "b": b, "c": c}

    @trioflow.graph_fn(name="g", outputs=["r"])
    async def g() -> Any:
        return await store()

    async with trioflow.open_runtime(artifacts_dir=tmp_path / "cas"):
        out = (await trioflow.run_async(g))["r"]
    assert (
        out["a"]
        == out["b"]
        == "cas://sha256/" + ("2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")
    )
    stored = [p for p in (tmp_path / "cas").rglob("*") if p.is_file()]
    assert len(stored) == 2  # no duplicate storage, no temp files left behind


async def test_kv_is_shared_by_the_runs_of_one_runtime() -> None:
    @trioflow.tool(outputs=["old"])
    async def bump(context: NodeContext) -> int:
        kv = context.kv()
        old = await kv.get("n", default=0)
        await kv.set("n", old + 1)
        if old == 1:
            await kv.delete("missing")  # deleting an absent key is fine
        return int(old)

    @trioflow.graph_fn(name="g", outputs=["old"])
    async def g() -> int:
        return (await bump())["old"]

    async with trioflow.open_runtime():
        assert [await trioflow.run_async(g) for _ in range(3)] == [
            {"old": 0},
            {"old": 1},
            {"old": 2},
        ]


async def test_a_failing_close_does_not_keep_the_others_from_closing() -> None:
    log: list[str] = []

    class Broken(Recorder):
        async def close(self) -> None:
            raise OSError("cannot close")

    trioflow.register_context_service("a", Recorder("a", log))
    trioflow.register_context_service("b", Broken("b", log))
    trioflow.register_context_service("c", Recorder("c", log))
    with pytest.raises(ServiceError, match="failed to close") as info:
        async with trioflow.open_runtime():
            pass
    assert isinstance(info.value.__cause__, OSError)
    assert log == ["start a", "start b", "start c", "close c", "close a"]


async def test_critical_works_for_services_with_slots(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Slotted:
        __slots__ = ("__weakref__", "value")

        def __init__(self) -> None:
            self.value = 0

        @trioflow.critical
        async def incr(self) -> None:
            current = self.value
            await trio.sleep(1)
            self.value = current + 1

    service = Slotted()
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(service.incr)
    assert service.value == 5
    assert trio.current_time() == 5


def test_run_blocking_threads_follow_the_runtime_cap_not_trios_40() -> None:
    import threading

    barrier = threading.Barrier(45, timeout=10)  # needs 45 threads at once

    class Pool(trioflow.Service):
        async def wait(self) -> None:
            await self.run_blocking(barrier.wait)

    pool = Pool()

    async def main() -> None:
        async with trioflow.open_runtime():
            async with trio.open_nursery() as nursery:
                for _ in range(45):
                    nursery.start_soon(pool.wait)

    trio.run(main)
