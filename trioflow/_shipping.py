"""Shipping a call to another process: what may be sent, and how errors come back.

Executors that run work elsewhere (`ships = True`) get their function and arguments pickled
with cloudpickle. `check_shippable` refuses, before submission, what cannot be pickled and what
would pickle into a useless copy (idle Trio objects); `shippable` turns an `async def` into a
plain function that runs it under `trio.run` on the worker. On the worker, `call_and_capture`
turns an exception into a `Failure` that always crosses the process boundary; `restore` gives
back the original exception, or a `RemoteError` when it cannot be rebuilt here.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import io
import pickle
import sys
import traceback
import weakref
from collections.abc import Callable, Mapping
from types import FunctionType, ModuleType
from typing import Any

import trio

from ._errors import ConfigError, RemoteError

__all__ = [
    "Failure",
    "by_reference",
    "call_and_capture",
    "check_shippable",
    "require",
    "restore",
    "run_async_on_worker",
    "shippable",
]


def require(module: str, extra: str) -> ModuleType:
    """Import an optional dependency, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(
            f"this executor needs {module!r}, which is not installed; "
            f"install it with: pip install 'trioflow[{extra}]'"
        ) from exc


# -- what may be shipped -------------------------------------------------------------------


class _Refused(Exception):
    """Raised inside the checking pickler when it meets an object that must not be shipped."""

    def __init__(self, obj: object, why: str) -> None:
        super().__init__(why)
        self.obj = obj
        self.why = why


def _is_trio_object(obj: object) -> bool:
    module = type(obj).__module__ or ""
    if module != "trio" and not module.startswith(("trio.", "trio_")):
        return False
    # A trio.Path is a path, and exceptions are values: both mean the same over there.
    return not isinstance(obj, BaseException | trio.Path)


class _Sink(io.RawIOBase):
    """A file that forgets what is written: the check needs the walk, not the bytes."""

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        # Large buffers arrive as a `pickle.PickleBuffer` (protocol 5), which has no len().
        with memoryview(b) as view:
            return view.nbytes


class _Checked:
    """Functions and classes already checked whole, by identity; forgotten when collected.

    A function or class is checked once, like the tool's own function: after that, meeting it
    again (the class of every argument of that type, a helper a closure refers to) costs a
    lookup instead of a walk through its code, globals and class body. Instances are always
    walked: what they hold may change from call to call.
    """

    __slots__ = ("_ids",)

    def __init__(self) -> None:
        self._ids: dict[int, weakref.ref[Any]] = {}

    def __contains__(self, obj: object) -> bool:
        return id(obj) in self._ids

    def add(self, obj: object) -> None:
        key, ids = id(obj), self._ids
        if key in ids:
            return

        def forget(_: object) -> None:
            ids.pop(key, None)

        with contextlib.suppress(TypeError):  # not weak-referenceable: checked every time
            ids[key] = weakref.ref(obj, forget)


_checked = _Checked()
# What the checker writes instead of an object it need not walk (the bytes are never read).
_STAND_IN = (len, ())


def _checking_pickler() -> type[pickle.Pickler]:
    import cloudpickle  # type: ignore[import-untyped]

    from ._context import NodeContext

    class Checker(cloudpickle.Pickler):  # type: ignore[misc]
        last: object = None

        def __init__(self, file: Any, protocol: int) -> None:
            super().__init__(file, protocol=protocol)
            self.met: list[object] = []  # functions and classes walked in this check

        def reducer_override(self, obj: Any) -> Any:
            self.last = obj
            if isinstance(obj, type | FunctionType):
                if obj in _checked:
                    return _STAND_IN  # checked whole before: no walk
                self.met.append(obj)
            if _is_ray_object_ref(obj):
                return _STAND_IN  # Ray resolves its own references; nothing to check
            if _is_trio_object(obj):
                raise _Refused(
                    obj,
                    "Trio objects belong to the Trio run that made them; a copy in another "
                    "process would be a different, useless object",
                )
            if isinstance(obj, NodeContext):
                raise _Refused(obj, "a node's context lives in the run's process")
            return super().reducer_override(obj)

    return Checker


@functools.cache
def _pickler_class() -> type[pickle.Pickler]:
    return _checking_pickler()


def _check_one(node_id: str, what: str, value: object) -> None:
    pickler: Any = _pickler_class()(_Sink(), protocol=pickle.HIGHEST_PROTOCOL)
    try:
        pickler.dump(value)
    except _Refused as refused:
        raise ConfigError(
            f"node {node_id!r}: {what} contains a {_type_name(refused.obj)}, which cannot be "
            f"shipped to another process ({refused.why}); create it inside the tool, or run "
            "the tool on executor='loop' or 'thread'"
        ) from None
    except Exception as exc:
        culprit = getattr(pickler, "last", None)
        raise ConfigError(
            f"node {node_id!r}: {what} cannot be pickled, so it cannot be shipped to another "
            f"process: {_type_name(culprit)} ({type(exc).__name__}: {exc}); pass picklable "
            "values (create clients, locks and files inside the tool)"
        ) from exc
    for obj in pickler.met:  # the whole walk succeeded: each of them shipped whole
        _checked.add(obj)


def _type_name(obj: object) -> str:
    t = type(obj)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


# Values that hold nothing else, so need no walk through the pickler.
ATOMS = frozenset({int, float, str, bytes, bool, type(None), complex})
_PLAIN_BUDGET = 64


