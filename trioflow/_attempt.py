"""Running one node to the end: reuse, rate turns, attempts on an executor, timeouts, retries.

Both schedulers call `execute_node` for every node that is not on their inlined fast path (a
plain async tool; for an awaited graph_fn call, also one plain attempt on an entered executor,
see `_reactive.call_tool`). Where an attempt runs is the executor's business (`_executor`);
whether it needs to run at all is the memo's (`_runstate.NodeMemo`); the ledger records what
happened.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import trio

from ._context import Frame, context_from_frame
from ._errors import NodeFailed
from ._executor import check_shippable, shippable
from ._ratelimit import rate_key_of

if TYPE_CHECKING:
    from ._runstate import RunState
    from ._tool import Tool

__all__ = ["execute_node", "node_failed"]


def node_failed(node_id: str, tool: str, exc: BaseException) -> NodeFailed:
    """The `NodeFailed` to raise from a node's original exception."""
    return NodeFailed(node_id, tool, f"node {node_id!r} (tool {tool!r}) failed: {exc!r}")


def _timed_out(node_id: str, tool: str, attempt: int, timeout: float) -> trio.TooSlowError:
    return trio.TooSlowError(
        f"node {node_id!r} (tool {tool!r}): attempt {attempt} timed out after {timeout}s "
        "(the tool's per-attempt timeout=)"
    )


async def execute_node(
    run: RunState, idx: int, tool: Tool, inputs: Mapping[str, Any], frame: Frame
) -> dict[str, Any]:
    """Run one node to completion and record it; the caller holds the node's capacity.

    `frame` is this node's frame (`FRAME` is set to it). A failure raises `NodeFailed` from the
    original exception; cancellation marks the node `CANCELLED` and propagates untouched.
    """
    ledger = run.ledger
    ledger.start(idx, inputs)
    try:
        memo = run.memo
        if memo is not None:
            try:
                hit = memo.lookup(frame.node_id, tool, inputs)
            except Exception as exc:  # e.g. a cached tool's arguments cannot be keyed
                ledger.fail(idx, exc)
                raise node_failed(frame.node_id, tool.name, exc) from exc
            if hit is not None:
                ledger.reuse(idx, hit[0], hit[1])
                return hit[0]
        key = tool.executor_key
        executor = run.executors.entered(key) or await run.executors.get(key)
        if (
            memo is None
            and tool.retry is None
            and tool.timeout is None
            and tool.rate_limit is None
            and (fn := _one_attempt_fn(run, idx, tool, inputs, frame.node_id, executor)) is not None
        ):
            # The common case, kept short: one attempt, nothing around it.
            frame.attempt = 1
            try:
                result = await executor.run(fn, **inputs)
                if key != "loop":
                    # A run deadline (or outer cancel) that passed while a thread ran.
                    await _checkpoint_if_cancelled()
                outputs = tool.normalize(result)
            except Exception as exc:
                ledger.fail(idx, exc)
                raise node_failed(frame.node_id, tool.name, exc) from exc
            ledger.done(idx, outputs)
            return outputs
        return await _attempts(run, idx, tool, inputs, frame, executor)
    except BaseException:
        ledger.cancel(idx)  # a no-op unless the node is still RUNNING
        raise


_checkpoint_if_cancelled = trio.lowlevel.checkpoint_if_cancelled


def _one_attempt_fn(
    run: RunState,
    idx: int,
    tool: Tool,
    inputs: Mapping[str, Any],
    node_id: str,
    executor: Any,
) -> Callable[..., Any] | None:
    """The function to hand the executor for a node of one plain attempt, after the shipping
    check where it ships; None if the node needs the general path (a context, or outputs that
    stay remote)."""
    fn = tool.fn
    if not getattr(executor, "ships", False):
        return fn if tool.context_param is None else None
    if run.remote_outputs and idx in run.remote_outputs:
        return None
    if not run.executors.was_checked(inputs):
        check_shippable(node_id, fn, inputs, tool.context_param)
    return shippable(fn) if tool.is_async else fn


async def _attempts(
    run: RunState,
    idx: int,
    tool: Tool,
    inputs: Mapping[str, Any],
    frame: Frame,
    executor: Any,
) -> dict[str, Any]:
    """The general case: shipping, rate turns, per-attempt timeouts, retries, the memo."""
    ledger = run.ledger
    memo = run.memo
    node_id = frame.node_id
    name = tool.name
    key = tool.executor_key
    fn = tool.fn
    kwargs: Mapping[str, Any] = inputs
    context_param = tool.context_param
    call = executor.run
    keep = None
    if getattr(executor, "ships", False):
        if not run.executors.was_checked(inputs):
            check_shippable(node_id, fn, inputs, context_param)
        fn = shippable(fn) if tool.is_async else fn
        context_param = None
        keep = run.remote_outputs.get(idx) if run.remote_outputs else None
        if keep:  # outputs only remote nodes read stay remote (a Ray object store)
            call = functools.partial(executor.run_outputs, name, tool.outputs, keep)
    local = key == "loop"
    rate_limit = tool.rate_limit
    rate_key = None
    if rate_limit is not None and tool.rate_key is not None:
        try:
            rate_key = rate_key_of(tool, inputs)
        except Exception as exc:
            ledger.fail(idx, exc)
            raise node_failed(node_id, name, exc) from exc
    retry, timeout = tool.retry, tool.timeout
    now = run.now
    attempt = frame.attempt = 1
    while True:
        try:
            if context_param is not None:  # a fresh context for each attempt
                kwargs = {**inputs, context_param: context_from_frame(frame)}
            if rate_limit is not None:
                assert run.rates is not None  # checked before the node started
                ledger.add_wait(idx, await run.rates.turn(rate_limit, rate_key))
            if timeout is None:
                result = await call(fn, **kwargs)
            else:
                deadline = now() + timeout
                with trio.move_on_at(deadline) as scope:
                    result = await call(fn, **kwargs)
                # A thread cannot be interrupted: its deadline may pass while it runs.
                if scope.cancelled_caught or now() >= deadline:
                    raise _timed_out(node_id, name, attempt, timeout)
            if not local:
                # A run deadline (or outer cancel) that passed while a thread ran.
                await _checkpoint_if_cancelled()
        except Exception as exc:
            if retry is None or attempt >= retry.attempts:
                ledger.fail(idx, exc)
                raise node_failed(node_id, name, exc) from exc
            if not isinstance(exc, (*retry.retry_on, trio.TooSlowError)):
                ledger.fail(idx, exc)
                raise node_failed(node_id, name, exc) from exc
            try:
                delay = retry.delay(attempt)
            except Exception as bad:
                ledger.fail(idx, bad)
                raise node_failed(node_id, name, bad) from bad
            if delay > 0:
                await trio.sleep(delay)
            attempt = frame.attempt = attempt + 1
            ledger.retry(idx, attempt)
            continue
        try:
            outputs = tool.normalize(result) if not keep else result
            if memo is not None:  # the store encodes them: unstorable outputs fail here
                memo.accept(node_id, tool, outputs)
        except Exception as exc:
            ledger.fail(idx, exc)
            raise node_failed(node_id, name, exc) from exc
        ledger.done(idx, outputs)
        return outputs
