"""Property-testing your own graph with trioflow.testing, in about a dozen lines."""

import random

import trio
from hypothesis import given, strategies as st

import trioflow
from trioflow.testing import assert_cap_respected, caps, run_virtual, schedule_rngs


@trioflow.tool(outputs=["out"])
async def clean(x: int) -> int:
    await trio.sleep(abs(x) % 3)  # virtual seconds: the test takes no real time
    return abs(x)


@trioflow.tool(outputs=["total"])
async def total(xs: list[int]) -> int:
    return sum(xs)


@trioflow.graphify(name="pipeline", outputs=["total"])
def pipeline(xs):
    return total(xs=trioflow.map(clean, xs).out).total


@given(xs=st.lists(st.integers(-100, 100), max_size=20), cap=caps(), rng=schedule_rngs())
def test_pipeline(xs: list[int], cap: float, rng: random.Random) -> None:
    outcome = run_virtual(pipeline, {"xs": xs}, max_concurrency=cap, rng=rng)
    assert outcome.outputs == {"total": sum(abs(x) for x in xs)}
    assert_cap_respected(outcome.record, cap)
    assert outcome.leftover_tasks == 0 and outcome.leftover_tokens == 0


if __name__ == "__main__":
    test_pipeline()
    print("pipeline: every property held")
