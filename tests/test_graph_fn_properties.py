"""Property: random nested fan-outs under random caps, in virtual time.

Peak concurrency never exceeds the cap, every call runs exactly once, no limiter token is left
borrowed, and no task outlives the run.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import trio
import trio.testing
from helpers import Probe
from hypothesis import given, strategies as st

import trioflow
from trioflow.testing import live_tasks

# A tree: a leaf is a duration; ("gather", children) fans out in the body; ("tool", children)
# is a tool that awaits a nested graph_fn running its children (it must lend its slot).
leaves = st.integers(min_value=0, max_value=3)
trees = st.recursive(
    leaves,
    lambda children: st.tuples(
        st.sampled_from(["gather", "tool"]), st.lists(children, min_size=1, max_size=4)
    ),
    max_leaves=16,
)
caps = st.one_of(st.integers(min_value=1, max_value=4), st.just(math.inf))


def count_leaves(tree: Any) -> int:
    if isinstance(tree, int):
        return 1
    return sum(count_leaves(c) for c in tree[1])


@given(tree=trees, cap=caps)
def test_nested_fan_outs_respect_the_cap_and_run_each_call_once(tree: Any, cap: float) -> None:
    probe = Probe()
    ids = itertools.count()

    @trioflow.tool(outputs=["out"])
    async def leaf(key: int, seconds: int) -> int:
        await probe.work(key, seconds)
        return key

    async def run_tree(node: Any) -> None:
        if isinstance(node, int):
            await leaf(key=next(ids), seconds=node)
            return
        kind, children = node
        if kind == "gather":
            await trioflow.gather(*[(lambda c=c: run_tree(c)) for c in children])
        else:
            await holder(children=children)

    @trioflow.graph_fn(name="sub", outputs=["out"])
    async def sub(children: list[Any]) -> None:
        await trioflow.gather(*[(lambda c=c: run_tree(c)) for c in children])

    @trioflow.tool(outputs=["out"])
    async def holder(children: list[Any]) -> None:
        await sub(children=children)

    @trioflow.graph_fn(name="root", outputs=["out"])
    async def root() -> None:
        await run_tree(tree)

    async def main() -> None:
        baseline = live_tasks()
        with trio.fail_after(10_000):
            async with trioflow.open_runtime(max_concurrency=cap) as rt:
                await trioflow.run_async(root, max_concurrency=cap)
                if rt.global_limiter is not None:
                    assert rt.global_limiter.borrowed_tokens == 0
        assert live_tasks() == baseline

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    n = count_leaves(tree)
    assert probe.peak <= cap
    assert sorted(probe.calls) == list(range(n))
    assert set(probe.calls.values()) <= {1}
