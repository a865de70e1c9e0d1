"""The static graph as data: `TaskGraph`, `NodeSpec` and the refs between them.

Pure data (attrs), no Trio. Node arguments are trees of constants and refs; a ref names a graph
input or a node output, plus an optional projection path (`vals[2]`, `ref.items[0]`) resolved at
run time. `to_dict`/`from_dict` go through the one cattrs converter and round-trip losslessly.
"""

from __future__ import annotations

import hashlib
import heapq
import importlib
import json
import operator
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from ._convert import converter
from ._errors import ConfigError, GraphBuildAttributeError, GraphBuildError
from ._trace import TRACER, called_from_user_code

__all__ = [
    "NODE_SPEC_SETTERS",
    "OUTPUT_REF_SETTERS",
    "SET_TRACE_INDEX",
    "InputRef",
    "Lowered",
    "NodeKind",
    "NodeSpec",
    "OutputRef",
    "TaskGraph",
    "iter_refs",
    "lazy_nodes",
    "make_output_ref",
    "resolve",
]

NodeKind = Literal["tool", "map", "graph"]
Path = tuple[str | int, ...]


def _shape_error(what: str, op: str) -> GraphBuildError:
    return GraphBuildError(
        f"{op} of {what} is not known while the graph is traced",
        code="shape-dependent",
        hints=(
            "pass the inputs to compile (graph.compile(vals=[...])) or run the graph: a graph "
            "whose shape depends on an input is built when the inputs are known",
            "for a fan-out over a list known only at run time, use trioflow.map(tool, ref)",
        ),
    )


class _RefOps:
    """Trace-time behaviour shared by refs: projection, and loud shape-dependent operations."""

    __slots__ = ()
    path: Path

    def _with_path(self, path: Path) -> Any:
        return attrs.evolve(self, path=path)  # type: ignore[misc]

    def __getitem__(self, key: str | int) -> Any:
        if not isinstance(key, str | int) or isinstance(key, bool):
            raise GraphBuildError(
                f"refs can be projected by a str key or an int index, got {key!r}",
                code="bad-projection",
                hints=("slices and other keys are not supported; do it inside a tool",),
            )
        return self._with_path((*self.path, key))

    def __getattr__(self, name: str) -> Any:
        # Reached only when the attribute does not exist. While tracing, `vals.upper()` is the
        # user computing with a value that exists only at run time.
        if name.startswith("_") or TRACER.get() is None:
            raise AttributeError(name)
        raise GraphBuildAttributeError(
            f"{self.describe()} has no attribute {name!r} while the graph is traced: its value "
            "exists only when the graph runs",
            code="value-op",
            hints=(
                "call methods and read attributes inside a tool; project a key or an item with "
                "ref['key'] or ref[0]",
            ),
        )

    def _value(self, op: str) -> Any:
        tracer = TRACER.get()
        if tracer is not None:  # the active trace may know an input's value
            found, value = tracer.known_value(self)
            if found:
                return value
        raise _shape_error(self.describe(), op)

    def __len__(self) -> int:
        return len(self._value("len()"))

    def __iter__(self) -> Iterator[Any]:
        value = self._value("iteration")
        return (self[i] for i in range(len(value)))

    def __bool__(self) -> bool:
        return bool(self._value("bool()"))

    def __index__(self) -> int:
        return operator.index(self._value("using it as an int"))

    __int__ = __index__

    def __float__(self) -> float:
        return float(self._value("float()"))

    def _no_arithmetic(self, *_: object) -> Any:
        raise GraphBuildError(
            f"cannot compute with {self.describe()} while the graph is traced: its value "
            "exists only when the graph runs",
            code="value-op",
            hints=("do the computation inside a tool, which receives the real value",),
        )

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _no_arithmetic
    __truediv__ = __rtruediv__ = __floordiv__ = __rfloordiv__ = _no_arithmetic
    __mod__ = __rmod__ = __pow__ = __rpow__ = __neg__ = _no_arithmetic
    __lt__ = __le__ = __gt__ = __ge__ = _no_arithmetic

    # Text of a ref: while a graph is traced, the user's own code gets an error instead of the
    # text "OutputRef(...)" (which a tool would silently receive); trioflow's messages,
    # debuggers, loggers and test runners still see the repr.

    def __repr__(self) -> str:
        if TRACER.get() is not None and called_from_user_code():
            raise ref_as_text(self.describe(), "repr()")
        return self._repr()

    def __str__(self) -> str:
        if TRACER.get() is not None and called_from_user_code():
            raise ref_as_text(self.describe(), "str()")
        return self._repr()

    def __format__(self, spec: str) -> str:
        if TRACER.get() is not None and called_from_user_code():
            raise ref_as_text(self.describe(), "an f-string or format()")
        return format(self._repr(), spec)

    def _repr(self) -> str:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


