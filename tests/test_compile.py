"""The compiler: the trace seam, tracing errors, and the mistakes tracing must catch."""

from __future__ import annotations

import json
import pathlib
import pickle
import pprint
import subprocess
import sys

import pytest
from hypothesis import given, strategies as st

import trioflow
from trioflow import GraphBuildError

REPO = pathlib.Path(__file__).resolve().parent.parent


@trioflow.tool(outputs=["out"])
async def work(x: int) -> int:
    return x * 2


@trioflow.tool(outputs=["out"])
async def add(a: int, b: int) -> int:
    return a + b


@trioflow.tool(outputs=["rest"])
async def tail(xs: list[int]) -> list[int]:
    return xs[1:]


def compile_error(fn: object, **inputs: object) -> GraphBuildError:
    graph = trioflow.graphify(outputs=["out"])(fn)  # type: ignore[arg-type]
    with pytest.raises(GraphBuildError) as info:
        graph.compile(**inputs)
    return info.value


# -- the trace seam -----------------------------------------------------------------------------


def test_the_compiler_imports_no_trio() -> None:
    # trioflow/__init__ imports everything, so load the package as a bare namespace and import
    # only the data layer and the compiler.
    code = (
        "import sys, types\n"
        "pkg = types.ModuleType('trioflow'); pkg.__path__ = ['trioflow']\n"
        "sys.modules['trioflow'] = pkg\n"
        "import trioflow._compile, trioflow._graph, trioflow._trace\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('trio', 'outcome', 'sniffio'))\n"
        "assert not loaded, loaded\n"
        "print(sorted(m for m in sys.modules if m.startswith('trioflow.')))\n"
    )
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    # The compiler stands on the data layer and the trace seam only (not on tools or contexts),
    # on _gcpause (the standard library's gc only) and on _plan (the lowered form it builds).
    assert out.stdout.split("\n")[0] == str(
        [
            f"trioflow.{m}"
            for m in (
                "_checks",
                "_compile",
                "_convert",
                "_errors",
                "_gcpause",
                "_graph",
                "_plan",
                "_trace",
            )
        ]
    )


def test_one_tracer_protocol_and_one_tracer_variable() -> None:
    import trioflow._compile
    import trioflow._graph
    import trioflow._graph_fn
    import trioflow._tool
    from trioflow import _trace

    for module in (trioflow._compile, trioflow._graph, trioflow._graph_fn, trioflow._tool):
        assert getattr(module, "Tracer", _trace.Tracer) is _trace.Tracer, module
        assert getattr(module, "TRACER", _trace.TRACER) is _trace.TRACER, module
    tracer = trioflow._compile.GraphTracer(name="g", inputs=(), values=None)
    for method in ("call", "map", "known_value"):  # the whole protocol
        assert callable(getattr(tracer, method))
    checked: _trace.Tracer = tracer  # mypy checks that GraphTracer implements Tracer
    assert checked is tracer


# -- GraphBuildError ----------------------------------------------------------------------------


def test_graph_build_error_keeps_its_parts_apart() -> None:
    def body(x):  # type: ignore[no-untyped-def]
        return work(x=x).nope

    err = compile_error(body)
    assert err.message == "node 'work_1' has no output 'nope'"  # bare, no code, no location
    assert err.code == "unknown-output"
    assert err.hints == ("its outputs are ['out']",)
    assert err.graph == "body"
    assert err.where is not None and err.where.endswith(
        f"test_compile.py:{body.__code__.co_firstlineno + 1}"
    )
    assert str(err) == (
        f"[unknown-output] tracing graph 'body' at {err.where}: {err.message}\n"
        "  hint: its outputs are ['out']"
    )


def test_a_graph_build_error_pickles_with_all_its_parts() -> None:
    err = compile_error(lambda x: work(x=x).nope)
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is GraphBuildError
    assert (again.message, again.code, again.hints, again.graph, again.where) == (
        err.message,
        err.code,
        err.hints,
        err.graph,
        err.where,
    )
    assert str(again) == str(err)


# -- two tools under one name (issue 9 item 14) ------------------------------------------------


