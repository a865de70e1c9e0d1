"""Getting started: two tools and a reactive graph, run from synchronous code."""

import trio

import trioflow


@trioflow.tool(outputs=["y"])
async def shout(x: str) -> dict[str, str]:
    await trio.sleep(0.01)  # stands for real I/O
    return {"y": x.upper()}


@trioflow.tool(outputs=["n"])
def count(ys: list[str]) -> int:  # a sync tool runs in a worker thread
    return sum(len(y) for y in ys)


@trioflow.graph_fn(name="batch", outputs=["ys", "n"], max_concurrency=4)
async def batch(items: list[str], *, context: trioflow.NodeContext) -> dict[str, object]:
    results = await trioflow.gather(*(shout(x=v) for v in items))  # fan-out / fan-in
    ys = [r["y"] for r in results]
    total = await count(ys=ys)
    context.logger().info("shouted %d items", len(ys))
    return {"ys": ys, "n": total["n"]}


def main() -> None:
    result = trioflow.run(batch, inputs={"items": ["a", "bb", "ccc"]}, record=True)
    print(result.outputs)
    for node_id, node in result.record.nodes.items():
        print(f"{node_id:8} {node.state.value:6} attempts={node.attempts}")
    assert result.outputs == {"ys": ["A", "BB", "CCC"], "n": 6}


if __name__ == "__main__":
    main()
