"""The tracer's fast paths build the same graphs as the general ones, and the content hash
still sees every change.

Tracing takes shortcuts for the common calls (keywords only, constants, output refs and lists
of them; NodeRef output refs made with the node; NodeSpecs and OutputRefs made by setting their
slots) and `content_hash` writes its JSON by hand. These tests pin what those shortcuts must not
change.
"""

from __future__ import annotations

import copy
import functools
import gc
import hashlib
import json
import pickle
from collections.abc import Callable
from typing import Any
from unittest import mock

import attrs
import pytest
from hypothesis import given, strategies as st

import trioflow
from trioflow import GraphBuildError, NodeSpec, OutputRef, TaskGraph
from trioflow._gcpause import promote_young


@trioflow.tool(outputs=["out"])
async def work(x: int) -> int:
    return x * 2


@trioflow.tool(outputs=["total"])
async def total(xs: list[int], scale: int = 1) -> int:
    return sum(xs) * scale


@trioflow.tool(outputs=["id", "outputs", "_hidden", "_not_a_value", "plain"])
async def odd_names() -> dict[str, int]:
    return {"id": 1, "outputs": 2, "_hidden": 3, "_not_a_value": 4, "plain": 5}


# -- NodeRef ---------------------------------------------------------------------------------------


def test_an_output_is_one_ref_by_attribute_and_by_key() -> None:
    @trioflow.graphify(outputs=["out"])
    def g() -> Any:
        ref = work(x=1)
        assert ref.out is ref["out"]
        assert type(ref.out) is OutputRef and ref.out == OutputRef("work_1", "out")
        return ref.out

    g.compile()


def test_outputs_named_like_the_ref_s_own_attributes_are_reached_by_key() -> None:
    @trioflow.graphify(outputs=["out"])
    def g() -> Any:
        ref = odd_names()
        assert ref.id == "odd_names_1" and ref.outputs == odd_names.outputs
        assert ref["id"] == OutputRef("odd_names_1", "id")
        assert ref["outputs"] == OutputRef("odd_names_1", "outputs")
        assert ref._hidden == ref["_hidden"] == OutputRef("odd_names_1", "_hidden")
        assert ref["_not_a_value"] == OutputRef("odd_names_1", "_not_a_value")
        with pytest.raises(GraphBuildError) as info:
            len(ref)  # the method named like an output still works
        assert info.value.code == "node-ref-not-a-value"
        with pytest.raises(AttributeError):
            ref.__nope__  # noqa: B018
        return ref.plain

    assert g.compile().outputs == {"out": OutputRef("odd_names_1", "plain")}


def test_an_unknown_output_is_a_build_error_by_attribute_and_by_key() -> None:
    @trioflow.graphify(outputs=["out"])
    def g() -> Any:
        ref = work(x=1)
        for get in (lambda: ref.nope, lambda: ref["nope"]):
            with pytest.raises(GraphBuildError) as info:
                get()
            assert info.value.code == "unknown-output"
        return ref.out

    g.compile()


# -- arguments -------------------------------------------------------------------------------------


def test_a_list_argument_is_copied_so_later_changes_do_not_reach_the_graph() -> None:
    @trioflow.graphify(outputs=["a", "b"])
    def g() -> Any:
        xs = [work(x=1).out]
        first = total(xs=xs)
        xs.append(work(x=2).out)  # the same list, changed after the call
        return {"a": first.total, "b": total(xs=xs).total}

    graph = g.compile()
    assert graph.nodes["total_1"].args["xs"] == [OutputRef("work_1", "out")]
    assert graph.nodes["total_1"].deps == ("work_1",)
    assert graph.nodes["total_2"].args["xs"] == [
        OutputRef("work_1", "out"),
        OutputRef("work_2", "out"),
    ]
    assert trioflow.run(g) == {"a": 2, "b": 6}


def test_the_general_path_still_checks_what_the_fast_one_skips() -> None:
    other = work  # a ref of another trace, inside a list, is refused like a bare one
    outer: list[Any] = []

    @trioflow.graphify(outputs=["out"])
    def first() -> Any:
        outer.append(other(x=1).out)
        return outer[0]

    first.compile()

    @trioflow.graphify(outputs=["out"])
    def second() -> Any:
        return total(xs=[1, outer[0]]).total

    with pytest.raises(GraphBuildError) as info:
        second.compile()
    assert info.value.code == "foreign-ref"


@pytest.mark.parametrize("bigger", [False, True])
def test_a_ref_of_another_trace_at_an_index_of_this_one_is_refused(bigger: bool) -> None:
    """A trace finds the node of a ref it made from the index the ref holds, checking that it
    made that very ref; a ref of another trace holds an index too: in range of this trace
    (`bigger=False`) or past its end (`bigger=True`), on the generated and general paths."""
    outer: list[Any] = []

    @trioflow.tool(outputs=["out"])
    async def elsewhere(x: int) -> int:  # (so that no id of `second` is one of `first`)
        return x

    @trioflow.graphify(outputs=["out"])
    def first() -> Any:
        for i in range(20 if bigger else 1):
            ref = elsewhere(x=i)
        outer.append(ref.out)
        return ref.out

    first.compile()
    assert outer[0]._at == (19 if bigger else 0)

    def second(how: str) -> Any:
        a = total(xs=[work(x=1).out])  # (total's recorder is now for a list of one ref)
        if how == "generated":
            return total(xs=[outer[0]]).total
        if how == "general":
            return total(xs=[a.total, outer[0]], scale=2).total
        return work(x=outer[0]).out

    for how in ("generated", "general", "bare"):
        graph = trioflow.graphify(name="second", outputs=["out"])(functools.partial(second, how))
        with pytest.raises(GraphBuildError) as info:
            graph.compile()
        assert info.value.code == "foreign-ref", how


