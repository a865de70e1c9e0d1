"""Where an attempt runs: the `Executor` protocol, the built-in executors, and the key table.

A tool names a key (`@tool(executor="process")`); the runtime maps keys to executors, enters
each on first use and exits it when the runtime (or, for a run's own `executors=`, the run)
ends. The attempt runner calls `await executor.run(fn, **kwargs)` inside the node's timeout and
retry loop, with its capacity held: neither scheduler knows where the work goes.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from typing import Any, Protocol, Self, runtime_checkable

import attrs
import trio

from . import _shipping, _threads
from ._checks import check_named
from ._errors import ConfigError, ConfigTypeError
from ._graph import OutputRef
from ._slots import release_token, take_free_token
from ._tool import Tool

__all__ = [
    "BUILTIN_KEYS",
    "Executor",
    "ExecutorTable",
    "LoopExecutor",
    "QuickLimiter",
    "ThreadExecutor",
    "check_executors",
    "threads_waited_on",
    "to_thread",
]

# Worker-thread jobs trioflow is waiting on, in this process: exact from before the job is
# handed to a thread until its result is back in Trio. The testing kit reads it to keep virtual
# time still while a thread runs (Trio's own thread cache marks a worker idle a moment before
# its result arrives, which is too early to go by).
_waited_on = 0


def threads_waited_on() -> int:
    """How many worker-thread jobs trioflow's tasks are waiting on right now."""
    return _waited_on


async def to_thread(
    fn: Callable[[], Any],
    *,
    limiter: trio.CapacityLimiter | None = None,
    thread_name: str | None = None,
    abandon_on_cancel: bool = False,
) -> Any:
    """`trio.to_thread.run_sync(fn)`, counted in `threads_waited_on()` while it runs."""
    global _waited_on
    _waited_on += 1
    try:
        return await trio.to_thread.run_sync(
            fn, limiter=limiter, thread_name=thread_name, abandon_on_cancel=abandon_on_cancel
        )
    finally:
        _waited_on -= 1


_run_sync = trio.to_thread.run_sync
# Hand calls to Trio's worker threads directly where this Trio is verified (`_threads`); tests
# set it to False to run the `trio.to_thread.run_sync` fallback.
DIRECT_THREADS = True