def test_two_different_tools_with_one_name_are_refused() -> None:
    @trioflow.tool(name="work", outputs=["out"])
    async def other_work(x: int) -> int:
        return -x

    def body(x):  # type: ignore[no-untyped-def]
        return add(a=work(x=x).out, b=other_work(x=x).out).out

    err = compile_error(body)
    assert err.code == "name-clash"
    assert "two different callables named 'work'" in err.message
    assert "test_compile:work" in err.message and "other_work" in err.message
    assert "@trioflow.tool(name=...)" in err.hint
    with pytest.raises(GraphBuildError, match="name-clash"):
        trioflow.run(trioflow.graphify(outputs=["out"])(body), inputs={"x": 1})


def test_one_tool_called_many_times_is_fine() -> None:
    g = trioflow.graphify(outputs=["out"])(lambda x: add(a=work(x=x).out, b=work(x=1).out).out)
    assert trioflow.run(g, inputs={"x": 3}) == {"out": 8}


# -- a ref turned into text (issue 9 item 15) ---------------------------------------------------


@pytest.mark.parametrize(
    ("body", "op"),
    [
        (lambda x: work(x=f"{x}"), "an f-string"),
        (lambda x: work(x=f"n={work(x=x).out:>5}"), "an f-string"),
        (lambda x: work(x=str(x)), "str()"),
        (lambda x: work(x=repr(work(x=x).out)), "repr()"),
        (lambda x: work(x="{}".format(x)), "an f-string or format()"),  # noqa: UP032
        (lambda x: work(x=format(x, "")), "an f-string or format()"),
        (lambda x: work(x="%s" % (x,)), "str()"),  # noqa: UP031
        (lambda x: work(x=str([x])), "repr()"),  # a list shows its items' repr
        (lambda x: work(x=f"{work(x=x)}"), "an f-string"),  # the NodeRef itself
    ],
)
def test_turning_a_ref_into_text_is_a_build_error(body: object, op: str) -> None:
    err = compile_error(body)
    assert err.code == "ref-as-text"
    assert err.message.startswith(op)
    assert "inside a tool" in err.hint


def test_refs_still_have_a_repr_for_trioflow_debuggers_and_loggers() -> None:
    seen: list[str] = []

    def body(x):  # type: ignore[no-untyped-def]
        ref = work(x=x)
        seen.append(pprint.pformat([x, ref.out]))  # the stdlib formats on the user's behalf
        return ref.out

    trioflow.graphify(outputs=["out"])(body).compile()
    assert seen == [
        "[InputRef(name='x', path=()), OutputRef(node='work_1', output='out', path=())]"
    ]
    # Outside a trace, a ref is plain data with a plain text.
    assert str(trioflow.OutputRef("a_1", "out")) == "OutputRef(node='a_1', output='out', path=())"
    assert f"{trioflow.InputRef('v', (1,))}" == "InputRef(name='v', path=(1,))"
    # trioflow's own messages show refs while tracing.
    err = compile_error(lambda x: work(x=x["k"] + 1).out)
    assert "graph input 'x'['k']" in err.message


# -- a graph that calls itself (issue 9 item 16) ------------------------------------------------


def test_a_graph_that_calls_itself_is_refused_when_traced() -> None:
    @trioflow.graphify(outputs=["out"])
    def forever(x):  # type: ignore[no-untyped-def]
        return forever(x=work(x=x).out).out

    for attempt in (forever.compile, lambda: forever.compile(x=1)):
        with pytest.raises(GraphBuildError) as info:
            attempt()
        assert info.value.code == "recursive-graph"
        assert "(forever -> forever)" in info.value.message
    with pytest.raises(GraphBuildError, match="recursive-graph"):
        trioflow.run(forever, inputs={"x": 1})


def test_mutual_recursion_is_refused_when_traced() -> None:
    @trioflow.graphify(outputs=["out"])
    def ping(x):  # type: ignore[no-untyped-def]
        return pong(x=work(x=x).out).out

    @trioflow.graphify(outputs=["out"])
    def pong(x):  # type: ignore[no-untyped-def]
        return middle(x=x).out

    @trioflow.graphify(outputs=["out"])
    def middle(x):  # type: ignore[no-untyped-def]
        return ping(x=x).out

    with pytest.raises(GraphBuildError) as info:
        trioflow.run(ping, inputs={"x": 1})
    assert info.value.code == "recursive-graph"
    assert "ping -> pong -> middle -> ping" in info.value.message