def test_a_copy_of_a_ref_finds_its_node_by_id() -> None:
    """A ref equal to one the trace made, but not that object (a copy, an unpickled one), has
    no index: the trace finds its node by id, on every path."""

    @trioflow.graphify(outputs=["a", "b", "c"])
    def g() -> Any:
        one = work(x=1).out
        twin = pickle.loads(pickle.dumps(one))
        assert twin == one and twin is not one and not hasattr(twin, "_at")
        return {
            "a": work(x=twin).out,
            "b": total(xs=[twin, copy.copy(one)]).total,
            "c": copy.deepcopy(one),
        }

    graph = g.compile()
    assert graph.nodes["work_2"].deps == ("work_1",)
    assert graph.nodes["total_1"].deps == ("work_1",)
    assert graph.outputs["c"] == OutputRef("work_1", "out")
    assert trioflow.run(graph) == {"a": 4, "b": 4, "c": 2}


def test_a_plan_s_id_index_is_made_only_for_refs_a_trace_did_not_make() -> None:
    """A run of a traced graph finds the nodes of its outputs and of refs inside arguments
    from the refs themselves; a projected ref, or a graph read back, needs the plan's index."""
    from trioflow._plan import Plan, plan_of_graph

    def made(plan: Plan) -> bool:
        try:
            Plan.__dict__["index"].__get__(plan)  # (the slot, unset until first read)
        except AttributeError:
            return False
        return True

    @trioflow.graphify(outputs=["out", "pair"])
    def g() -> Any:
        parts = [work(x=i).out for i in range(3)]
        return {"out": total(xs=parts).total, "pair": plan_one(x={"a": parts[1]}).out}

    @trioflow.graphify(outputs=["out"])
    def projected() -> Any:
        return plan_one(x=[1, 2]).out[1]

    graph = g.compile()
    plan = plan_of_graph(graph)
    assert trioflow.run(graph) == {"out": 6, "pair": {"a": 2}}
    assert not made(plan)
    for other, answer in (
        (projected.compile(), {"out": 2}),
        (TaskGraph.from_dict(graph.to_dict()), {"out": 6, "pair": {"a": 2}}),
    ):
        plan = plan_of_graph(other)
        assert trioflow.run(other) == answer
        assert made(plan)
        assert plan.index == {node_id: i for i, node_id in enumerate(plan.ids)}
        assert plan.ids == list(other.nodes)


def test_a_node_ref_in_a_list_becomes_its_one_output() -> None:
    @trioflow.graphify(outputs=["out"])
    def g() -> Any:
        return total(xs=[work(x=1), 2, None], scale=3).total

    graph = g.compile()
    assert graph.nodes["total_1"].args == {"xs": [OutputRef("work_1", "out"), 2, None], "scale": 3}
    assert graph.nodes["total_1"].deps == ("work_1",)


def test_positional_and_partial_calls_bind_like_keyword_calls() -> None:
    @trioflow.graphify(outputs=["a", "b", "c"])
    def g() -> Any:
        return {
            "a": total([1, 2]).total,  # positional
            "b": total(xs=[1, 2]).total,  # an optional input left out
            "c": total(scale=2, xs=[1, 2]).total,  # every input, in another order
        }

    graph = g.compile()
    assert [n.args for n in graph.nodes.values()] == [
        {"xs": [1, 2]},
        {"xs": [1, 2]},
        {"scale": 2, "xs": [1, 2]},
    ]
    assert trioflow.run(g) == {"a": 3, "b": 3, "c": 6}


def test_fast_made_specs_and_refs_equal_the_classes_own() -> None:
    @trioflow.graphify(outputs=["out"])
    def g() -> Any:
        return total(xs=[work(x=1).out]).total

    graph = g.compile()
    for node in graph.nodes.values():
        again = NodeSpec(**attrs.asdict(node, recurse=False))
        assert again == node and repr(again) == repr(node) and hash(again.deps) == hash(node.deps)
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            node.id = "x"  # type: ignore[misc]
    ref = graph.nodes["total_1"].args["xs"][0]
    assert ref == OutputRef("work_1", "out") and hash(ref) == hash(OutputRef("work_1", "out"))
    assert TaskGraph.from_dict(graph.to_dict()) == graph


# -- the collector ---------------------------------------------------------------------------------


def test_a_big_trace_leaves_the_collector_on_and_its_graph_old() -> None:
    @trioflow.graphify(outputs=["out"])
    def g() -> Any:
        return total(xs=[work(x=i).out for i in range(1500)]).total

    assert gc.isenabled()
    gc.collect()
    graph = g.compile()
    assert gc.isenabled()
    nodes = graph.nodes  # made on their first read, the same way
    # Moved straight to the oldest generation, not scanned by a young collection on the way.
    old = {id(o) for o in gc.get_objects(generation=2)}
    assert all(id(node) in old for node in nodes.values())


def test_a_trace_leaves_a_disabled_collector_off() -> None:
    gc.disable()
    try:
        trioflow.graphify(outputs=["out"])(lambda: work(x=1).out).compile()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_promoting_keeps_the_objects_a_program_froze() -> None:
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        assert frozen > 0
        promote_young()  # would unfreeze them: it does nothing instead
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()


# -- content_hash ----------------------------------------------------------------------------------


def slow_hash(graph: TaskGraph) -> str:
    canonical = json.dumps(graph.to_dict(), sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(canonical.encode()).hexdigest()


_ids = st.text(alphabet='ab_1é"\\$!', min_size=1, max_size=4)
_atoms = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=3))