@runtime_checkable
class Executor(Protocol):
    """Runs one call somewhere: in the event loop, a thread, a process, a cluster.

    `async with executor:` is entered once per runtime, on first use, and exited at runtime
    exit. `await executor.run(fn, *args, **kwargs)` runs one call and returns its result, or
    raises its exception. An executor that ships work to another process sets `ships = True`;
    trioflow then checks what is shipped before calling `run`, and an `async def` tool arrives
    as a plain function that runs it under `trio.run`.
    """

    async def __aenter__(self) -> Any: ...

    async def __aexit__(self, *exc_info: object) -> bool | None: ...

    async def run(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any: ...


class LoopExecutor:
    """`"loop"`: the call runs in the event loop (async tools' default)."""

    ships = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    async def run(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        result = fn(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result


class ThreadExecutor:
    """`"thread"`: the call runs in a worker thread (sync tools' default).

    The thread is waited for (a cancelled node is cancelled once its thread returns): a thread
    cannot be interrupted, so a CPU-bound tool that must be stoppable belongs on `"process"`.
    The number of threads is bounded by the nodes' own capacity (`max_concurrency`, `limits=`),
    not by Trio's default of 40 threads; `max_threads` adds a bound of its own. Calls go to
    Trio's thread cache directly where this Trio is verified (see `_threads`; `trio.from_thread`
    works inside them), else through `trio.to_thread.run_sync`.
    """

    ships = False

    def __init__(self, max_threads: float = math.inf) -> None:
        self.max_threads = max_threads
        self._tokens: QuickLimiter | None = None
        self._direct = False

    async def __aenter__(self) -> Self:
        self._start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    def _start(self) -> QuickLimiter:
        self._direct = DIRECT_THREADS and _threads.available()
        tokens = self._tokens = QuickLimiter(self.max_threads)
        return tokens

    async def run(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        global _waited_on
        tokens = self._tokens
        if tokens is None:  # used without `async with`: a limiter of this Trio run
            tokens = self._start()
        _waited_on += 1  # (`to_thread`, inlined: one coroutine fewer on a node's round trip)
        try:
            if self._direct:
                if tokens._limiter is None:
                    return await _threads.run_in_thread(fn, args, kwargs)
                task = trio.lowlevel.current_task()
                await tokens.acquire_on_behalf_of(task)
                try:
                    return await _threads.run_in_thread(fn, args, kwargs)
                finally:
                    tokens.release_on_behalf_of(task)
            call = functools.partial(fn, *args, **kwargs) if (args or kwargs) else fn
            # Named here: Trio's default name looks up the task's name and the partial's
            # missing __name__ (an AttributeError) on every call.
            name = f"trioflow: {getattr(fn, '__qualname__', 'call')}"
            # A QuickLimiter is what Trio's signature calls a CapacityLimiter (its docstring).
            return await _run_sync(call, limiter=tokens, thread_name=name)  # type: ignore[arg-type]
        finally:
            _waited_on -= 1


class QuickLimiter:
    """A thread or worker limiter that takes a free token without a trip through the scheduler.

    `trio.to_thread.run_sync` and trio-parallel take a token with
    `CapacityLimiter.acquire_on_behalf_of`, which yields to the scheduler even when a token is
    free: a whole extra scheduling pass (about 10 us here, a fifth of a thread's round trip)
    on a path that suspends anyway a moment later. Both document that any object with the
    `CapacityLimiter` methods they call will do; this one takes a free token at once, waits
    like a `CapacityLimiter` only when none is free, and with `total=inf` holds no tokens at
    all. Cancellation is unchanged: a cancelled call raises before it takes a token.
    """

    __slots__ = ("_limiter",)

    def __init__(self, total: float) -> None:
        self._limiter = None if total == math.inf else trio.CapacityLimiter(total)

    async def acquire_on_behalf_of(self, borrower: object) -> None:
        # A cancelled call stops here, as at a CapacityLimiter: trio-parallel would otherwise
        # meet the cancellation while sending the job, and kill the worker to be safe.
        await _checkpoint_if_cancelled()
        limiter = self._limiter
        if limiter is not None and not take_free_token(limiter, borrower):
            await limiter.acquire_on_behalf_of(borrower)

    def release_on_behalf_of(self, borrower: object) -> None:
        if self._limiter is not None:
            release_token(self._limiter, borrower)

    async def __aenter__(self) -> None:
        # (`acquire_on_behalf_of`, inlined: trio-parallel enters the limiter on every call)
        await _checkpoint_if_cancelled()
        limiter = self._limiter
        if limiter is not None:
            task = trio.lowlevel.current_task()
            if not take_free_token(limiter, task):
                await limiter.acquire_on_behalf_of(task)

    async def __aexit__(self, *exc_info: object) -> None:
        self.release_on_behalf_of(trio.lowlevel.current_task())


_checkpoint_if_cancelled = trio.lowlevel.checkpoint_if_cancelled


BUILTIN_KEYS = ("loop", "thread", "process", "ray")
_SHIPPING_BUILTINS = ("process", "ray")


def _builtin(key: str) -> Executor:
    if key == "loop":
        return LoopExecutor()
    if key == "thread":
        return ThreadExecutor()
    # The optional extras (trio-parallel, Ray) are imported when the executor is entered.
    if key == "process":
        from ._process import ProcessExecutor

        return ProcessExecutor()
    from ._ray import RayExecutor

    return RayExecutor()


def check_executors(executors: object, argument: str = "executors") -> dict[str, Executor]:
    """Validate an `executors={key: executor}` mapping before anything starts."""

    def one(key: str, executor: object) -> Executor:
        if not isinstance(executor, Executor):
            raise ConfigTypeError(
                f"{argument}[{key!r}] must implement trioflow.Executor (async with, and "
                f"`async def run(fn, /, *args, **kwargs)`), got {executor!r}"
            )
        return executor

    return check_named(executors, argument, "{'process': trioflow.ProcessExecutor()}", one)


@attrs.define(eq=False)
class ExecutorTable:
    """Executors by key, entered on first use and exited (in reverse) by `aclose()`.

    A run's own `executors=` form a table layered over the runtime's (`parent`): its keys win,
    and what it entered is exited when the run ends.
    """

    given: dict[str, Executor] = attrs.field(factory=dict)
    parent: ExecutorTable | None = None
    _entered: dict[str, Executor] = attrs.field(factory=dict, init=False)
    _stack: AsyncExitStack = attrs.field(factory=AsyncExitStack, init=False)
    _lock: trio.Lock | None = attrs.field(default=None, init=False)
    _checked_inputs: Mapping[str, Any] | None = attrs.field(default=None, init=False)

    def knows(self, key: str) -> bool:
        if key in self.given or key in BUILTIN_KEYS:
            return True
        return self.parent is not None and self.parent.knows(key)

    def keys(self) -> list[str]:
        found = set(self.given) | set(BUILTIN_KEYS)
        if self.parent is not None:
            found |= set(self.parent.keys())
        return sorted(found)

    def check(self, key: str, where: str) -> None:
        """Fail before anything starts if `key` names no executor."""
        if not self.knows(key):
            raise ConfigError(
                f"{where} runs on executor {key!r}, which is not defined (known: {self.keys()}); "
                f"pass executors={{{key!r}: ...}} to trioflow.run() or open_runtime()"
            )

    def ships(self, key: str) -> bool:
        """Whether `key`'s executor ships work to another process (known without entering)."""
        found = self._entered.get(key) or self.given.get(key)
        if found is not None:
            return bool(getattr(found, "ships", False))
        if self.parent is not None and self.parent.knows(key):
            return self.parent.ships(key)
        return key in _SHIPPING_BUILTINS

    def check_call(self, node_id: str, tool: Tool, inputs: Mapping[str, Any]) -> None:
        """Before a node takes a slot: what a shipped call would send (a `ConfigError`)."""
        if self.ships(tool.executor_key):
            check_shippable(node_id, tool.fn, inputs, tool.context_param)
            self._checked_inputs = inputs

    def was_checked(self, inputs: Mapping[str, Any]) -> bool:
        """Whether `inputs` are the very ones `check_call` checked last (then forgotten).

        A graph_fn call is checked before it takes a slot, and the node then starts with the
        same inputs object: checking it again would walk every non-trivial argument through
        the pickler twice. Any other call in between (or a static graph's node, whose inputs
        are built from its dependencies' outputs) is checked when it starts.
        """
        if self._checked_inputs is inputs:
            self._checked_inputs = None
            return True
        return False

    def check_constants(self, node_ids: Sequence[str], targets: Sequence[Any], plan: Any) -> None:
        """Before any node of a static graph starts: the functions, context parameters and
        constant arguments of the nodes whose executor ships (constants inside a structure
        that also holds refs included; the refs themselves pickle as plain data). `plan` is
        the scheduler's `Plan` (its `shipped_args(i)`)."""
        for j, target in enumerate(targets):
            if isinstance(target, Tool) and self.ships(target.executor_key):
                check_shippable(node_ids[j], target.fn, plan.shipped_args(j), target.context_param)

    def keeps_outputs(self, key: str) -> bool:
        """Whether `key`'s executor can leave outputs where they were made (`run_outputs`)."""
        found = self._entered.get(key) or self.given.get(key)
        if found is not None:
            return callable(getattr(found, "run_outputs", None))
        if self.parent is not None and self.parent.knows(key):
            return self.parent.keeps_outputs(key)
        return key == "ray"

    def remote_outputs(self, plan: Any, base: int) -> dict[int, frozenset[str]]:
        """For a static graph: the outputs that may stay where they were made (Ray's object
        store), by ledger index. An output stays remote when its node runs on such an executor
        and every reader is a node on one too, taking it whole as an argument (or in a list of
        them); a graph output, a projection or a local reader needs the value here."""
        targets = plan.targets
        keeps = [isinstance(t, Tool) and self.keeps_outputs(t.executor_key) for t in targets]
        if not any(keeps):
            return {}
        node_of = plan.node_of
        needed: set[tuple[int, str]] = {(node_of(r), r.output) for r in _refs(plan.graph.outputs)}
        for j, node in enumerate(plan.graph.nodes.values()):
            for value in node.args.values():
                whole = value if isinstance(value, list) else [value]
                if keeps[j] and all(type(r) is OutputRef and not r.path for r in whole):
                    continue  # read whole by a node that keeps it: may stay remote
                needed.update((node_of(r), r.output) for r in _refs(value))
        found: dict[int, frozenset[str]] = {}
        for i, target in enumerate(targets):
            if keeps[i]:
                keep = frozenset(o for o in target.outputs if (i, o) not in needed)
                if keep:
                    found[base + i] = keep
        return found

    def entered(self, key: str) -> Executor | None:
        """The executor for `key` if it is already entered (the common, cheap case)."""
        found = self._entered.get(key)
        if found is None and key not in self.given and self.parent is not None:
            return self.parent.entered(key)
        return found

    async def get(self, key: str) -> Executor:
        """The entered executor for `key`, entering it now if this is its first use."""
        found = self.entered(key)
        if found is not None:
            return found
        if key not in self.given and self.parent is not None:
            return await self.parent.get(key)
        if self._lock is None:
            self._lock = trio.Lock()
        async with self._lock:
            found = self._entered.get(key)
            if found is None:
                executor = self.given.get(key) or _builtin(key)
                await self._stack.enter_async_context(executor)
                found = self._entered[key] = executor
        return found

    async def aclose(self) -> None:
        """Exit every executor this table entered, last entered first."""
        self._entered.clear()
        self._checked_inputs = None
        await self._stack.aclose()


def _refs(tree: Any) -> list[OutputRef]:
    """The output refs anywhere in an argument tree."""
    if isinstance(tree, OutputRef):
        return [tree]
    if isinstance(tree, list | tuple):
        return [r for item in tree for r in _refs(item)]
    if isinstance(tree, dict):
        return [r for item in tree.values() for r in _refs(item)]
    return []


def check_shippable(
    node_id: str,
    fn: Callable[..., Any],
    kwargs: Mapping[str, Any],
    context_param: str | None = None,
) -> None:
    """Raise a bare `ConfigError` naming `node_id` if the call cannot be shipped to another
    process: a tool that takes a context, an unpicklable function or argument, a Trio object.
    """
    if context_param is not None:
        raise ConfigError(
            f"node {node_id!r}: its tool takes {context_param!r} (a NodeContext), which lives "
            "in the run's process and cannot be shipped to another one; run the tool on "
            "executor='loop' or 'thread', or pass what it needs from the context as arguments"
        )
    _shipping.check_shippable(node_id, fn, (), kwargs)


shippable = _shipping.shippable
