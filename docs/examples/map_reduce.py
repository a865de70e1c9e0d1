"""graphify: the seed's map_reduce, then the same graph with projections and trioflow.map."""

from typing import Any

import trioflow


@trioflow.tool(outputs=["result"])
async def pick(items: list[int], index: int) -> int:
    return items[index]


@trioflow.tool(outputs=["out"])
async def work(x: int) -> int:
    return x * 2


@trioflow.tool(outputs=["sum"])
async def reduce_sum(xs: list[int]) -> int:
    return sum(xs)


# The seed example, as written: its shape depends on len(vals), so trioflow builds the graph
# when the inputs are known (the reference system silently returned 12 here).
@trioflow.graphify(name="map_reduce", inputs=["vals"], outputs=["sum"])
def map_reduce(vals: Any) -> Any:
    results = [pick(items=vals, index=i) for i in range(len(vals))]
    outs = [work(x=v.result) for v in results]  # fan-out
    total = reduce_sum(xs=[o.out for o in outs])  # fan-in
    return {"sum": total.sum}


# Projections instead of `pick`: vals[i] is resolved at run time.
@trioflow.graphify(name="map_reduce_projected", outputs=["sum"])
def map_reduce_projected(vals: Any) -> Any:
    outs = [work(x=vals[i]) for i in range(len(vals))]
    return reduce_sum(xs=[o.out for o in outs]).sum


# trioflow.map: one node that fans out over a list known only at run time, so the graph's
# shape no longer depends on the input and it compiles once, without inputs.
@trioflow.graphify(name="map_reduce_mapped", outputs=["sum"])
def map_reduce_mapped(vals: Any) -> Any:
    doubled = trioflow.map(work, vals)  # doubled.out is the list of outputs, in item order
    return reduce_sum(xs=doubled.out).sum


def main() -> None:
    assert trioflow.run(map_reduce, inputs={"vals": [1, 2, 3, 4]}) == {"sum": 20}
    assert trioflow.run(map_reduce, inputs={"vals": []}) == {"sum": 0}
    assert trioflow.run(map_reduce_projected, inputs={"vals": [1, 2, 3, 4]}) == {"sum": 20}
    assert trioflow.run(map_reduce_mapped, inputs={"vals": [1, 2, 3, 4]}) == {"sum": 20}

    try:
        map_reduce.compile()  # no inputs: len(vals) is not known
    except trioflow.GraphBuildError as exc:
        print(exc.code, "-", exc.hint)

    graph = map_reduce.compile(vals=[1, 2])
    print(graph.topological_order())
    print(graph.to_mermaid())
    again = trioflow.TaskGraph.from_dict(graph.to_dict())
    assert again == graph and again.content_hash == graph.content_hash
    print(len(map_reduce_mapped.compile().nodes), "nodes in the mapped graph")


if __name__ == "__main__":
    main()