@st.composite
def graphs(draw: st.DrawFn) -> TaskGraph:
    """Nodes with odd ids (prefixes of each other, escapes, non-ASCII), refs shared between
    nodes as one object or as equal copies, lists of refs and constants, several arguments."""
    ids = draw(st.lists(_ids, min_size=1, max_size=6, unique=True))
    refs = [OutputRef(i, "out") for i in ids]
    nodes = {}
    for k, node_id in enumerate(ids):
        earlier = refs[:k]
        value = st.one_of(
            _atoms,
            st.sampled_from(earlier) if earlier else _atoms,
            st.builds(OutputRef, st.sampled_from(ids), st.sampled_from(["out", "b"])),
            st.lists(st.one_of(_atoms, st.sampled_from(earlier)) if earlier else _atoms),
        )
        args = draw(st.dictionaries(st.sampled_from(["x", "y", "$z", "a"]), value, max_size=3))
        deps = tuple(dict.fromkeys(r.node for r in trioflow._graph.iter_refs(args)))
        nodes[node_id] = NodeSpec(
            id=draw(st.sampled_from([node_id, node_id, "other"])),
            tool=draw(st.sampled_from(["t", "u"])),
            args=args,
            deps=deps,
            outputs=draw(st.sampled_from([("out",), ("out", "b")])),
            kind=draw(st.sampled_from(["tool", "map"])),
            map_param=draw(st.sampled_from([None, "x"])),
            target=draw(st.sampled_from(["", "m:t"])),
        )
    return TaskGraph(name="g", inputs=("vals",), nodes=nodes, outputs={"r": refs[-1]}, defaults={})


@given(graphs())
def test_the_content_hash_is_the_sha256_of_the_sorted_json(graph: TaskGraph) -> None:
    assert graph.content_hash == slow_hash(graph)


def test_a_graph_without_nodes_has_a_hash_too() -> None:
    graph = TaskGraph(name="g", inputs=("x",), nodes={}, outputs={"x": trioflow.InputRef("x")})
    assert graph.content_hash == slow_hash(graph)


def _base() -> TaskGraph:
    @trioflow.graphify(outputs=["out"])
    def g(vals: list[int]) -> Any:
        parts = [work(x=vals[i]) for i in range(2)]
        return total(xs=[p.out for p in parts], scale=2).total

    return g.compile()


def _changed(graph: TaskGraph, node_id: str, **changes: Any) -> TaskGraph:
    nodes = dict(graph.nodes)
    nodes[node_id] = attrs.evolve(nodes[node_id], **changes)
    return attrs.evolve(graph, nodes=nodes)


@pytest.mark.parametrize(
    "change",
    [
        lambda g: _changed(g, "total_1", tool="sum"),
        lambda g: _changed(g, "total_1", target="elsewhere:total"),
        lambda g: _changed(g, "total_1", kind="map", map_param="xs"),
        lambda g: _changed(g, "total_1", outputs=("total", "more")),
        lambda g: _changed(g, "total_1", deps=("work_1",)),
        lambda g: _changed(g, "total_1", args={**g.nodes["total_1"].args, "scale": 3}),
        lambda g: _changed(g, "total_1", args={**g.nodes["total_1"].args, "scale": "2"}),
        lambda g: _changed(g, "total_1", args={**g.nodes["total_1"].args, "scale": 2.0}),
        lambda g: _changed(
            g, "total_1", args={"xs": [OutputRef("work_2", "out"), OutputRef("work_1", "out")]}
        ),
        lambda g: _changed(
            g, "total_1", args={"xs": (OutputRef("work_1", "out"), OutputRef("work_2", "out"))}
        ),
        lambda g: _changed(g, "work_1", args={"x": trioflow.InputRef("vals", (1,))}),
        lambda g: _changed(g, "work_1", id="work_9"),
        lambda g: attrs.evolve(g, inputs=("vals", "more")),
        lambda g: attrs.evolve(g, name="other"),
        lambda g: attrs.evolve(g, outputs={"out": OutputRef("total_1", "total", (0,))}),
        lambda g: attrs.evolve(g, defaults={"vals": [1]}),
    ],
)
def test_any_change_changes_the_content_hash(change: Any) -> None:
    graph = _base()
    assert graph.content_hash == _base().content_hash  # the same graph, traced again
    changed = change(graph)
    assert json.dumps(changed.to_dict()) != json.dumps(graph.to_dict())  # (2 == 2.0, though)
    assert changed.content_hash != graph.content_hash
    assert changed.content_hash == slow_hash(changed)


def test_the_order_of_the_nodes_dict_is_not_content() -> None:
    graph = _base()  # the JSON's keys are sorted, as they always were
    reordered = attrs.evolve(graph, nodes=dict(reversed(list(graph.nodes.items()))))
    assert reordered.content_hash == graph.content_hash


# -- the plan built while tracing ----------------------------------------------------------------


@trioflow.tool(outputs=["out"], name="plan_one")
async def plan_one(x: Any = None, y: Any = None, z: Any = None) -> Any:
    return x


@trioflow.tool(outputs=["a", "b"], name="plan_two")
async def plan_two(x: Any = None, y: Any = None) -> dict[str, Any]:
    return {"a": x, "b": y}


