"""What may be shipped to another process is checked before submission."""

from __future__ import annotations

import pickle
import threading

import attrs
import pytest
import trio
from hypothesis import given, strategies as st

import trioflow
from trioflow import _shipping
from trioflow._shipping import check_shippable, restore, shippable


def square(x: int) -> int:
    return x * x


@attrs.define
class Job:
    name: str
    payload: object


def test_plain_values_functions_closures_and_lambdas_pass() -> None:
    k = 3
    check_shippable("n_1", square, (1,), {"rows": [{"a": (1, 2.0, "x", b"y", None)}]})
    check_shippable("n_1", lambda v: v + k, (), {"job": Job("a", {1, 2})})


@pytest.mark.parametrize(
    "make",
    [
        trio.Event,
        lambda: trio.CapacityLimiter(2),
        trio.Lock,
        lambda: trio.open_memory_channel(1)[0],
        lambda: trio.open_memory_channel(1)[1],
        trio.CancelScope,
        lambda: trio.Semaphore(1),
    ],
    ids=[
        "Event",
        "CapacityLimiter",
        "Lock",
        "send-channel",
        "receive-channel",
        "CancelScope",
        "Semaphore",
    ],
)
@pytest.mark.parametrize(
    "wrap",
    [lambda o: o, lambda o: [1, {"deep": (o,)}], lambda o: Job("j", o)],
    ids=["bare", "in-containers", "in-an-object"],
)
async def test_trio_objects_are_refused_naming_node_and_type(make, wrap) -> None:
    obj = make()
    with pytest.raises(trioflow.ConfigError) as info:
        check_shippable("crunch_3", square, (), {"x": wrap(obj)})
    assert type(info.value) is trioflow.ConfigError  # bare, not a group, not a subclass
    message = str(info.value)
    assert "'crunch_3'" in message
    assert type(obj).__name__ in message
    assert "argument 'x'" in message


async def test_a_nursery_is_refused() -> None:
    async with trio.open_nursery() as nursery:
        with pytest.raises(trioflow.ConfigError, match=r"'fan_1'.*Nursery"):
            check_shippable("fan_1", square, (nursery,), {})


def test_a_function_closing_over_a_trio_object_is_refused() -> None:
    done = trio.Event()

    def notify() -> None:
        done.set()

    with pytest.raises(trioflow.ConfigError, match=r"'notify_1'.*the function.*trio.Event"):
        check_shippable("notify_1", notify, (), {})


def test_unpicklable_arguments_are_refused_naming_the_type() -> None:
    with pytest.raises(trioflow.ConfigError, match=r"'load_2'.*argument 'lock'.*lock"):
        check_shippable("load_2", square, (), {"lock": threading.Lock()})
    with pytest.raises(trioflow.ConfigError, match=r"'load_2'.*generator"):
        check_shippable("load_2", square, (), {"rows": (i for i in range(3))})


def test_a_node_context_is_refused() -> None:
    from trioflow._context import NodeContext

    ctx = object.__new__(NodeContext)
    with pytest.raises(trioflow.ConfigError, match=r"'t_1'.*NodeContext"):
        check_shippable("t_1", square, (), {"context": ctx})


def test_a_trio_path_ships() -> None:
    check_shippable("t_1", square, (), {"p": trio.Path("/tmp")})


async def async_double(x: int) -> int:
    await trio.sleep(0.001)
    return 2 * x


def test_shippable_wraps_async_def_to_run_under_trio_run() -> None:
    assert shippable(square) is square
    wrapped = shippable(async_double)
    assert wrapped(x=21) == 42  # what the worker does: a fresh trio.run


def test_restore_gives_a_remote_error_when_the_class_cannot_be_rebuilt() -> None:
    from trioflow._shipping import Failure

    failure = Failure(b"not a pickle", "Odd", "odd things", "Traceback: ...")
    err = restore(failure)
    assert isinstance(err, trioflow.RemoteError)
    assert (err.type_name, err.message, err.remote_traceback) == (
        "Odd",
        "odd things",
        "Traceback: ...",
    )
    assert str(err) == "Odd: odd things"


# Any nesting of plain values passes; the same nesting with one Trio object anywhere fails.
leaves = st.one_of(st.integers(), st.text(max_size=5), st.binary(max_size=5), st.none())


def nest(children):
    return st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.dictionaries(st.text(max_size=3), children, max_size=3),
        st.builds(Job, st.text(max_size=3), children),
    )


values = st.recursive(leaves, nest, max_leaves=12)


def plant(value, path: list[int], planted: object):
    """Put `planted` somewhere inside `value` (chosen by `path`)."""
    if isinstance(value, list) and value:
        i = path[0] % len(value) if path else 0
        value[i] = plant(value[i], path[1:], planted)
        return value
    if isinstance(value, dict) and value:
        key = sorted(value)[path[0] % len(value) if path else 0]
        value[key] = plant(value[key], path[1:], planted)
        return value
    if isinstance(value, tuple) and value:
        items = list(value)
        i = path[0] % len(items) if path else 0
        items[i] = plant(items[i], path[1:], planted)
        return tuple(items)
    if isinstance(value, Job):
        value.payload = plant(value.payload, path[1:], planted)
        return value
    return [value, planted]