def test_recursion_behind_a_test_of_an_input_value_runs() -> None:
    @trioflow.graphify(outputs=["total"])
    def total(xs):  # type: ignore[no-untyped-def]
        if len(xs) == 0:  # the base case: shape-dependent, so the trace cannot loop
            return 0
        return add(a=xs[0], b=total(xs=tail(xs=xs).rest).total).out

    assert trioflow.run(total, inputs={"xs": [1, 2, 3]}) == {"total": 6}


# -- one output rule (issue 9 item 18) ------------------------------------------------------------


def test_a_graphify_returning_a_typo_of_its_one_output_is_refused() -> None:
    err = compile_error(lambda x: {"otu": work(x=x).out})
    assert err.code == "bad-outputs"
    assert "did you mean its output 'out'?" in err.message
    # A dict whose one key is unrelated is the value, as for tools.
    g = trioflow.graphify(outputs=["out"])(lambda x: {"count": work(x=x).out})
    assert trioflow.run(g, inputs={"x": 2}) == {"out": {"count": 4}}


@pytest.mark.parametrize("returned", [{"otu": 1}, {"outs": 1}, {"Out": 1}, {"ou": 1}])
async def test_tools_and_graph_fns_refuse_a_typo_of_their_one_output(returned: object) -> None:
    @trioflow.tool(outputs=["out"])
    async def typo() -> object:
        return returned

    @trioflow.graph_fn(outputs=["result"])
    async def calls() -> object:
        return await typo()

    with pytest.raises(trioflow.NodeFailed) as info:
        await trioflow.run_async(calls)
    assert "did you mean its output 'out'?" in str(info.value.__cause__)

    @trioflow.graph_fn(outputs=["out"])
    async def returns() -> object:
        return returned

    with pytest.raises(trioflow.NodeFailed) as info:
        await trioflow.run_async(returns)
    assert "did you mean its output 'out'?" in str(info.value.__cause__)


@pytest.mark.parametrize(
    ("returned", "outputs"),
    [
        ({"count": 3}, {"out": {"count": 3}}),  # unrelated key: the value
        ({"a": 1, "b": 2}, {"out": {"a": 1, "b": 2}}),  # several keys: the value
        ({"out": 5}, {"out": 5}),  # the outputs dict
        ([1], {"out": [1]}),
    ],
)
async def test_a_single_output_takes_any_other_value_bare(
    returned: object, outputs: dict[str, object]
) -> None:
    @trioflow.tool(outputs=["out"])
    async def one() -> object:
        return returned

    @trioflow.graph_fn(outputs=["result"])
    async def calls() -> object:
        return await one()

    assert await trioflow.run_async(calls) == {"result": outputs}


def test_typos_are_one_slip() -> None:
    from trioflow._checks import is_typo

    assert all(is_typo(k, "out") for k in ("otu", "outs", "Out", "ou", "put", "oout"))
    assert not any(is_typo(k, "out") for k in ("out", "count", "x", "rows", "outer_x"))
    assert is_typo("reslts", "result") and is_typo("resutls", "result")
    assert not is_typo("resolution", "result")


@given(name=st.from_regex(r"[a-z]{2,10}", fullmatch=True), at=st.integers(0, 9))
def test_any_one_slip_of_an_output_name_is_a_typo(name: str, at: int) -> None:
    from trioflow._checks import is_typo

    i = at % len(name)
    swapped = name[:i] + name[i + 1 : i + 2] + name[i] + name[i + 2 :]
    slips = (
        {
            name[:i] + name[i + 1 :],  # a letter dropped
            name[:i] + "Q" + name[i:],  # a letter added
            name[:i] + "Q" + name[i + 1 :],  # a letter replaced
            swapped,  # two neighbours swapped
            name.upper(),
        }
        - {name}
    )
    assert all(is_typo(slip, name) for slip in slips), slips
    assert not is_typo(name, name)
    assert not is_typo(name + "QQQ", name)  # three letters off is a different word


# -- defaults survive compile and JSON (issue 9 item 19) ---------------------------------------