def _plan_shape(plan: Any) -> dict[str, Any]:
    """A plan with its slot numbers replaced by what they hold (an output: node, position),
    its constants by their type and value, and its generated argument builders by what they
    build from slots that hold their own numbers."""
    from trioflow._plan import CONST, GATHER, GATHER1, SLOT, TREE, arg_values, fan_in_slots

    owner: dict[int, Any] = {}  # slot → (node, position), negative slots as list indexes
    size = len(plan.initial)
    for j, target in enumerate(plan.targets):
        for k in range(len(target.outputs)):
            owner[plan.slot(j, target.outputs[k]) % size] = ("output", j, k)

    def arg(kind: int, x: Any) -> Any:
        if kind == CONST:
            return ("constant", type(x), x)
        if kind in (SLOT, GATHER1):
            return owner[x % size]
        if kind == TREE:
            return ("tree", x)
        slots = fan_in_slots(x) if kind == GATHER else x  # (a GATHER2..4: the slots)
        return [owner[s % size] for s in slots]

    def built(args: Any) -> Any:  # what a run passes, with each slot holding what it holds
        slots = [owner.get(s) for s in range(size)]
        return list(args[0].build(slots, args, _Looked).items())

    return {
        "nodes": (plan.ids, plan.names, plan.kinds, [id(t) for t in plan.targets]),
        "how": (plan.fast, plan.executors, plan.index),
        "edges": ([list(d) for d in plan.dependents], plan.indegree),
        "maps": plan.map_params,
        "args": [
            [(name, kind, arg(kind, x)) for name, kind, x in arg_values(a)] for a in plan.args
        ],
        "built": [built(a) for a in plan.args],
        # Every slot starts unset, and every output has one of its own.
        "unset": set(plan.initial) <= {trioflow._plan.UNSET},
        "outputs": len(owner) == sum(len(t.outputs) for t in plan.targets),
        "size": size,
    }


@attrs.frozen
class _Looked:
    """What a ref (projected along a path) stands for in `_plan_shape`'s runs."""

    ref: Any
    path: tuple[Any, ...] = ()

    def __getitem__(self, key: Any) -> _Looked:
        return _Looked(self.ref, (*self.path, key))


_plan_atoms = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(max_size=2), st.floats(allow_nan=False)
)


@st.composite
def _programs(draw: st.DrawFn) -> list[tuple[str, dict[str, Any]]]:
    """A graphify body as data: each node's tool and its arguments, as recipes over the refs
    made so far (whole outputs, node refs, projections, fan-ins, mixed lists, tuples, dicts,
    the graph's input)."""
    program: list[tuple[str, dict[str, Any]]] = []
    for k in range(draw(st.integers(1, 8))):
        recipe = st.one_of(_plan_atoms.map(lambda v: ("const", v)), st.just(("input",)))
        if k:
            earlier = st.integers(0, k - 1)
            item = st.one_of(earlier.map(lambda j: ("ref", j)), recipe)
            recipe = st.one_of(
                recipe,
                earlier.map(lambda j: ("ref", j)),
                earlier.map(lambda j: ("noderef", j)),
                earlier.map(lambda j: ("path", j)),
                st.lists(earlier, max_size=6).map(lambda js: ("fanin", js)),
                st.lists(item, max_size=3).map(lambda xs: ("mixed", xs)),
                st.lists(earlier, max_size=2).map(lambda js: ("tuple", js)),
                earlier.map(lambda j: ("dict", j)),
            )
        tool = draw(st.sampled_from(["plan_one", "plan_two"]))
        params = ["x", "y", "z"] if tool == "plan_one" else ["x", "y"]
        names = draw(st.lists(st.sampled_from(params), unique=True, max_size=len(params)))
        program.append((tool, {name: draw(recipe) for name in names}))
    return program


def _body_for(program: list[tuple[str, dict[str, Any]]], other: str = "b") -> Any:
    """The body that makes `program`'s calls; a "ref" to a `plan_two` node is its output
    `other`. Two recipes beyond `_programs`' (see `_repeating_programs`): a ref equal to a
    node's output but made here ("copy"), and a node's last output ("second")."""
    tools = {"plan_one": plan_one, "plan_two": plan_two}

    def body(vals: Any) -> Any:
        refs: list[Any] = []

        def whole(j: int) -> Any:
            return refs[j]["out"] if "out" in refs[j].outputs else refs[j][other]

        def build(recipe: Any) -> Any:
            kind = recipe[0]
            if kind == "const":
                return recipe[1]
            if kind == "input":
                return vals
            if kind == "ref":
                return whole(recipe[1])
            if kind == "copy":
                ref = whole(recipe[1])
                return OutputRef(ref.node, ref.output)
            if kind == "second":
                ref = refs[recipe[1]]
                return ref[ref.outputs[-1]]
            if kind == "noderef":  # a one-output node's ref stands for its output
                j = recipe[1]
                return refs[j] if len(refs[j].outputs) == 1 else refs[j].a
            if kind == "path":
                return whole(recipe[1])[0]
            if kind == "fanin":
                return [whole(j) for j in recipe[1]]
            if kind == "mixed":
                return [build(item) for item in recipe[1]]
            if kind == "tuple":
                return tuple(whole(j) for j in recipe[1])
            return {"k": whole(recipe[1]), "c": 1}

        for tool, recipes in program:
            refs.append(tools[tool](**{name: build(r) for name, r in recipes.items()}))
        return {"out": [ref[out] for ref in refs for out in ref.outputs]}  # every output

    return body