@given(values, st.lists(st.integers(min_value=0, max_value=7), max_size=6))
def test_a_trio_object_anywhere_is_found(value, path) -> None:
    check_shippable("n_1", square, (), {"v": value})
    with pytest.raises(trioflow.ConfigError, match="trio.Event"):
        check_shippable("n_1", square, (), {"v": plant(value, path, trio.Event())})


# -- what a check costs: each class and function is walked once, each value every time ------


def test_a_large_out_of_band_buffer_passes_the_check() -> None:
    # Protocol 5 hands large buffers (numpy arrays, PickleBuffer) to the file as a
    # PickleBuffer, which has no len(): the check used to refuse every such argument.
    check_shippable("n_1", square, (), {"data": pickle.PickleBuffer(bytearray(200_000))})


def test_a_class_is_walked_once_but_its_instances_every_time() -> None:
    @attrs.define
    class Local:  # defined here: cloudpickle ships it by value, a walk through its body
        value: object

    walked: list[object] = []

    class Recording(_shipping._Checked):
        __slots__ = ()

        def add(self, obj: object) -> None:
            walked.append(obj)  # called for what a successful check walked through
            super().add(obj)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_shipping, "_checked", Recording())
        check_shippable("n_1", square, (), {"v": Local(1)})
        assert Local in walked
        walked.clear()
        check_shippable("n_2", square, (), {"v": Local(2)})
        assert Local not in walked  # met again: looked up, not walked
    with pytest.raises(trioflow.ConfigError, match=r"'n_3'.*trio.Event"):
        check_shippable("n_3", square, (), {"v": Local(trio.Event())})


def test_a_function_that_failed_the_check_is_checked_again() -> None:
    lock = threading.Lock()

    def uses_lock() -> None:
        with lock:
            pass

    for node in ("n_1", "n_2"):
        with pytest.raises(trioflow.ConfigError, match=rf"'{node}'.*lock"):
            check_shippable(node, uses_lock, (), {})


@pytest.mark.parametrize("size", [10, 63, 64, 65, 5_000])
@pytest.mark.parametrize("kind", [list, tuple, "dict"])
def test_big_containers_of_atoms_pass_and_a_trio_object_past_the_fast_path_is_found(
    size: int, kind
) -> None:
    items: list[object] = list(range(size))
    make = (lambda xs: dict(enumerate(xs))) if kind == "dict" else kind
    check_shippable("n_1", square, (), {"v": make(items)})
    items[-1] = trio.Event()
    with pytest.raises(trioflow.ConfigError, match="trio.Event"):
        check_shippable("n_1", square, (), {"v": make(items)})


# -- functions shipped by reference are pickled once -----------------------------------------


class Counted:
    """A callable that pickles as a global name (as a module-level function does), counting
    each time it is pickled."""

    pickled = 0

    def __call__(self, x: int) -> int:
        return x + 1

    def __reduce__(self) -> str:
        Counted.pickled += 1
        return "COUNTED"


COUNTED = Counted()


def test_by_reference_gives_bytes_only_for_what_ships_by_reference() -> None:
    found = _shipping.by_reference(square)
    assert found is not None and pickle.loads(found) is square
    k = 3
    assert _shipping.by_reference(lambda v: v + k) is None  # by value: pickled each call

    def in_main(x: int) -> int:
        return x

    in_main.__module__ = "__main__"  # cloudpickle ships `__main__`'s functions by value
    in_main.__qualname__ = "in_main"
    assert _shipping.by_reference(in_main) is None


def test_call_and_capture_calls_a_function_given_as_its_bytes() -> None:
    found = _shipping.by_reference(square)
    assert found is not None
    assert _shipping.call_and_capture(found, None, {"x": 4}) == 16
    assert _shipping.call_and_capture(square, (5,), {}) == 25
    with pytest.raises(_shipping.Failure):
        _shipping.call_and_capture(found, None, {"x": "a"})


async def test_a_process_ships_a_function_by_reference_pickled_once_per_executor() -> None:
    with trio.fail_after(60):
        async with trioflow.ProcessExecutor(max_workers=1) as ex:
            Counted.pickled = 0
            assert [await ex.run(COUNTED, i) for i in range(5)] == [1, 2, 3, 4, 5]
            # Twice to learn that it ships by reference (pickle, cloudpickle), then never
            # again: each call sends the same bytes. Without that, once per call.
            assert Counted.pickled == 2


async def test_a_closure_shipped_by_value_sees_its_values_as_they_are_at_each_call() -> None:
    seen: list[int] = []

    def read(x: int) -> list[int]:
        return [*seen, x]

    tool = trioflow.tool(outputs=["y"], executor="process")(read)

    @trioflow.graph_fn(outputs=["ys"])
    async def graph() -> list[list[int]]:
        ys = []
        for i in range(3):
            ys.append((await tool(x=i))["y"])
            seen.append(10 + i)  # changed here, between two calls
        return ys

    with trio.fail_after(60):
        async with trioflow.open_runtime(executors={"process": trioflow.ProcessExecutor(1)}):
            out = await trioflow.run_async(graph)
    assert out == {"ys": [[0], [10, 1], [10, 11, 2]]}
