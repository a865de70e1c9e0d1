"""Property-testing your own graph with trioflow.testing, in about a dozen lines."""

import random
from typing import Any

import trio
from hypothesis import given, strategies as st

import trioflow
from trioflow.testing import (
    assert_all_finished,
    assert_cap_respected,
    assert_no_leftover_tokens,
    caps,
    run_virtual,
    schedule_rngs,
)


@trioflow.tool(outputs=["out"])
async def clean(x: int) -> int:
    await trio.sleep(abs(x) % 3)  # virtual seconds: the test takes no real time
    return abs(x)


@trioflow.tool(outputs=["total"])
async def total(xs: list[int]) -> int:
    return sum(xs)


@trioflow.graphify(name="pipeline", outputs=["total"])
def pipeline(xs: Any) -> Any:
    return total(xs=trioflow.map(clean, xs).out).total


# The rng shuffles the order in which the map admits its items, so under a cap smaller than
# the list each example runs the items in an order of its own.
@given(xs=st.lists(st.integers(-100, 100), max_size=20), cap=caps(), rng=schedule_rngs())
def test_pipeline(xs: list[int], cap: float, rng: random.Random) -> None:
    outcome = run_virtual(pipeline, {"xs": xs}, max_concurrency=cap, rng=rng)
    assert outcome.outputs == {"total": sum(abs(x) for x in xs)}
    assert_cap_respected(outcome.record, cap)
    assert_all_finished(outcome.record)
    assert_no_leftover_tokens(outcome)
    assert outcome.leftover_tasks == 0


if __name__ == "__main__":
    test_pipeline()
    print("pipeline: every property held")