def _plain(value: object, budget: list[int]) -> bool:
    """Built-in data only (no walk through the pickler needed): the common case, made cheap.

    `budget` bounds the items looked at; past it the pickler walks the value instead (in C,
    faster than this loop for big containers of atoms)."""
    t = type(value)
    if t in ATOMS:
        return True
    if t is list or t is tuple:
        budget[0] -= len(value)  # type: ignore[arg-type]
        if budget[0] < 0:
            return False
        return all(type(v) in ATOMS or _plain(v, budget) for v in value)  # type: ignore[attr-defined]
    if t is dict:
        budget[0] -= 2 * len(value)  # type: ignore[arg-type]
        if budget[0] < 0:
            return False
        return all(
            (type(k) in ATOMS or _plain(k, budget)) and (type(v) in ATOMS or _plain(v, budget))
            for k, v in value.items()  # type: ignore[attr-defined]
        )
    return False


def check_shippable(
    node_id: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> None:
    """Raise a bare `ConfigError` naming the node and the type if the call cannot be shipped.

    Refused: anything cloudpickle cannot pickle, and Trio objects (events, limiters, locks,
    channels, nurseries, cancel scopes, ...) and node contexts anywhere inside the function
    or its arguments.
    """
    if fn not in _checked:
        _check_one(node_id, f"the function {getattr(fn, '__qualname__', fn)!r}", fn)
        _checked.add(fn)
    for i, value in enumerate(args):
        if type(value) not in ATOMS and not _plain(value, [_PLAIN_BUDGET]):
            _check_one(node_id, f"positional argument {i}", value)
    for name, value in kwargs.items():
        if type(value) not in ATOMS and not _plain(value, [_PLAIN_BUDGET]):
            _check_one(node_id, f"argument {name!r}", value)


def _is_ray_object_ref(value: object) -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and isinstance(value, ray.ObjectRef)


_async_wrappers: weakref.WeakKeyDictionary[Any, Callable[..., Any]] = weakref.WeakKeyDictionary()


_sync_functions = _Checked()  # seen before and not `async def`: shipped as they are
_sync_ids = _sync_functions._ids


def shippable(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The function to ship for `fn`: an `async def` is wrapped to run under `trio.run`."""
    if id(fn) in _sync_ids:  # (the executors ask on every call)
        return fn
    if not inspect.iscoroutinefunction(fn):
        _sync_functions.add(fn)
        return fn
    try:
        found = _async_wrappers.get(fn)
    except TypeError:  # not weak-referenceable
        return functools.partial(run_async_on_worker, fn)
    if found is None:  # one wrapper per function: executors may cache per function
        found = _async_wrappers[fn] = functools.partial(run_async_on_worker, fn)
    return found


def run_async_on_worker(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Run an `async def` to completion in a fresh Trio run (on the worker)."""
    return trio.run(functools.partial(fn, *args, **kwargs))


# -- errors coming back --------------------------------------------------------------------


class Failure(Exception):
    """An exception raised on a worker, in a form that always crosses back.

    `pickled` holds the exception pickled with cloudpickle (or None if it could not be);
    the names and the traceback text are there in case it cannot be unpickled here.
    """

    def __init__(
        self, pickled: bytes | None, type_name: str, message: str, remote_traceback: str
    ) -> None:
        super().__init__(pickled, type_name, message, remote_traceback)
        self.pickled = pickled
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback


def capture(exc: BaseException) -> Failure:
    """Pack an exception raised on the worker into a `Failure` (runs on the worker)."""
    import cloudpickle

    text = "".join(traceback.format_exception(exc))
    pickled: bytes | None
    try:
        pickled = cloudpickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
        pickle.loads(pickled)  # an __init__ that does not take its own args fails here
    except Exception:
        pickled = None
    try:
        message = str(exc)
    except Exception:
        message = f"<str() of {type(exc).__qualname__} failed>"
    return Failure(pickled, type(exc).__qualname__, message, text)


def by_reference(fn: Callable[..., Any]) -> bytes | None:
    """`fn` pickled, if cloudpickle ships it by reference (as a module and a name, the way
    plain pickle does: a function a worker can import); None if it ships by value.

    Those bytes never change, so an executor may pickle such a function once and send the
    bytes with each call (`call_and_capture` loads them): cloudpickle spends as much on one
    function as on the rest of a small call. A function shipped by value (a lambda, a
    closure, one defined in `__main__`) is pickled afresh each call, as the values it refers
    to may have changed in between."""
    import cloudpickle

    try:
        plain = pickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL)
        cloud = cloudpickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return None
    return plain if plain == cloud else None


def call_and_capture(
    fn: Callable[..., Any] | bytes, args: tuple[Any, ...] | None, kwargs: dict[str, Any]
) -> Any:
    """Call `fn` on the worker (the function, or its `by_reference` bytes) with `args` (None
    for none) and `kwargs`; an exception leaves as a `Failure` (cancellation does not: Ray's
    cancel arrives as a KeyboardInterrupt, which must reach Ray)."""
    try:
        call: Any = pickle.loads(fn) if type(fn) is bytes else fn
        return call(*args, **kwargs) if args else call(**kwargs)
    except (Exception, SystemExit) as exc:  # sys.exit() in a tool fails its node, like a raise
        raise capture(exc) from None


def restore(failure: Failure) -> Exception:
    """The original exception of a `Failure`, or a `RemoteError` if it cannot be rebuilt."""
    pickled = failure.pickled
    if pickled is not None:
        try:
            exc = pickle.loads(pickled)
        except Exception:
            pass
        else:
            if isinstance(exc, Exception):
                exc.add_note(f"(raised in a worker process)\n{failure.remote_traceback}")
                return exc
    return RemoteError(failure.type_name, failure.message, failure.remote_traceback)
