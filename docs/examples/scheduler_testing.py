"""Testing a hand-written scheduler with trioflow.testing.check_scheduler.

`schedule` runs each node in a task of its own: it waits for the node's dependencies, takes a
token from `graph.limiter` (leaf nodes only: a node holding a nested graph lends its place),
runs the body, and skips the dependents of a failed node. `BUGS` plants one classic bug at a
time; the kit finds each and shrinks it to a graph of one or two nodes.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from trioflow.testing import Workload, check_scheduler

BUGS = (
    "cap exceeded under a race",
    "dependent starts early",
    "swallowed failure",
    "orphan after cancel",
    "leaked token on failure",
    "nested-graph deadlock",
)


async def schedule(
    graph: Workload, *, max_concurrency: float, nursery: trio.Nursery, bug: str | None = None
) -> None:
    """Run every node of `graph`; raise the failures (trio's exception group) at the end."""
    done = {node: trio.Event() for node in graph.nodes}
    failed: set[str] = set()
    # The "race" bug keeps its own count of running nodes instead of using the limiter.
    running = [0]
    room = trio.Condition()
    nested: Callable[[Workload], Awaitable[Any]] = functools.partial(
        schedule, max_concurrency=max_concurrency, nursery=nursery, bug=bug
    )

    async def leaf(node: str) -> None:
        if bug == "cap exceeded under a race":
            async with room:
                while running[0] >= max_concurrency:
                    await room.wait()
            await trio.lowlevel.checkpoint()  # the bug: the check and the claim are apart
            running[0] += 1
            try:
                await graph.run(node)
            finally:
                running[0] -= 1
                async with room:
                    room.notify_all()
        elif bug == "leaked token on failure":
            await graph.limiter.acquire(node)
            await graph.run(node)
            graph.limiter.release(node)  # the bug: not in a `finally`
        else:
            async with graph.limiter.hold(node):
                await graph.run(node)

    async def one(node: str) -> None:
        deps = graph.deps[node]
        if bug == "dependent starts early":
            deps = deps[:-1]  # the bug: forgets to wait for the last dependency
        try:
            for dep in deps:
                await done[dep].wait()
            if failed & set(deps):
                failed.add(node)
                graph.skip(node)
                return
            if graph.subgraph(node) is None:
                await leaf(node)
            elif bug == "nested-graph deadlock":
                async with graph.limiter.hold(node):  # the bug: holds a token while it waits
                    await graph.run(node, nested=nested)
            else:
                await graph.run(node, nested=nested)
        except Exception:
            failed.add(node)
            if bug != "swallowed failure":  # the bug: the error is dropped here
                raise
        finally:
            done[node].set()

    if bug == "orphan after cancel":
        # The bug: node tasks live in the long-lived nursery, and the first failure returns
        # (raises) at once, leaving the other nodes running.
        finished = trio.Event()
        errors: list[Exception] = []

        async def tracked(node: str) -> None:
            try:
                await one(node)
            except Exception as exc:
                errors.append(exc)
                finished.set()
            if all(event.is_set() for event in done.values()):
                finished.set()

        for node in graph.nodes:
            nursery.start_soon(tracked, node)
        await finished.wait()
        if errors:
            raise errors[0]
        return
    async with trio.open_nursery() as own:
        for node in graph.nodes:
            own.start_soon(one, node)


def test_the_correct_scheduler_passes() -> None:
    check_scheduler(schedule)


def test_a_planted_bug_is_found_and_shrunk(bug: str = "dependent starts early") -> str:
    try:
        check_scheduler(functools.partial(schedule, bug=bug))
    except AssertionError as exc:
        return str(exc)
    raise AssertionError(f"the kit missed the planted bug {bug!r}")


if __name__ == "__main__":
    test_the_correct_scheduler_passes()
    print("the correct scheduler passed; with the bug planted:")
    print(test_a_planted_bug_is_found_and_shrunk())