def ref_as_text(what: str, op: str) -> GraphBuildError:
    """The error for turning a ref into text while a graph is traced."""
    return GraphBuildError(
        f"{op} of {what} while the graph is traced would give the text of a placeholder, "
        "not its value",
        code="ref-as-text",
        hints=(
            "build the text inside a tool, which receives the real value "
            "(a tool `def label(x): return f'item {x}'`, called as label(x=ref))",
        ),
    )


def _check_path(_: object, __: object, value: Path) -> None:
    for key in value:
        if not isinstance(key, str | int) or isinstance(key, bool):
            raise ConfigError(f"a ref path holds str keys and int indexes, got {key!r}")


@attrs.frozen(order=False, repr=False)
class InputRef(_RefOps):
    """A graph input (optionally projected: `vals[2]`)."""

    name: str
    path: Path = attrs.field(default=(), converter=tuple, validator=_check_path)

    def _repr(self) -> str:
        return f"InputRef(name={self.name!r}, path={self.path!r})"

    def describe(self) -> str:
        return f"graph input {self.name!r}{_show_path(self.path)}"


class _Placed(_RefOps):
    """A ref that may know its place in the trace that made it (see `SET_TRACE_INDEX`)."""

    __slots__ = ("_at",)


@attrs.frozen(order=False, repr=False)
class OutputRef(_Placed):
    """One output of one node (optionally projected: `ref.items[0]`)."""

    node: str
    output: str
    path: Path = attrs.field(default=(), converter=tuple, validator=_check_path)

    def _repr(self) -> str:
        return f"OutputRef(node={self.node!r}, output={self.output!r}, path={self.path!r})"

    def describe(self) -> str:
        return f"output {self.output!r} of node {self.node!r}{_show_path(self.path)}"


# -- fast constructors for the tracer ----------------------------------------------------------
# A trace makes a NodeSpec and an OutputRef per node. attrs' frozen `__init__` sets each field
# through `object.__setattr__` (and checks a ref's path); these set the slots directly, for
# values the tracer has already checked: the objects are the same as the classes' own.

_new = object.__new__
# The slots' setters, in field order (the tracer sets a node's and its refs' slots itself).
OUTPUT_REF_SETTERS = tuple(OutputRef.__dict__[f].__set__ for f in ("node", "output", "path"))
_set_node, _set_output, _set_path = OUTPUT_REF_SETTERS
# An output ref a trace makes for a node's first output also holds the node's index in that
# trace, in the slot `_at`: the trace finds a ref's node from the ref alone (no dict of node
# ids), once it has checked that the ref is the one it made for that index (by identity: the
# index is only ever a hint). Not an attrs field: it is not compared, hashed, shown, copied or
# serialised, and a ref made any other way has none (reading it raises AttributeError).
SET_TRACE_INDEX = _Placed.__dict__["_at"].__set__


def make_output_ref(node: str, output: str) -> OutputRef:
    """`OutputRef(node, output)`, without a path, made cheaply."""
    ref = _new(OutputRef)
    _set_node(ref, node)
    _set_output(ref, output)
    _set_path(ref, ())
    return ref


def _show_path(path: Path) -> str:
    return "".join(f"[{key!r}]" for key in path)


Ref = InputRef | OutputRef