def test_each_fan_in_width_reads_its_own_slots() -> None:
    """Fan-ins of every width the plan files differently (none, one, two to four slots in
    the arguments tuple, more through a getter), of first and of other outputs."""

    @trioflow.tool(outputs=["out", "twice"], name="fan_num")
    async def num(k: int) -> dict[str, int]:
        return {"out": k, "twice": 2 * k}

    @trioflow.tool(outputs=["out"], name="fan_listed")
    async def listed(xs: list[int]) -> list[int]:
        return xs

    @trioflow.graphify(outputs=["out"])
    def g() -> Any:
        nums = [num(k=k) for k in range(10)]
        firsts, seconds = [n.out for n in nums], [n.twice for n in nums]
        lists = [firsts[:n] for n in range(7)] + [firsts[::-1][:3], seconds[2:5], [seconds[9]]]
        return [listed(xs=xs).out for xs in lists]

    want = [list(range(n)) for n in range(7)] + [[9, 8, 7], [4, 6, 8], [18]]
    assert trioflow.run(g) == {"out": want}
    graph = g.compile()
    assert trioflow.run(TaskGraph.from_dict(graph.to_dict(), callables=graph.callables)) == {
        "out": want
    }


def _evaluate(program: list[tuple[str, dict[str, Any]]], vals: Any) -> Any:
    """What a run of `_body_for(program)` returns, computed directly: each node's outputs from
    its arguments' values (or "error" if some node's tool or projection fails)."""
    outs: list[dict[str, Any]] = []

    def whole(j: int) -> Any:
        return outs[j]["out"] if "out" in outs[j] else outs[j]["b"]

    def value(recipe: Any) -> Any:
        kind = recipe[0]
        if kind == "const":
            return recipe[1]
        if kind == "input":
            return vals
        if kind == "ref":
            return whole(recipe[1])
        if kind == "noderef":
            j = recipe[1]
            return outs[j]["out"] if "out" in outs[j] else outs[j]["a"]
        if kind == "path":
            return whole(recipe[1])[0]
        if kind == "fanin":
            return [whole(j) for j in recipe[1]]
        if kind == "mixed":
            return [value(item) for item in recipe[1]]
        if kind == "tuple":
            return tuple(whole(j) for j in recipe[1])
        return {"k": whole(recipe[1]), "c": 1}

    try:
        for tool, recipes in program:
            args = {name: value(r) for name, r in recipes.items()}
            if tool == "plan_one":
                outs.append({"out": args.get("x")})
            else:
                outs.append({"a": args.get("x"), "b": args.get("y")})
    except (LookupError, TypeError):
        return "error"
    return {"out": [value for out in outs for value in out.values()]}


@given(_programs(), st.sampled_from([[5, 6], ["s"], {0: "zero"}, None]))
def test_a_run_passes_every_node_the_values_its_arguments_name(
    program: list[tuple[str, dict[str, Any]]], vals: Any
) -> None:
    """The plan's arguments (a generated function per argument shape reading slots, constants
    and trees) give each node the values the body passed it: a run returns what evaluating
    the program directly does, traced once and run twice, and read back from its dict."""
    graph = trioflow.graphify(name="planned", outputs=["out"])(_body_for(program))
    want = _evaluate(program, vals)
    compiled = graph.compile()
    again = TaskGraph.from_dict(compiled.to_dict(), callables=compiled.callables)
    for target in (graph, graph, compiled, again):
        try:
            got = trioflow.run(target, inputs={"vals": vals})
        except trioflow.NodeFailed as exc:
            assert isinstance(exc.__cause__, LookupError | TypeError), exc
            got = "error"
        assert got == want


@given(_programs())
def test_the_plan_a_trace_builds_is_the_plan_lowering_builds(
    program: list[tuple[str, dict[str, Any]]],
) -> None:
    from trioflow._plan import _lower

    graph = trioflow.graphify(name="planned", outputs=["out"])(_body_for(program)).compile()
    traced = graph._lowered.plan
    assert traced is not None and traced.graph is graph
    assert _plan_shape(traced) == _plan_shape(_lower(graph))
    # A graph read back from its dict has no plan until its first run lowers it.
    again = TaskGraph.from_dict(graph.to_dict(), callables=graph.callables)
    assert again._lowered.plan is None
    assert _plan_shape(trioflow._plan.plan_of_graph(again)) == _plan_shape(traced)


def test_a_ref_to_an_output_a_node_lacks_is_a_build_error() -> None:
    @trioflow.tool(outputs=[], name="plan_none")
    async def plan_none() -> None:
        return None

    @trioflow.graphify(outputs=["out"])
    def bad() -> Any:
        ref = plan_none()
        return plan_one(x=OutputRef(ref.id, "missing"))

    with pytest.raises(GraphBuildError, match="has no output 'missing'"):
        bad.compile()


def test_a_graph_traced_for_one_run_is_freed_with_its_plan() -> None:
    # The run takes the plan out of a graph traced for it alone, so the two do not hold each
    # other: dropping the plan frees the graph at once, without the cyclic collector.
    import weakref

    from trioflow._schedule import plan_for

    @trioflow.graphify(outputs=["out"])
    def shaped(vals: list[int]) -> Any:
        return plan_one(x=[plan_one(x=v).out for v in vals]).out

    gc.disable()
    try:
        plan = plan_for(shaped, {"vals": [1, 2, 3]})
        assert len(plan.ids) == 4
        graph = weakref.ref(plan.graph)
        del plan
        assert graph() is None
    finally:
        gc.enable()


# -- graph.nodes, made when first read -------------------------------------------------------------


