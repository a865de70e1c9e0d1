"""The outputs rule: what a tool (or a graph) may return for its declared outputs."""

import trioflow


@trioflow.tool(outputs=["n"])
async def bare() -> int:
    return 6  # one declared output: a bare value


@trioflow.tool(outputs=["n"])
async def keyed() -> dict[str, int]:
    return {"n": 6}  # a dict with the key "n" is the outputs dict


@trioflow.tool(outputs=["n"])
async def a_dict_value() -> dict[str, int]:
    return {"count": 6}  # no key "n", and "count" is no typo of it: the value itself


@trioflow.tool(outputs=["n"])
async def typo() -> dict[str, int]:
    return {"N": 6}  # a typo of "n": refused, not taken as the value


@trioflow.tool(outputs=["lo", "hi"])
async def two() -> dict[str, int]:
    return {"lo": 1, "hi": 9}  # several outputs: exactly those keys


@trioflow.graph_fn(outputs=["results"])
async def calls() -> list[dict[str, object]]:
    return [await bare(), await keyed(), await a_dict_value(), await two()]


@trioflow.graph_fn(outputs=["n"])
async def calls_typo() -> object:
    return await typo()


def main() -> None:
    results = trioflow.run(calls)["results"]
    print(results)
    assert results == [{"n": 6}, {"n": 6}, {"n": {"count": 6}}, {"lo": 1, "hi": 9}]
    try:
        trioflow.run(calls_typo)
    except trioflow.NodeFailed as exc:
        print(exc.node_id, "failed:", exc.__cause__)
        assert "did you mean its output 'n'?" in str(exc.__cause__)


if __name__ == "__main__":
    main()