def iter_refs(value: Any) -> Iterator[Ref]:
    """Every ref inside an argument tree (lists, tuples, dicts), depth first."""
    if isinstance(value, InputRef | OutputRef):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from iter_refs(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from iter_refs(item)


def _project(value: Any, path: Path) -> Any:
    for key in path:
        value = value[key]
    return value


def resolve(value: Any, lookup: Callable[[Ref], Any]) -> Any:
    """The argument tree with every ref replaced by `lookup(ref)` projected along its path."""
    if isinstance(value, InputRef | OutputRef):
        return _project(lookup(value), value.path)
    if isinstance(value, list):
        return [resolve(item, lookup) for item in value]
    if isinstance(value, tuple):
        return tuple(resolve(item, lookup) for item in value)
    if isinstance(value, dict):
        return {key: resolve(item, lookup) for key, item in value.items()}
    return value


@attrs.frozen
class NodeSpec:
    """One node: what runs (`tool`, a name), with which arguments, and on which nodes it waits.

    `kind` is `"tool"`, `"map"` (the tool runs once per item of `args[map_param]`) or `"graph"`
    (a nested graph). `target` is the import path used to find the callable after `from_dict`.
    """

    id: str
    tool: str
    args: dict[str, Any] = attrs.field(factory=dict)
    deps: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    kind: NodeKind = "tool"
    map_param: str | None = None
    target: str = ""


NODE_SPEC_SETTERS = tuple(
    NodeSpec.__dict__[f].__set__
    for f in ("id", "tool", "args", "deps", "outputs", "kind", "map_param", "target")
)


class Lowered:
    """Where a graph keeps its lowered plan (see `_plan`): made by its trace or on its first
    run, and not part of the graph's data (not compared, not serialised, not pickled).

    A traced graph also keeps here, until its `nodes` are first read, what builds them (see
    `lazy_nodes`)."""

    __slots__ = ("nodes", "plan")

    def __init__(self) -> None:
        self.plan: Any = None
        self.nodes: Callable[[], dict[str, NodeSpec]] | None = None

    def __reduce__(self) -> tuple[type[Lowered], tuple[()]]:
        return (Lowered, ())  # a copy is lowered again when it runs


@attrs.frozen
class TaskGraph:
    """A compiled static graph: nodes in insertion order (a topological order), their edges,
    the graph's inputs, its output bindings, and the defaults of its optional inputs."""

    name: str
    inputs: tuple[str, ...]
    nodes: dict[str, NodeSpec]
    outputs: dict[str, Any]
    # Input name → default value (`def g(x, factor=3)`): a run may leave these inputs out.
    defaults: dict[str, Any] = attrs.field(factory=dict)
    # The callables behind the nodes (tool/graph name → object); not data, not compared.
    callables: Mapping[str, Any] = attrs.field(factory=dict, eq=False, repr=False)
    _lowered: Lowered = attrs.field(factory=Lowered, init=False, eq=False, repr=False)

    if not TYPE_CHECKING:  # (for the type checker, every attribute stays declared)

        def __getattr__(self, name: str) -> Any:
            # Reached for attributes that are not set: the `nodes` of a traced graph until
            # they are first read (see `lazy_nodes`), and mistakes.
            if name == "nodes":
                lowered = self._lowered
                build = lowered.nodes
                if build is not None:
                    nodes = build()
                    _set_nodes(self, nodes)
                    lowered.nodes = None
                    return nodes
            raise AttributeError(
                f"{type(self).__name__!r} object has no attribute {name!r}", name=name, obj=self
            )

    def check_inputs(self, inputs: Mapping[str, Any] | None) -> dict[str, Any]:
        """A run's inputs with the defaults filled in; unknown or missing names raise
        `ConfigError` before anything runs."""
        given = {**self.defaults, **(inputs or {})}
        unknown = sorted(set(given) - set(self.inputs))
        missing = sorted(set(self.inputs) - set(given))
        if unknown or missing:
            raise ConfigError(
                f"graph {self.name!r} takes inputs {list(self.inputs)}; "
                f"unknown {unknown}, missing {missing}"
            )
        return given

    @property
    def edges(self) -> list[tuple[str, str]]:
        """`(dependency, dependent)` id pairs."""
        return [(dep, node.id) for node in self.nodes.values() for dep in node.deps]

    def topological_order(self) -> list[str]:
        """Node ids, dependencies first; ties in insertion order (Kahn's algorithm)."""
        index = {node_id: i for i, node_id in enumerate(self.nodes)}
        ids = list(self.nodes)
        indegree = [len(self.nodes[n].deps) for n in ids]
        dependents: list[list[int]] = [[] for _ in ids]
        for i, node_id in enumerate(ids):
            for dep in self.nodes[node_id].deps:
                dependents[index[dep]].append(i)
        ready = [i for i, d in enumerate(indegree) if d == 0]
        heapq.heapify(ready)
        order: list[str] = []
        while ready:
            i = heapq.heappop(ready)
            order.append(ids[i])
            for j in dependents[i]:
                indegree[j] -= 1
                if indegree[j] == 0:
                    heapq.heappush(ready, j)
        if len(order) != len(ids):
            raise GraphBuildError("the graph has a cycle", code="cycle")
        return order

    # -- serialisation ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict; `TaskGraph.from_dict(g.to_dict()) == g`."""
        data: dict[str, Any] = converter.unstructure(self)
        return data

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, callables: Mapping[str, Any] | None = None
    ) -> TaskGraph:
        """Rebuild a graph; tools are found in `callables` (name → tool) or by import path.

        Data that is not a `to_dict()` form raises `ConfigError`, naming what is wrong."""
        try:
            graph = converter.structure(data, cls)
        except (cattrs.BaseValidationError, LookupError, TypeError, ValueError) as exc:
            problems = "; ".join(cattrs.transform_error(exc, path="data"))
            raise ConfigError(f"not a TaskGraph.to_dict() form: {problems}") from exc
        return attrs.evolve(graph, callables=dict(callables or {}))

    @property
    def content_hash(self) -> str:
        """sha256 of the structure and constant arguments (not of graph input values)."""
        # The bytes are those of `json.dumps(self.to_dict(), sort_keys=True, ...)` (so stored
        # hashes stay valid), written node by node without building the whole dict first.
        return hashlib.sha256(_canonical_json(self).encode()).hexdigest()

    def callable_for(self, node: NodeSpec) -> Any:
        """The tool or graph object behind a node (by name, else by import path)."""
        name = node.tool
        found = self.callables.get(name)
        if found is not None:
            return found
        if node.target:
            module, _, qualname = node.target.partition(":")
            try:
                obj: Any = importlib.import_module(module)
                for part in qualname.split("."):
                    obj = getattr(obj, part)
            except (ImportError, AttributeError):
                pass
            else:
                return obj
        raise ConfigError(
            f"node {node.id!r} runs {name!r}, which cannot be found (import path "
            f"{node.target!r}); pass TaskGraph.from_dict(data, callables={{{name!r}: tool}})"
        )

    # -- drawing ---------------------------------------------------------------------------

    def to_mermaid(self) -> str:
        """A Mermaid flowchart: inputs and outputs as parallelograms, nodes as boxes."""
        lines = ["flowchart TD"]
        for name in self.inputs:
            lines.append(f"    in_{name}[/{name}/]")
        for node in self.nodes.values():
            label = node.id if node.kind == "tool" else f"{node.id} ({node.kind})"
            lines.append(f'    {_mid(node.id)}["{label}"]')
        for src, dst in self._all_edges():
            lines.append(f"    {src} --> {dst}")
        for name in self.outputs:
            lines.append(f"    out_{name}[\\{name}\\]")
        return "\n".join(lines) + "\n"

    def to_dot(self) -> str:
        """A Graphviz digraph of the same picture."""
        lines = [f'digraph "{self.name}" {{', "    rankdir=TB;"]
        for name in self.inputs:
            lines.append(f'    in_{name} [label="{name}", shape=invhouse];')
        for node in self.nodes.values():
            lines.append(f'    {_mid(node.id)} [label="{node.id}\\n{node.tool}", shape=box];')
        for name in self.outputs:
            lines.append(f'    out_{name} [label="{name}", shape=house];')
        for src, dst in self._all_edges():
            lines.append(f"    {src} -> {dst};")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def _all_edges(self) -> list[tuple[str, str]]:
        edges: dict[tuple[str, str], None] = {}
        for node in self.nodes.values():
            for ref in iter_refs(node.args):
                if isinstance(ref, InputRef):
                    edges[(f"in_{ref.name}", _mid(node.id))] = None
            for dep in node.deps:
                edges[(_mid(dep), _mid(node.id))] = None
        for name, value in self.outputs.items():
            for ref in iter_refs(value):
                src = f"in_{ref.name}" if isinstance(ref, InputRef) else _mid(ref.node)
                edges[(src, f"out_{name}")] = None
        return list(edges)


