"""graphify: mistakes the trace catches, and a recursion that is allowed."""

import json
from typing import Any

import trioflow


@trioflow.tool(outputs=["out"])
async def add(a: int, b: int) -> int:
    return a + b


@trioflow.tool(outputs=["rest"])
async def tail(xs: list[int]) -> list[int]:
    return xs[1:]


@trioflow.tool(outputs=["text"])
async def label(n: int) -> str:
    return f"total {n}"  # text is built here, where the value is real


# A mistake: an f-string of a ref would pass the text "OutputRef(...)" to the tool.
@trioflow.graphify(outputs=["text"])
def as_text(x: Any) -> Any:
    return label(n=f"total {add(a=x, b=1).out}").text


# Right: the recursion ends behind a test of an input's value (each nested run is traced
# with its own inputs), and the text is built inside a tool.
@trioflow.graphify(outputs=["total"])
def total(xs: Any) -> Any:
    if len(xs) == 0:
        return 0
    return add(a=xs[0], b=total(xs=tail(xs=xs).rest).total).out


# A mistake: no test ends this one, so every run would nest it again, forever.
@trioflow.graphify(outputs=["total"])
def forever(xs: Any) -> Any:
    return add(a=1, b=forever(xs=xs).total).out


# Defaults are part of the graph, so a graph read back from JSON runs without them.
@trioflow.graphify(outputs=["text"])
def report(xs: Any, offset: Any = 100) -> Any:
    return label(n=add(a=total(xs=xs).total, b=offset).out).text


def main() -> None:
    for graph in (as_text, forever):
        try:
            graph.compile()
        except trioflow.GraphBuildError as exc:
            print(f"{exc.code}: {exc.message}")
            assert exc.code in ("ref-as-text", "recursive-graph")
        else:
            raise AssertionError("the trace should have refused this graph")

    assert trioflow.run(total, inputs={"xs": [1, 2, 3]}) == {"total": 6}

    stored = json.dumps(report.compile().to_dict())
    again = trioflow.TaskGraph.from_dict(json.loads(stored))
    print(again.defaults, trioflow.run(again, inputs={"xs": [1, 2]}))
    assert trioflow.run(again, inputs={"xs": [1, 2]}) == {"text": "total 103"}


if __name__ == "__main__":
    main()