def _expected_nodes(graph: TaskGraph, calls: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The NodeSpecs a trace of `calls` (tool name, the arguments as passed) must hold, built
    here the eager way: ids counted per tool, node refs replaced by their one output, lists
    copied, and the dependencies in the order the arguments name them (depth first), once."""

    def prepare(value: Any, deps: dict[str, None]) -> Any:
        if isinstance(value, trioflow.NodeRef):
            value = value[value.outputs[0]]
        if isinstance(value, OutputRef):
            deps[value.node] = None
            return value
        if isinstance(value, list):
            return [prepare(v, deps) for v in value]
        if isinstance(value, tuple):
            return tuple(prepare(v, deps) for v in value)
        if isinstance(value, dict):
            return {k: prepare(v, deps) for k, v in value.items()}
        return value

    counts: dict[str, int] = {}
    nodes = {}
    for tool, kwargs in calls:
        counts[tool] = counts.get(tool, 0) + 1
        node_id = f"{tool}_{counts[tool]}"
        deps: dict[str, None] = {}
        args = {k: prepare(v, deps) for k, v in kwargs.items()}
        target = graph.callables[tool]
        nodes[node_id] = NodeSpec(
            id=node_id,
            tool=tool,
            args=args,
            deps=tuple(deps),
            outputs=target.outputs,
            target=f"{target.fn.__module__}:{target.fn.__qualname__}",
        )
    return nodes


@given(_programs())
def test_the_nodes_a_trace_makes_when_read_are_the_ones_it_recorded(
    program: list[tuple[str, dict[str, Any]]],
) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []  # every call the trace sees, as passed
    body = _body_for(program)
    original_call = trioflow.Tool.__call__

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append((self.name, {k: _snapshot(v) for k, v in kwargs.items()}))
        return original_call(self, *args, **kwargs)

    trioflow.Tool.__call__ = spy  # type: ignore[method-assign]
    try:
        graph = trioflow.graphify(name="planned", outputs=["out"])(body).compile()
    finally:
        trioflow.Tool.__call__ = original_call  # type: ignore[method-assign]
    assert graph.nodes == _expected_nodes(graph, calls)
    assert list(graph.nodes) == [n.id for n in graph.nodes.values()]


def _snapshot(value: Any) -> Any:
    """An argument as it was passed (containers copied: the trace may replace them)."""
    if isinstance(value, list):
        return [_snapshot(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_snapshot(v) for v in value)
    if isinstance(value, dict):
        return {k: _snapshot(v) for k, v in value.items()}
    return value


def test_a_traced_graph_makes_its_nodes_once_on_first_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[int] = []
    make = trioflow._compile._make_nodes

    def counting(*args: Any) -> Any:
        nodes = make(*args)
        made.append(len(nodes))
        return nodes

    monkeypatch.setattr(trioflow._compile, "_make_nodes", counting)

    @trioflow.graphify(outputs=["out"])
    def g() -> Any:
        return total(xs=[work(x=i).out for i in range(3)]).total

    graph = g.compile()
    assert trioflow.run(graph) == {"out": 6}  # a run needs the plan only
    assert made == []
    nodes = graph.nodes
    assert (
        made == [4]
        and graph.nodes is nodes
        and list(nodes)
        == [
            "work_1",
            "work_2",
            "work_3",
            "total_1",
        ]
    )
    assert graph.edges == [("work_1", "total_1"), ("work_2", "total_1"), ("work_3", "total_1")]
    assert made == [4]


def test_a_run_of_a_graph_with_a_map_node_does_not_make_its_nodes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A map node's items input is in the plan: its run needs no NodeSpec either."""
    from trioflow._plan import _lower

    made: list[int] = []
    make = trioflow._compile._make_nodes
    monkeypatch.setattr(
        trioflow._compile, "_make_nodes", lambda *args: made.append(1) or make(*args)
    )

    @trioflow.graphify(outputs=["out"])
    def g() -> Any:
        return total(xs=trioflow.map(work, [1, 2, 3]).out).total

    graph = g.compile()
    assert trioflow.run(graph) == {"out": 12}
    assert made == []
    assert graph._lowered.plan.map_params == {0: "x"}
    assert _lower(graph).map_params == {0: "x"}  # (reads the nodes: made now)
    assert made == [1]


def test_a_graph_whose_nodes_were_never_read_is_the_same_data() -> None:
    import copy

    @trioflow.graphify(outputs=["out"])
    def g() -> Any:
        ref = work(x=2)
        return total(xs=[ref.out, work(x=ref.out).out], scale=3).total

    read = g.compile()
    assert len(read.nodes) == 3
    fresh = [g.compile() for _ in range(5)]  # each checked before anything reads its nodes
    assert fresh[0] == read and read == fresh[1]
    assert repr(fresh[2]) == repr(read)
    assert fresh[3].to_dict() == read.to_dict()
    assert fresh[4].content_hash == read.content_hash
    again = copy.copy(g.compile())  # (pickle's protocol: the state holds the nodes)
    assert again == read and again.nodes == read.nodes
    assert attrs.evolve(g.compile(), name="other").nodes == read.nodes


def test_a_missing_graph_attribute_is_still_an_attribute_error() -> None:
    graph = trioflow.graphify(outputs=["out"])(lambda: work(x=1).out).compile()
    with pytest.raises(AttributeError, match="'TaskGraph' object has no attribute 'nodez'"):
        graph.nodez  # type: ignore[attr-defined]  # noqa: B018
    assert not hasattr(graph, "fn")
    assert graph.nodes["work_1"].deps == ()


# -- recorders: generated code for the common calls (`_compile.recorder`, `_plan.filing`) ---------
# A recorder guards every argument and returns None at the first one it does not expect. These
# trace random bodies that call one tool many times with the same names, mixing the arguments a
# recorder takes (constants, whole refs, lists of them of any length, repeated refs) with those it
# must leave to the general path (second outputs, projections, node refs, mixed lists, tuples,
# dicts, refs equal to ours but not ours, the graph's input), against a trace without them.

_fileable = st.sampled_from(["const", "ref", "fanin", "fanin", "fanin"])
_other = st.sampled_from(["noderef", "path", "mixed", "tuple", "dict", "input", "copy", "second"])


@st.composite
def _repeating_programs(draw: st.DrawFn) -> list[tuple[str, dict[str, Any]]]:
    """Calls of `plan_one` (and now and then `plan_two`) with the same names, in recipes of
    `_body_for`; `("copy", j)` is a ref equal to node j's output but made by the body."""
    names = draw(st.lists(st.sampled_from(["x", "y"]), unique=True, max_size=2))
    kinds = {name: draw(_fileable) for name in names}  # what most calls pass
    program: list[tuple[str, dict[str, Any]]] = [("plan_one", {})]
    for k in range(1, draw(st.integers(2, 14))):
        earlier = st.integers(0, k - 1)
        recipes: dict[str, Any] = {}
        for name in names:
            kind = draw(st.sampled_from([kinds[name]] * 4 + [draw(_fileable), draw(_other)]))
            if kind == "const":
                recipes[name] = ("const", draw(st.one_of(st.none(), st.integers(), st.text())))
            elif kind == "ref":
                recipes[name] = ("ref", draw(earlier))
            elif kind == "fanin":  # (duplicates too)
                recipes[name] = ("fanin", draw(st.lists(earlier, max_size=7)))
            elif kind == "mixed":
                item = st.one_of(earlier.map(lambda j: ("ref", j)), st.just(("const", 1)))
                recipes[name] = ("mixed", draw(st.lists(item, max_size=3)))
            elif kind == "tuple":
                recipes[name] = ("tuple", draw(st.lists(earlier, max_size=2)))
            elif kind == "input":
                recipes[name] = ("input",)
            else:
                recipes[name] = (kind, draw(earlier))
        program.append((draw(st.sampled_from(["plan_one"] * 5 + ["plan_two"])), recipes))
    return program


def _compile(program: list[tuple[str, dict[str, Any]]]) -> trioflow.TaskGraph:
    body = _body_for(program, other="a")
    return trioflow.graphify(name="filed", outputs=["out"])(body).compile()


def _filed_and_general(
    compile: Callable[[], trioflow.TaskGraph],
) -> tuple[trioflow.TaskGraph, trioflow.TaskGraph]:
    """A graph compiled as usual, and again with no generated recorders (every call takes the
    general path); their plans have the same shape."""
    filed = compile()
    with mock.patch("trioflow._compile.recorder", lambda names, code, flags: None):
        general = compile()
    assert filed._lowered.plan is not None and general._lowered.plan is not None
    assert _plan_shape(filed._lowered.plan) == _plan_shape(general._lowered.plan)
    return filed, general


@given(_repeating_programs())
def test_a_filed_call_is_traced_as_the_general_path_traces_it(
    program: list[tuple[str, dict[str, Any]]],
) -> None:
    filed, general = _filed_and_general(functools.partial(_compile, program))
    assert filed.nodes == general.nodes
    assert filed.to_dict() == general.to_dict()


@given(_repeating_programs(), st.sampled_from([[5, 6], {0: "zero"}, None]))
def test_a_run_of_a_filed_graph_gives_what_the_general_one_does(
    program: list[tuple[str, dict[str, Any]]], vals: Any
) -> None:
    def run(graph: trioflow.TaskGraph) -> Any:
        try:
            return trioflow.run(graph, inputs={"vals": vals})
        except trioflow.NodeFailed as exc:
            return type(exc.__cause__)

    filed = _compile(program)
    with mock.patch("trioflow._compile.recorder", lambda names, code, flags: None):
        general = _compile(program)
    assert run(filed) == run(general)


def test_calls_with_the_names_of_the_last_one_take_the_recorder() -> None:
    """A fan-out and fan-ins of every width, by one tool with the same names: only the first
    call of each names and kinds takes the general path (a list of any length is one kind)."""
    from trioflow._compile import GraphTracer

    general = GraphTracer._file
    seen: list[str] = []

    def spy(self: GraphTracer, callee: Any, *args: Any) -> Any:
        seen.append(callee.name)
        return general(self, callee, *args)

    @trioflow.graphify(outputs=["out"])
    def g() -> Any:
        first = plan_one(x=1, y=None)  # general: the first call
        refs = [plan_one(x=k, y=[first.out]) for k in range(9)]  # general once: another kind
        fans = [plan_one(x=k, y=[r.out for r in refs[:k]]) for k in range(9)]
        a, b = refs[0].out, fans[3].out
        for twice in ([a, a], [a, b, a], [b, a, a, b], [a, b, a, b, b, a]):  # one dep each
            fans.append(plan_one(x=2, y=twice))
        whole = plan_one(y=first.out, x="a")  # general: other names
        again = plan_one(y=whole.out, x="b")
        return [r.out for r in [*fans, again]]

    with mock.patch.object(GraphTracer, "_file", spy):
        graph = g.compile()
    assert seen == ["plan_one"] * 3
    with mock.patch("trioflow._compile.recorder", lambda names, code, flags: None):
        general = g.compile()
    assert graph._lowered.plan is not None and general._lowered.plan is not None
    assert _plan_shape(graph._lowered.plan) == _plan_shape(general._lowered.plan)
    plan = graph._lowered.plan
    assert plan.indegree[-6:-2] == [1, 2, 2, 2]
    assert graph.nodes["plan_one_21"].deps == ("plan_one_2", "plan_one_14")
    assert trioflow.run(graph)["out"][-2] == 2


def test_a_call_with_the_last_names_in_another_order_takes_the_recorder() -> None:
    """A recorder takes a call by its names in any order (a Python call's keywords have none),
    filing its arguments in the order of the names it was made for; other names, or one name
    more or fewer, take the general path, which checks them as ever."""
    from trioflow._compile import GraphTracer

    general = GraphTracer._file
    seen: list[tuple[str, ...]] = []

    def spy(self: GraphTracer, callee: Any, names: tuple[str, ...], *args: Any) -> Any:
        seen.append(names)
        return general(self, callee, names, *args)

    @trioflow.graphify(outputs=["out"])
    def g() -> Any:
        first = plan_one(x=1, y=[])  # general: the first call
        second = plan_one(y=[first.out], x=2)  # the recorder, names swapped
        third = plan_one(x=3, y=[second.out], z=None)  # general: a name more
        with pytest.raises(trioflow.ConfigTypeError, match="nope"):
            plan_one(x=4, nope=[third.out])  # general: another name, refused before filing
        return plan_one(y=[third.out], x=5).out  # general: the names of `third` were last

    with mock.patch.object(GraphTracer, "_file", spy):
        graph = g.compile()
    assert seen == [("x", "y"), ("x", "y", "z"), ("y", "x")]
    assert list(graph.nodes["plan_one_2"].args.items()) == [
        ("x", 2),
        ("y", [OutputRef("plan_one_1", "out")]),
    ]
    assert graph.nodes["plan_one_2"].deps == ("plan_one_1",)
    assert trioflow.run(graph) == {"out": 5}


_ODD = [
    ("path", 1),
    ("second", 1),
    ("copy", 1),
    ("noderef", 1),
    ("input",),
    ("tuple", [1]),
    ("dict", 1),
    ("mixed", [("ref", 1), ("const", 2)]),
    ("mixed", [("path", 1)]),
    ("mixed", [("second", 1), ("ref", 0)]),
    ("mixed", [("copy", 1)]),
    ("mixed", [("ref", 0), ("ref", 1), ("ref", 0), ("copy", 1), ("ref", 0)]),
    ("const", 3),
    ("ref", 1),
    ("fanin", [1]),
]


@pytest.mark.parametrize("odd", _ODD)
@pytest.mark.parametrize(
    "usual", [("const", 1), ("ref", 0), ("ref", 1), *(("fanin", [0, 1] * k) for k in range(4))]
)
def test_a_recorder_leaves_an_argument_of_another_kind_to_the_general_path(
    usual: Any, odd: Any
) -> None:
    """Every argument a recorder must not take, after calls it took (in each position)."""
    for position in ("x", "y"):
        other = "y" if position == "x" else "x"
        calls = [{position: usual, other: ("ref", 0)}, {position: odd, other: ("ref", 1)}]
        program = [("plan_one", {}), ("plan_two", {"x": ("const", 1)})]
        program += [("plan_one", recipes) for recipes in calls * 2]
        filed, general = _filed_and_general(functools.partial(_compile, program))
        assert filed.nodes == general.nodes


def test_a_call_refused_by_the_body_leaves_no_trace_in_the_next_node() -> None:
    """A map call whose items are refused (a ref of another graph), caught by the body: the
    next node is a plain tool node, numbered as if the refused call had made none."""
    stray = OutputRef("elsewhere_1", "out")

    @trioflow.graphify(outputs=["out"])
    def g() -> Any:
        with pytest.raises(GraphBuildError, match="does not belong"):
            trioflow.map(work, stray)
        with pytest.raises(GraphBuildError, match="does not belong"):
            work(x=stray)
        return total(xs=[work(x=2).out]).total

    graph = g.compile()
    assert graph._lowered.plan is not None and graph._lowered.plan.map_params == {}
    assert list(graph.nodes) == ["work_2", "total_1"]  # (the refused call took its number)
    assert [node.kind for node in graph.nodes.values()] == ["tool", "tool"]
    assert trioflow.run(g) == {"out": 4}


def test_a_trace_s_recording_functions_let_it_go_when_it_ends() -> None:
    """The callees a graph keeps (for its nodes) hold functions bound to the trace while it
    runs; once it ends they hold nothing of it, so the trace is freed without the cyclic
    collector."""
    import weakref

    from trioflow import _compile

    traces: list[Any] = []

    class Kept(_compile.GraphTracer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            traces.append(weakref.ref(self))

    @trioflow.graphify(outputs=["out", "each"])
    def g() -> Any:
        each = trioflow.map(work, [1, 2]).out
        return {"out": total(xs=[work(x=k).out for k in range(3)]).total, "each": each}

    gc.disable()
    try:
        with mock.patch.object(_compile, "GraphTracer", Kept):
            graph = g.compile()
        assert len(traces) == 1 and traces[0]() is None
        assert len(graph.nodes) == 5 and trioflow.run(graph) == {"out": 6, "each": [2, 4]}
    finally:
        gc.enable()


@trioflow.tool(outputs=["_first", "plain"], name="plan_hidden")
async def plan_hidden(x: Any = None) -> dict[str, Any]:
    return {"_first": x, "plain": x}


def test_recorders_of_tools_with_other_outputs_record_what_the_general_path_does() -> None:
    """Recorders are made per callee: one output, several, and a first output a NodeRef holds
    no slot for (named `_...`)."""

    @trioflow.graphify(outputs=["out"])
    def g() -> Any:
        one = [plan_one(x=k) for k in range(3)]
        two = [plan_two(x=one[k].out, y=k) for k in range(3)]
        hidden = [plan_hidden(x=[two[k].a]) for k in range(3)]
        hidden += [plan_hidden(x=[h.plain for h in hidden]), plan_hidden(x=[hidden[0]._first])]
        return [r.b for r in two] + [h.plain for h in hidden] + [h["_first"] for h in hidden]

    graph, general = _filed_and_general(g.compile)
    assert graph.nodes == general.nodes
    assert trioflow.run(graph) == trioflow.run(general)
