"""The three error policies on one graph: a failing node, its dependents, an independent branch."""

from typing import Any

import trio
import trio.testing

import trioflow
from trioflow import NodeState


@trioflow.tool(outputs=["out"])
async def fetch(source: str) -> str:
    await trio.sleep(1)
    if source == "broken":
        raise ConnectionError(f"cannot reach {source}")
    return source.upper()


@trioflow.tool(outputs=["out"])
async def parse(text: str) -> int:
    await trio.sleep(1)
    return len(text)


@trioflow.graphify(name="report", outputs=["good", "bad"])
def report() -> dict[str, Any]:
    good = parse(text=fetch(source="ok").out)  # an independent branch
    bad = parse(text=fetch(source="broken").out)  # parse_2 depends on the failing fetch_2
    return {"good": good.out, "bad": bad.out}


async def main() -> None:
    with trio.fail_after(60):
        # fail_fast (default): the first failure cancels what runs; the run raises NodeFailed.
        try:
            await trioflow.run_async(report)
        except trioflow.NodeFailed as exc:
            print("fail_fast:", exc.node_id, repr(exc.__cause__))
            assert exc.record is not None
            assert exc.record.nodes["parse_2"].state is NodeState.SKIPPED

        # skip_dependents: independent work finishes, dependents are SKIPPED, then it raises.
        try:
            await trioflow.run_async(report, on_error="skip_dependents")
        except trioflow.NodeFailed as exc:
            assert exc.record is not None
            states = exc.record.states()
            print("skip_dependents:", {k: v.value for k, v in states.items()})
            assert states["parse_1"] is NodeState.DONE
            assert states["parse_2"] is NodeState.SKIPPED

        # collect: a RunResult with the outputs that could be computed, and the errors.
        result = await trioflow.run_async(report, on_error="collect")
        print("collect:", result.outputs, {k: e.type for k, e in result.errors.items()})
        assert result.outputs == {"good": 2}
        assert list(result.errors) == ["fetch_2"]


if __name__ == "__main__":
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