def test_a_reloaded_graph_keeps_its_input_defaults() -> None:
    @trioflow.graphify(outputs=["out"])
    def scaled(x, factor=3, extra=None):  # type: ignore[no-untyped-def]
        return add(a=x, b=work(x=factor).out).out

    graph = scaled.compile()
    assert graph.defaults == {"factor": 3, "extra": None}
    data = json.loads(json.dumps(graph.to_dict()))
    assert data["defaults"] == {"factor": 3, "extra": None}
    again = trioflow.TaskGraph.from_dict(data, callables={"add": add, "work": work})
    assert again == graph
    assert trioflow.run(again, inputs={"x": 1}) == {"out": 7}
    assert trioflow.run(again, inputs={"x": 1, "factor": 5}) == {"out": 11}
    with pytest.raises(trioflow.ConfigError, match=r"missing \['x'\]"):
        trioflow.run(again, inputs={})


def test_from_dict_refuses_data_that_is_not_a_graph() -> None:
    data = trioflow.graphify(outputs=["out"])(lambda x: work(x=x).out).compile().to_dict()
    with pytest.raises(trioflow.ConfigError, match="extra fields"):
        trioflow.TaskGraph.from_dict({**data, "surprise": 1})
    del data["nodes"]["work_1"]["tool"]
    with pytest.raises(trioflow.ConfigError, match="tool"):
        trioflow.TaskGraph.from_dict(data)


# -- misspelled keywords (issue 9 item 20) ------------------------------------------------------


def test_a_misspelled_keyword_is_named_in_a_trace() -> None:
    err = compile_error(lambda x: add(a=x, bb=1).out)
    assert err.code == "bad-call"
    assert "no input named 'bb' (did you mean 'b'?)" in err.message


async def test_a_misspelled_keyword_is_named_in_a_graph_fn() -> None:
    @trioflow.graph_fn(outputs=["out"])
    async def g() -> object:
        return await add(a=1, bb=2)

    with pytest.raises(trioflow.ConfigTypeError, match=r"no input named 'bb' \(did you mean 'b'"):
        await trioflow.run_async(g)


# -- the same mistake, the same class ------------------------------------------------------------


async def test_a_bad_call_is_a_config_type_error_in_a_trace_as_in_a_graph_fn() -> None:
    def body(x):  # type: ignore[no-untyped-def]
        return add(a=x).out  # b is missing

    @trioflow.graph_fn(outputs=["out"])
    async def reactive(x: int) -> object:
        return await add(a=x)

    with pytest.raises(trioflow.ConfigTypeError):
        await trioflow.run_async(reactive, {"x": 1})
    err = compile_error(body)
    assert isinstance(err, trioflow.ConfigTypeError) and err.code == "bad-call"
    # A bad argument value (map() cannot tell which input takes the items) stays a ConfigError.
    err = compile_error(lambda x: trioflow.map(add, x).out)
    assert isinstance(err, trioflow.ConfigError) and err.code == "bad-call"


@pytest.mark.parametrize(
    "body",
    [
        lambda x: work(x=work(x=x) + 1).out,
        lambda x: work(x=1 - work(x=x)).out,
        lambda x: work(x=work(x=x) < 3).out,
        lambda x: work(x=range(work(x=x))).out,
        lambda x: work(x=float(work(x=x))).out,
    ],
)
def test_computing_with_a_node_ref_is_a_build_error_like_with_an_output_ref(body: object) -> None:
    err = compile_error(body)
    assert err.code == "node-ref-not-a-value"
    assert "ref.out" in err.hint


def test_a_method_of_a_ref_is_a_build_error_that_hasattr_still_understands() -> None:
    err = compile_error(lambda x: work(x=x.upper()).out)
    assert err.code == "value-op"
    assert err.message.startswith("graph input 'x' has no attribute 'upper'")
    assert isinstance(err, AttributeError)  # hasattr(ref, "upper") stays False, not an error

    seen: list[bool] = []

    def body(x):  # type: ignore[no-untyped-def]
        seen.append(hasattr(work(x=x).out, "upper"))
        return x

    trioflow.graphify(outputs=["out"])(body).compile()
    assert seen == [False]
    with pytest.raises(AttributeError):
        trioflow.InputRef("x").upper  # noqa: B018  (outside a trace: a plain AttributeError)


def test_user_code_in_a_package_with_a_stdlib_name_is_still_user_code() -> None:
    def body(x):  # type: ignore[no-untyped-def]
        # As if written in the user's own package `test` (a stdlib name): not the stdlib.
        code = compile("f'{x}'", "/home/user/project/test/graphs.py", "eval")
        return work(x=eval(code, {"__name__": "test.graphs", "x": x})).out

    assert compile_error(body).code == "ref-as-text"