_set_nodes = TaskGraph.__dict__["nodes"].__set__
_unset_nodes = TaskGraph.__dict__["nodes"].__delete__


def lazy_nodes(graph: TaskGraph, build: Callable[[], dict[str, NodeSpec]]) -> None:
    """Let `graph.nodes` be `build()`, built on its first read and then kept.

    A run needs only a graph's plan: a traced graph builds its `NodeSpec`s when something
    reads them (equality, `to_dict`, pickling, `repr` and `content_hash` all do), once."""
    graph._lowered.nodes = build
    _unset_nodes(graph)


def _mid(node_id: str) -> str:
    return "n_" + node_id.replace(".", "__")


# -- serialisation of argument trees -------------------------------------------------------------
# Refs and tuples are tagged so that the round trip is exact; other constants must be JSON data.


def _encode(value: Any) -> Any:
    if isinstance(value, InputRef):
        return {"$input": value.name, "path": list(value.path)}
    if isinstance(value, OutputRef):
        return {"$output": [value.node, value.output], "path": list(value.path)}
    if isinstance(value, tuple):
        return {"$tuple": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise ConfigError(f"graph constants must have str dict keys to serialise: {value!r}")
        if any(k.startswith("$") for k in value):
            return {"$dict": {k: _encode(v) for k, v in value.items()}}
        return {k: _encode(v) for k, v in value.items()}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise ConfigError(
        f"graph constant {value!r} ({type(value).__name__}) is not JSON data; pass it as a graph "
        "input instead of a constant to serialise the graph"
    )


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict):
        if "$input" in value:
            return InputRef(value["$input"], tuple(value["path"]))
        if "$output" in value:
            node, output = value["$output"]
            return OutputRef(node, output, tuple(value["path"]))
        if "$tuple" in value:
            return tuple(_decode(v) for v in value["$tuple"])
        if "$dict" in value:
            return {k: _decode(v) for k, v in value["$dict"].items()}
        return {k: _decode(v) for k, v in value.items()}
    return value


