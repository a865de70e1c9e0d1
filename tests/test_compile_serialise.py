"""`TaskGraph.to_dict()`/`from_dict()`: the JSON form is stable and round-trips exactly.

`data/taskgraph_golden.json` holds the `to_dict()` output of the graphs below as the
hand-written cattrs hooks produced it (before the generated hooks replaced them); the generated
hooks must give byte-identical JSON, so stored graphs and their content hashes stay valid.
Regenerate it only on purpose (the import paths name this module, so import it):
`python -c "import sys; sys.path[:0] = ['.', 'tests']; import test_compile_serialise as t; t.write_golden()"`.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Any

from hypothesis import given, strategies as st

import trioflow

GOLDEN = pathlib.Path(__file__).parent / "data" / "taskgraph_golden.json"


@trioflow.tool(outputs=["result"])
async def pick(items: list[int], index: int) -> int:
    return items[index]


@trioflow.tool(outputs=["out"])
async def work(x: int) -> int:
    return x * 2


@trioflow.tool(outputs=["sum"])
async def reduce_sum(xs: list[int]) -> int:
    return sum(xs)


@trioflow.tool(outputs=["items", "meta"])
async def load() -> dict[str, object]:
    return {"items": [10, 20, 30], "meta": {"scale": 3}}


@trioflow.graphify(name="map_reduce", inputs=["vals"], outputs=["sum"])
def map_reduce(vals):  # type: ignore[no-untyped-def]
    results = [pick(items=vals, index=i) for i in range(len(vals))]
    outs = [work(x=v.result) for v in results]
    return {"sum": reduce_sum(xs=[o.out for o in outs]).sum}


@trioflow.graphify(name="constants", outputs=["y"])
def constants(vals, cfg):  # type: ignore[no-untyped-def]
    a = work(x=vals[0])
    b = pick(items=[a.out, (1, {"k": cfg["depth"]}), {"$odd": None}, 2.5, True, "s"], index=0)
    return b.result


@trioflow.graphify(name="projections", outputs=["a", "b", "c"])
def projections(vals):  # type: ignore[no-untyped-def]
    loaded = load()
    return {
        "a": work(x=vals[1]).out,
        "b": work(x=loaded.items[2]).out,
        "c": [work(x=loaded["meta"]["scale"]).out, (vals, {"$k": loaded.meta})],
    }


@trioflow.graphify(name="mapped", outputs=["sum", "raw"])
def mapped(xs):  # type: ignore[no-untyped-def]
    m = trioflow.map(work, xs)
    return {"sum": reduce_sum(xs=m.out).sum, "raw": m.out}


@trioflow.graphify(name="nested", outputs=["total"])
def nested(vals):  # type: ignore[no-untyped-def]
    return map_reduce(vals=vals).sum


@trioflow.graphify(name="empty", outputs=["same"])
def empty(vals):  # type: ignore[no-untyped-def]
    return vals


def graphs() -> dict[str, trioflow.TaskGraph]:
    return {
        "map_reduce": map_reduce.compile(vals=[1, 2, 3]),
        "constants": constants.compile(),
        "projections": projections.compile(),
        "mapped": mapped.compile(),
        "nested": nested.compile(),
        "empty": empty.compile(),
    }


def dumps(data: Any) -> str:
    return json.dumps(data, indent=1)  # key order matters: no sort_keys


def test_to_dict_is_byte_identical_to_the_stored_form() -> None:
    golden = json.loads(GOLDEN.read_text())
    for name, graph in graphs().items():
        data = graph.to_dict()
        assert dumps(data) == dumps(golden[name]["data"]), name
        assert graph.content_hash == golden[name]["hash"], name


def test_stored_graphs_read_back_equal_to_a_fresh_compile() -> None:
    golden = json.loads(GOLDEN.read_text())
    for name, graph in graphs().items():
        again = trioflow.TaskGraph.from_dict(golden[name]["data"])
        assert again == graph, name
        assert dumps(again.to_dict()) == dumps(golden[name]["data"]), name


def write_golden() -> None:
    out = {n: {"data": g.to_dict(), "hash": g.content_hash} for n, g in graphs().items()}
    GOLDEN.write_text(dumps(out) + "\n")


# -- any graph round-trips ------------------------------------------------------------------------

_keys = st.text(alphabet="ab$_k", min_size=1, max_size=3)
_path = st.lists(st.one_of(st.integers(0, 3), _keys), max_size=2).map(tuple)
_refs = st.one_of(
    st.builds(trioflow.InputRef, st.sampled_from(["vals", "cfg"]), _path),
    st.builds(trioflow.OutputRef, st.just("n_1"), st.sampled_from(["out", "meta"]), _path),
)
_constants = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=3)
)
_trees = st.recursive(
    st.one_of(_constants, _refs),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(_keys, inner, max_size=3),
    ),
    max_leaves=8,
)


@given(
    args=st.dictionaries(st.sampled_from(["x", "y", "z"]), _trees, max_size=3),
    outputs=st.dictionaries(st.sampled_from(["a", "b"]), _trees, min_size=1, max_size=2),
    defaults=st.dictionaries(st.sampled_from(["cfg"]), _trees, max_size=1),
    kind=st.sampled_from(["tool", "map", "graph"]),
)
def test_any_graph_round_trips_through_json(
    args: dict[str, Any], outputs: dict[str, Any], defaults: dict[str, Any], kind: str
) -> None:
    first = trioflow.NodeSpec(id="n_1", tool="n", outputs=("out", "meta"))
    second = trioflow.NodeSpec(
        id="m_1",
        tool="m",
        args=args,
        deps=("n_1",),
        outputs=("out",),
        kind=kind,  # type: ignore[arg-type]
        map_param="x" if kind == "map" else None,
        target="pkg.mod:m",
    )
    graph = trioflow.TaskGraph(
        name="g",
        inputs=("vals", "cfg"),
        nodes={"n_1": first, "m_1": second},
        outputs=outputs,
        defaults=defaults,
    )
    text = json.dumps(graph.to_dict())
    again = trioflow.TaskGraph.from_dict(json.loads(text))
    assert again == graph
    assert json.dumps(again.to_dict()) == text
    assert ("defaults" in json.loads(text)) == bool(defaults)  # left out when empty
    # The content hash is written node by node, but over the very bytes of the sorted dump.
    canonical = json.dumps(graph.to_dict(), sort_keys=True, separators=(",", ":"), default=repr)
    assert graph.content_hash == hashlib.sha256(canonical.encode()).hexdigest()