def _unstructure_tree(tree: dict[str, Any]) -> dict[str, Any]:
    return {k: _encode(v) for k, v in tree.items()}


def _structure_tree(data: Mapping[str, Any], _: object) -> dict[str, Any]:
    return {k: _decode(v) for k, v in data.items()}


# cattrs generates the hooks; argument trees, output bindings and defaults use the tree encoding
# above, the callables stay out of the data, and an empty `defaults` is left out (graphs without
# defaults keep the JSON form, and the content hash, they had before defaults were stored).
_tree = override(unstruct_hook=_unstructure_tree, struct_hook=_structure_tree)
_defaults = override(
    unstruct_hook=_unstructure_tree, struct_hook=_structure_tree, omit_if_default=True
)
_omit = override(omit=True)
converter.register_unstructure_hook(
    NodeSpec, make_dict_unstructure_fn(NodeSpec, converter, args=_tree)
)
converter.register_structure_hook(NodeSpec, make_dict_structure_fn(NodeSpec, converter, args=_tree))
converter.register_unstructure_hook(
    TaskGraph,
    make_dict_unstructure_fn(
        TaskGraph, converter, outputs=_tree, defaults=_defaults, callables=_omit
    ),
)
converter.register_structure_hook(
    TaskGraph,
    make_dict_structure_fn(
        TaskGraph, converter, outputs=_tree, defaults=_defaults, callables=_omit
    ),
)


# -- the content hash's canonical JSON -------------------------------------------------------------
# Equal, byte for byte, to `json.dumps(graph.to_dict(), sort_keys=True, separators=(",", ":"),
# default=repr)` (tests/test_compile_serialise.py checks it against the golden hashes and the
# slow form, and tests/test_trace_fast_paths.py on random graphs), but about 7x cheaper: common
# argument values (strings, ints, None, bools, refs and lists of them) are written directly, each
# shared ref object once; anything else goes through `_encode` and `json.dumps`.

_dumps = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=repr).encode
_str = json.encoder.encode_basestring_ascii


def _canonical_json(graph: TaskGraph) -> str:
    pieces: list[str] = []  # in insertion order; strings only (no tuples for the GC to track)
    tails: dict[tuple[Any, ...], str] = {}  # the fields after "id", shared by a tool's nodes
    heads: dict[str, str] = {}  # argument name -> '"name":'
    # id(output ref) -> its JSON: a traced graph shares one ref object per node output, which a
    # fan-out repeats thousands of times. Every ref stays alive in the graph during this call.
    refs: dict[int, str] = {}

    def ref_json(ref: OutputRef) -> str:
        path = ",".join(map(_key_json, ref.path)) if ref.path else ""
        text = refs[id(ref)] = (
            f'{{"$output":[{_str(ref.node)},{_str(ref.output)}],"path":[{path}]}}'
        )
        return text

    def value_json(value: Any) -> str:
        kind = type(value)
        if kind is OutputRef:
            return refs.get(id(value)) or ref_json(value)
        if kind is str:
            return _str(value)
        if kind is int:
            return repr(value)
        if kind is list:
            texts = []
            for item in value:  # a fan-in: a list of output refs, inlined
                if type(item) is OutputRef:
                    texts.append(refs.get(id(item)) or ref_json(item))
                else:
                    texts.append(value_json(item))
            return "[" + ",".join(texts) + "]"
        if value is None:
            return "null"
        if kind is bool:
            return "true" if value else "false"
        if kind is InputRef:
            path = ",".join(map(_key_json, value.path))
            return f'{{"$input":{_str(value.name)},"path":[{path}]}}'
        return _dumps(_encode(value))

    def head_json(name: str) -> str:
        text = heads[name] = _str(name) + ":"
        return text

    for node_id, node in graph.nodes.items():
        args = node.args
        if len(args) == 1:
            [(name, value)] = args.items()
            text = (heads.get(name) or head_json(name)) + value_json(value)
        else:
            parts = []  # a loop, not a comprehension: no function object per node
            for name in sorted(args):
                parts.append((heads.get(name) or head_json(name)) + value_json(args[name]))
            text = ",".join(parts)
        deps = node.deps
        if not deps:
            deps_text = ""
        elif len(deps) == 1:
            deps_text = _str(deps[0])
        else:
            deps_text = ",".join(map(_str, deps))
        shape = (node.kind, node.map_param, node.outputs, node.target, node.tool)
        tail = tails.get(shape)
        if tail is None:
            map_param = "null" if node.map_param is None else _str(node.map_param)
            outputs = ",".join(map(_str, node.outputs))
            tail = tails[shape] = (
                f'"kind":{_str(node.kind)},"map_param":{map_param},"outputs":[{outputs}],'
                f'"target":{_str(node.target)},"tool":{_str(node.tool)}}}'
            )
        key = _str(node_id)
        ident = key if node.id == node_id else _str(node.id)
        pieces.append(f'{key}:{{"args":{{{text}}},"deps":[{deps_text}],"id":{ident},{tail}')
    ids = list(graph.nodes)
    texts = [pieces[i] for i in sorted(range(len(ids)), key=ids.__getitem__)]
    head = f'"defaults":{_dumps(_unstructure_tree(graph.defaults))},' if graph.defaults else ""
    start = f'{{{head}"inputs":{_dumps(list(graph.inputs))},"name":{_str(graph.name)},"nodes":{{'
    end = f'}},"outputs":{_dumps(_unstructure_tree(graph.outputs))}}}'
    if not texts:
        return start + end
    # One join of the nodes, with the start and end glued to the first and last node's text
    # (not `start + join + end`, which copies the whole text twice more).
    texts[0] = start + texts[0]
    texts[-1] += end
    return ",".join(texts)


def _key_json(key: str | int) -> str:
    return _str(key) if type(key) is str else _dumps(key)
