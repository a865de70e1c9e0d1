"""A durable run: the store's sink or listener, the memo for resume/replay/caching, the writer.

`durable_run()` claims the run id in the store, checks a resumed run against the stored one,
and opens a nursery holding the run's one writer: a task woken through a memory channel when
there is something to write, which takes every row since its last batch (a list swap, cheaper
than a channel item per row) and commits them in one transaction in a worker thread.

The `Durable` object it yields is the run's memo (it answers "is this call already done?" from
the stored run and the cache, and encodes new outputs before their node is DONE) and feeds the
store in one of two ways. A fresh run of a static graph — the common, large case — makes it the
ledger's sink (`_ledger.Sink`): no event per node; each batch reads the rows that changed from
the ledger's columns, and the scalar outputs of one-output tools from the scheduler's slots, a
column at a time. A resume or a graph_fn makes it an event listener (which turns events into
rows), since what it writes there depends on what each call reused.

On exit, normal or not, the writer drains what was queued — shielded, but bounded — so a
cancelled or interrupted run still commits every completion that happened before it stopped.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import functools
import itertools
import json
import operator
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from json.encoder import encode_basestring_ascii
from typing import Any, TypeVar, cast

import attrs
import trio

from ._cache import Cache, cache_keyer, unkeyable
from ._errors import ConfigError, ConfigTypeError, ResumeMismatch, StoreError, TrioflowError
from ._events import combine_listeners
from ._gcpause import gc_paused
from ._ledger import Ledger
from ._records import ErrorInfo, NodeState
from ._run import execute_run
from ._schedule import CompiledGraph, plan_for
from ._serialize import Serializer, Unserialisable, describe, json_text
from ._store import (
    Blob,
    NodeRow,
    Op,
    RunRow,
    RunStore,
    StoredRun,
    check_store,
    done_rows,
)

__all__ = ["Durable", "check_durable", "durable_run", "run_durable", "run_row"]

T = TypeVar("T")
_BATCH_WINDOW = 0.02  # seconds a batch stays open: completions commit within ~50 ms
_PREFETCH = 100_000  # a run reads up to this many cache rows of a tool at once
_UNREAD = object()
_DONE = NodeState.DONE
_RUNNING = NodeState.RUNNING.value
_ALWAYS_RUNNING = itertools.repeat(NodeState.RUNNING)
_repeat = itertools.repeat


def _wall_now() -> float:
    """POSIX seconds: cache entries expire on the wall clock (tests replace this)."""
    return time.time()


def run_row(
    run_id: str,
    graph: str,
    content_hash: str | None,
    inputs: Mapping[str, Any],
    serializer: Serializer,
    started_at: float,
) -> RunRow:
    """The stored row of a run starting now; unstorable inputs are a `ConfigError`."""
    try:
        blob = serializer.dumps(inputs, "input")
        digest = serializer.digest(inputs)
    except Unserialisable as exc:
        raise ConfigError(
            f"the inputs of run {run_id!r} cannot be stored: {describe(exc)}"
        ) from None
    return (
        run_id,
        graph,
        _RUNNING,
        content_hash,
        blob,
        digest,
        started_at,
        None,
        _wall_now(),
        None,
    )


@attrs.define(eq=False)
class _Note:
    """What the memo learnt about a node before it ran, for the listener to write."""

    digest: str | None = None
    raw: Blob | None = None  # reused outputs (cached, or a stored row of another node id)
    skip: bool = False  # reused from this node's own stored row: nothing to write
    cached: bool = False
    key: str | None = None  # a cache miss: store the outputs under this key
    version: str = ""


# A node started but not finished: (seq, started_at, tool, attempt).
_Started = tuple[int, float, str, int]


@attrs.define(eq=False)
class Durable:
    """One run's persistence: the event listener and the memo."""

    store: RunStore
    row: RunRow
    replay: bool  # True for a graph_fn: calls are matched by tool, arguments and occurrence
    stored: StoredRun | None = None
    _pending: list[Op] = attrs.field(factory=list)
    _wake: trio.MemorySendChannel[None] | None = None
    _seq: int = 0
    _notes: dict[str, _Note] = attrs.field(factory=dict)
    _encoded: dict[str, Blob] = attrs.field(factory=dict)
    _running: dict[str, _Started] = attrs.field(factory=dict)
    _announced: set[str] = attrs.field(factory=set)
    # The stored run's DONE nodes, by their index k in `stored`'s columns: node id -> k, calls
    # (tool, argument digest) -> ks in the order they ran, whether k was reused by this run, and
    # the decoded outputs (parsed all at once, when this run first reuses one).
    _by_id: dict[str, int] = attrs.field(factory=dict)
    _by_call: dict[tuple[str, str], collections.deque[int]] = attrs.field(factory=dict)
    _used: bytearray = attrs.field(factory=bytearray)
    _decoded: list[dict[str, Any]] | None = None
    _fresh_cache: dict[str, tuple[Blob, float]] = attrs.field(factory=dict)
    _executors: dict[str, str] = attrs.field(factory=dict)  # tool nodes not on "loop"
    _tool_caches: dict[tuple[str, str], Any] = attrs.field(factory=dict)
    _keyers: dict[Any, tuple[str, Callable[[str], str]]] = attrs.field(factory=dict)
    # As a sink (a fresh run of a static graph): the run's ledger, whose log says which rows
    # changed; the plan runs whose value slots hold their fast nodes' outputs (by first row).
    _ledger: Ledger | None = None
    _plan_runs: list[Any] = attrs.field(factory=list)
    _bases: list[int] = attrs.field(factory=list)
    _seq0: int = 0  # the seq of ledger row 0
    _heads: dict[Any, str] = attrs.field(factory=dict)  # one-output tool -> '{"<output>":'

    reads_slots: bool = False
    serializer: Serializer = attrs.field(init=False)
    # Wall clock = _epoch + (Trio clock - _at0): POSIX seconds without a datetime per row.
    _epoch: float = attrs.field(init=False)
    _at0: float = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.serializer = self.store.serializer
        self._at0, self._epoch = self.row[6] or 0.0, self.row[8] or _wall_now()
        stored = self.stored
        if stored is None:
            return
        self._seq = stored.next_seq
        ids = stored.ids
        by_id = self._by_id = dict(zip(ids, range(len(ids)), strict=True))
        self._used = bytearray(len(ids))
        by_call, tools = self._by_call, stored.tools
        for node_id, digest in stored.digests.items():  # in the order they ran
            k = by_id[node_id]
            by_call.setdefault((tools[k], digest), collections.deque()).append(k)

    @property
    def run_id(self) -> str:
        return self.row[0]

    @property
    def sinks(self) -> bool:
        """Whether this run feeds the store as a sink (reading changed rows from the ledger)
        rather than as a listener: a fresh run of a static graph, which reuses nothing."""
        return not self.replay and self.stored is None

    # -- the sink ---------------------------------------------------------------------------

    def attach(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._seq0 = self._seq
        ledger.wake = self._nudge
        # JSON stores encode a one-output tool's scalar value from its slot, at the batch.
        self.reads_slots = self.serializer.name == "json"

    def detach(self) -> None:
        """The run is over and its rows written: let go of its ledger and plan runs (which
        refer back to this object), so that the run's memory is freed at once, not by a full
        collection of the cyclic garbage collector."""
        if self._ledger is not None:
            self._ledger.sink = None
            self._ledger.wake = _no_wake
            self._ledger = None
        self._plan_runs.clear()
        self._bases.clear()

    def run_started(self, at: float) -> None:
        pass  # the run row was written when the run id was claimed

    @trio.lowlevel.enable_ki_protection
    def run_finished(self, outcome: NodeState, at: float) -> None:
        self._run_finished(outcome, at)

    def _run_finished(self, outcome: NodeState | None, at: float) -> None:
        row = self.row
        state = outcome.value if outcome is not None else "CANCELLED"
        self.row = (*row[:2], state, *row[3:7], at, row[8], self._wall(at))
        self._put(("run", self.row))

    def _wall(self, at: float) -> float:
        return self._epoch + (at - self._at0)

    # -- the writer's queue ------------------------------------------------------------------

    def _put(self, op: Op) -> None:
        self._pending.append(op)
        if len(self._pending) == 1:
            self._nudge()

    def _nudge(self) -> None:
        """Wake the writer: there is something to write."""
        if self._wake is not None:
            # WouldBlock: the writer is due to look anyway; Broken: it failed, and its error
            # is what the run raises.
            with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError):
                self._wake.send_nowait(None)

    @trio.lowlevel.enable_ki_protection
    def take(self) -> list[Op]:
        """Everything queued, plus a RUNNING row for each node that started since the last
        batch and is still running (a node that finishes within a batch is written once)."""
        batch, self._pending = self._pending, []
        ledger = self._ledger
        if ledger is not None:
            self._sink_rows(ledger, batch)
            return batch
        announced = self._announced
        for node_id, started in self._running.items():
            if node_id not in announced:
                announced.add(node_id)
                if node_id not in self._by_id:  # never cover a stored DONE row with RUNNING
                    batch.append(("node", self._running_row(node_id, started)))
        return batch

    def _sink_rows(self, ledger: Ledger, batch: list[Op]) -> None:
        """The rows that changed since the last batch, read from the ledger's columns (see
        `Sink`): a RUNNING row for each node that started and is still running, a final row
        for each node that finished. A node's `seq` is its ledger row (after the stored run's,
        on resume): the record loads in the order the run's own record has.

        DONE rows whose outputs the scheduler left in their slots are read column by column
        (no Python loop per row) and go to the store as one `"done"` op (see `_store.Op`)."""
        starts, lazy, log = ledger.starts, ledger.lazy, ledger.log
        assert starts is not None and lazy is not None and log is not None
        ledger.starts, ledger.lazy, ledger.log = [], [], []
        states, ids, tools = ledger.states, ledger.ids, ledger.tools
        started, finished, attempts = ledger.started, ledger.finished, ledger.attempts
        executors = ledger.executors
        run_id, epoch, at0, seq0 = self.row[0], self._epoch, self._at0, self._seq0
        add = batch.append
        if starts:
            running = itertools.compress(
                starts, map(operator.is_, map(states.__getitem__, starts), _ALWAYS_RUNNING)
            )
            for i in running:
                at = started[i]
                row = (run_id, ids[i], seq0 + i, tools[i], _RUNNING, at, None, epoch + (at - at0),
                       None, attempts[i], executors[i], 0, 0.0, None, None, None)  # fmt: skip
                add(("node", row))
        for i in log:
            add(("node", self._final_row(ledger, i, batch)))
        if lazy:
            with gc_paused():  # only strings, numbers and their lists: no garbage to look for
                columns = (
                    list(map(ids.__getitem__, lazy)),
                    list(map(seq0.__add__, lazy)) if seq0 else lazy,
                    list(map(tools.__getitem__, lazy)),
                    list(map(started.__getitem__, lazy)),
                    list(map(finished.__getitem__, lazy)),
                    list(map(attempts.__getitem__, lazy)),
                    list(map(executors.__getitem__, lazy)),
                    self._slot_outputs(lazy),
                )
            payload = (run_id, epoch, at0, columns)
            if getattr(self.store, "bulk_rows", False):
                add(("done", payload))
            else:  # a store of another kind: node rows, as the protocol has them
                batch.extend(("node", row) for row in done_rows(payload))

    def _final_row(self, ledger: Ledger, i: int, batch: list[Op]) -> NodeRow:
        """The row of ledger row i, which finished with outputs given to the ledger (or none);
        a cache miss's new cache row goes into `batch` beside it."""
        state = ledger.states[i]
        node_id = ledger.ids[i]
        tool = ledger.tools[i]
        at, end = ledger.started[i], ledger.finished[i]
        note = self._notes.pop(node_id, None) if self._notes else None
        outputs: Blob | None = None
        error: str | None = None
        if state is _DONE:
            blob = self._encoded.pop(node_id, None) if self._encoded else None
            if blob is not None:
                outputs = blob
                if note is not None and note.key is not None:
                    now = _wall_now()
                    self._fresh_cache[note.key] = (blob, now)
                    batch.append(("cache", (note.key, tool, note.version, blob, now)))
            elif note is not None and note.raw is not None:
                outputs = note.raw
            # else: a nested graph or a map, whose outputs are its inner nodes'
        elif i in ledger.errors:
            error = json.dumps(_error_dict(ledger.error_info(i)))
        epoch, at0 = self._epoch, self._at0
        return (
            self.row[0],
            node_id,
            self._seq0 + i,
            tool,
            state.value,
            None if at != at else at,  # NaN: never started
            None if end != end else end,
            None if at != at else epoch + (at - at0),
            None if end != end else epoch + (end - at0),
            ledger.attempts[i],
            ledger.executors[i],
            int(i in ledger.cached or (note is not None and note.cached)),
            ledger.waited.get(i, 0.0),
            error,
            None if note is None else note.digest,
            outputs,
        )

    def _slot_outputs(self, lazy: list[int]) -> list[str]:
        """The stored texts of the outputs of DONE rows `lazy`, each a one-output tool's scalar
        value left in its slot: encoded per plan run, all at once."""
        bases, plan_runs = self._bases, self._plan_runs
        if len(bases) == 1:
            return self._encode_slots(plan_runs[0], lazy)
        found: dict[int, str] = {}
        groups: dict[int, list[int]] = {}
        for i in lazy:  # several plan runs (nested graphs): grouped by the one holding i
            groups.setdefault(bisect.bisect_right(bases, i) - 1, []).append(i)
        for k, rows in groups.items():
            found.update(zip(rows, self._encode_slots(plan_runs[k], rows), strict=True))
        return list(map(found.__getitem__, lazy))

    def _encode_slots(self, plan_run: Any, rows: list[int]) -> list[str]:
        base, plan = plan_run.base, plan_run.plan
        js = list(map((-base).__add__, rows)) if base else rows
        values = list(map(plan_run.values.__getitem__, js))  # (node j's first output: slot j)
        targets = list(map(plan.targets.__getitem__, js))
        distinct = set(targets)
        if len(distinct) == 1:
            return _encode_values(self._head(targets[0]), values)
        if len(distinct) > 4:  # many tools in one batch: value by value
            return [
                head + text + "}"
                for head, text in zip(map(self._head, targets), _value_texts(values), strict=True)
            ]
        # A few tools (a fan-out and its fan-in, say): every value at once as the commonest
        # tool's, then the other tools' rows put right one by one.
        ((major, _),) = collections.Counter(targets).most_common(1)
        texts = _encode_values(self._head(major), values)
        every = range(len(js))
        for target in distinct:
            if target is not major:
                head = self._head(target)
                for k in itertools.compress(every, map(operator.is_, targets, _repeat(target))):
                    (text,) = _value_texts([values[k]])
                    texts[k] = head + text + "}"
        return texts

    def _head(self, tool: Any) -> str:
        """'{"<output>":' of a one-output tool."""
        head = self._heads.get(tool)
        if head is None:
            (name,) = tool.outputs
            head = self._heads[tool] = "{" + encode_basestring_ascii(name) + ":"
        return head

    # -- the memo ---------------------------------------------------------------------------

    @property
    def reuses(self) -> bool:
        """Whether a plain tool's call may be answered from the store: on resume, and in a
        graph_fn (whose calls are keyed for replay). Cached tools are never plain."""
        return self.stored is not None or self.replay

    def lookup(
        self, node_id: str, tool: Any, inputs: Mapping[str, Any]
    ) -> tuple[dict[str, Any], bool] | None:
        """Stored outputs for a call that need not run again, and whether they were cached."""
        if tool.executor_key != "loop":
            self._executors[node_id] = tool.executor_key
        cache: Cache | None = tool.cache
        replay = self.replay
        if cache is None and not replay and self.stored is None:
            return None  # a fresh run of a static graph: nothing to look up
        note = _Note()
        if replay or cache is not None:
            try:
                note.digest = self.serializer.digest(inputs)
            except Unserialisable as exc:
                if cache is not None:
                    raise ConfigError(unkeyable(tool.name, exc)) from None
                # Such a call is never replayed: it runs again on resume.
        if self.stored is not None:
            k = self._reuse(node_id, tool.name, note.digest)
            if k is not None:
                outputs = self._stored_outputs()[k]
                note.skip = self.stored.ids[k] == node_id
                if not note.skip:  # stored again under this node's id: encoded back
                    note.raw = self.encode(node_id, outputs)
                self._notes[node_id] = note
                return outputs, False
        if cache is not None:
            assert note.digest is not None
            keyer = self._keyers.get(tool)
            if keyer is None:
                keyer = self._keyers[tool] = cache_keyer(tool)
            version, key = keyer[0], keyer[1](note.digest)
            hit = self._fresh_cache.get(key) or self._cached(tool.name, version, key)
            if hit is not None and (cache.expire is None or _wall_now() - hit[1] <= cache.expire):
                note.raw, note.cached = hit[0], True
                self._notes[node_id] = note
                return self.serializer.loads(hit[0]), True
            note.key, note.version = key, version
        if note.digest is not None:
            self._notes[node_id] = note
        return None

    def prefill(self, plan_run: Any) -> None:
        """Resume of a static graph: before its nodes start, every tool node DONE in the stored
        run whose dependencies are all reused too is made DONE with its stored outputs, in
        plan (topological) order, without a task or a trip through the scheduler each. What is
        left is scheduled as usual; `lookup` still answers for the rest (maps' items, nested
        graphs)."""
        if self._ledger is not None:  # a sink: this plan's outputs are in its slots
            self._bases.append(plan_run.base)
            self._plan_runs.append(plan_run)
        if self.replay or self.stored is None:
            return
        plan = plan_run.plan
        ledger = plan_run.run.ledger
        base, node_ids, indegree = plan_run.base, plan_run.node_ids, plan_run.indegree
        chosen, picked, filled = self._reusable(plan, node_ids)
        if not chosen:
            return
        stored = self._stored_outputs()
        # The store's own events for these nodes would write nothing (their stored rows are
        # theirs): when nobody else listens, the ledger marks them DONE at once, silently.
        if ledger.listener is self:
            ledger.reuse_many([base + i for i in chosen] if base else chosen)
            for i, k in zip(chosen, picked, strict=True):
                plan_run.store(i, stored[k])
        else:
            notes = self._notes
            for i, k in zip(chosen, picked, strict=True):
                notes[node_ids[i]] = _Note(skip=True)
                ledger.start(base + i)
                ledger.reuse(base + i, stored[k], False)
                plan_run.store(i, stored[k])
        indegree[:] = map(operator.sub, indegree, filled)
        plan_run.remaining -= len(chosen)
        if len(chosen) == len(node_ids):  # all reused: nothing is left to run
            plan_run.ready = collections.deque()
        else:
            reused = set(chosen)
            plan_run.ready = collections.deque(
                i for i, d in enumerate(indegree) if d == 0 and i not in reused
            )

    def _reusable(
        self, plan: Any, node_ids: list[str]
    ) -> tuple[Sequence[int], list[int], Sequence[int]]:
        """The nodes of `plan` that a resume reuses (tool nodes DONE in the stored run, with
        the same tool, whose dependencies are all reused too), in plan order, each with its
        stored row; and per node, how many of its dependencies are reused."""
        names, kinds, wanted = plan.names, plan.kinds, plan.indegree
        used, tools = self._used, self.stored.tools  # type: ignore[union-attr]
        n = len(node_ids)
        rows = list(map(self._by_id.get, node_ids))
        if None not in rows and kinds.count(0) == n:
            # The common case, checked at C speed: every node is a tool node DONE in the
            # stored run. With the same tools, and none used yet, all of them are reused (so
            # every dependency of each one is, too).
            every = cast("list[int]", rows)
            if list(map(tools.__getitem__, every)) == names and (
                1 not in used or not any(map(used.__getitem__, every))
            ):
                if n == len(used):  # n distinct rows of n: all of them
                    used[:] = b"\x01" * n
                else:
                    for k in every:
                        used[k] = 1
                return range(n), every, wanted
        filled = [0] * n  # reused dependencies per node
        dependents = plan.dependents
        chosen: list[int] = []  # plan indices
        picked: list[int] = []  # their stored rows
        for i, row in enumerate(rows):
            if row is None or kinds[i] != 0 or filled[i] != wanted[i]:
                continue
            if tools[row] != names[i] or used[row]:
                continue
            used[row] = 1
            chosen.append(i)
            picked.append(row)
            for d in dependents[i]:
                filled[d] += 1
        return chosen, picked, filled

    def _stored_outputs(self) -> list[dict[str, Any]]:
        """The stored run's outputs by row, all decoded at once when first needed."""
        decoded = self._decoded
        if decoded is None:
            stored = self.stored
            assert stored is not None
            try:
                with gc_paused():  # every dict made here stays alive with the run
                    if isinstance(stored.outputs, str):
                        decoded = self.serializer.loads_array(stored.outputs, len(stored.ids))
                    else:
                        decoded = self.serializer.loads_many(stored.outputs)
            except TrioflowError:
                raise  # e.g. pickled outputs in a store opened for JSON: it says what to do
            except ValueError as exc:  # text that is not what this serializer wrote
                raise StoreError(
                    f"the stored outputs of run {self.run_id!r} cannot be read back ({exc}): "
                    "the store file is damaged, or a stored type changed since; choose a new "
                    "run_id to start afresh, or restore the store from a backup"
                ) from exc
            self._decoded = decoded
        return decoded

    def _cached(self, tool: str, version: str, key: str) -> tuple[Blob, float] | None:
        """The store's cache row for `key`: from the tool's rows read once per run (when there
        are not too many), else one read."""
        table = self._tool_caches.get((tool, version), _UNREAD)
        if table is _UNREAD:
            table = self._tool_caches[(tool, version)] = self.store.cache_of(
                tool, version, _PREFETCH
            )
        if table is None:
            return self.store.cache_get(key)
        assert isinstance(table, dict)
        return table.get(key)

    def _reuse(self, node_id: str, tool: str, digest: str | None) -> int | None:
        """The stored row (its index) that answers this call, if any; it is then used up."""
        stored = self.stored
        assert stored is not None
        used = self._used
        if not self.replay:
            k = self._by_id.get(node_id)
            if (
                k is not None
                and stored.tools[k] == tool
                and not used[k]
                and (digest is None or stored.digests.get(node_id, digest) == digest)
            ):
                used[k] = 1
                return k
        if digest is None:
            return None
        queue = self._by_call.get((tool, digest))
        while queue:
            k = queue.popleft()
            if not used[k]:
                used[k] = 1
                return k
        return None

    def accept(self, node_id: str, tool: Any, outputs: Mapping[str, Any]) -> None:
        """A tool node's new outputs, before it is DONE: encoded now, so that outputs the store
        cannot hold fail this node (a `ConfigError` naming it and the value's type)."""
        self._encoded[node_id] = self.encode(node_id, outputs)

    def encode(self, node_id: str, outputs: Mapping[str, Any]) -> Blob:
        """A node's outputs as stored; an unstorable value is a `ConfigError` naming the node."""
        try:
            return self.serializer.dumps(outputs, "output")
        except Unserialisable as exc:
            raise ConfigError(
                f"node {node_id!r} returned outputs that cannot be stored: {describe(exc)}"
            ) from None

    # -- the listener -----------------------------------------------------------------------

    @trio.lowlevel.enable_ki_protection  # a row is queued whole, or not at all
    def __call__(self, event: Any) -> None:
        kind = event.kind
        if kind == "node_finished":
            self._finished(event)
        elif kind == "node_started":
            seq = self._seq
            self._seq = seq + 1
            # No row yet: `take` writes one if the node is still running at the next batch.
            self._running[event.node_id] = (seq, event.at, event.tool, event.attempt)
        elif kind == "run_finished":
            self._run_finished(event.state, event.at)
        elif kind == "run_started" and self.stored is not None:
            self._put(("run", self.row))

    def _running_row(self, node_id: str, started: _Started) -> NodeRow:
        seq, at, tool, attempt = started
        run_id = self.row[0]
        wall = self._wall(at)
        executor = self._executors.get(node_id, "loop")
        return (run_id, node_id, seq, tool, _RUNNING, at, None, wall, None, attempt, executor, 0,
                0.0, None, None, None)  # fmt: skip

    def _finished(self, event: Any) -> None:
        node_id = event.node_id
        started = self._running.pop(node_id, None)
        self._announced.discard(node_id)
        note = self._notes.pop(node_id, None) if self._notes else None
        encoded = self._encoded.pop(node_id, None)
        state = event.state
        outputs: Blob | None = None
        if state is _DONE:
            if encoded is not None:
                outputs = encoded
                if note is not None and note.key is not None:
                    now = _wall_now()
                    self._fresh_cache[note.key] = (outputs, now)
                    self._put(("cache", (note.key, event.tool, note.version, outputs, now)))
            elif note is not None and note.skip:
                return  # the stored row is this node's, DONE with these outputs
            elif note is not None and note.raw is not None:
                outputs = note.raw
            # else: a nested graph or a map, whose outputs are its inner nodes'
        elif node_id in self._by_id:
            # A stored DONE row this run did not reuse (it failed or was cancelled before it
            # could): its committed outputs stay, for the next resume, as with RUNNING rows.
            return
        if started is None:  # skipped, or cancelled before it started
            seq = self._seq
            self._seq = seq + 1
            at, wall = None, None
        else:
            seq, at = started[0], started[1]
            wall = self._epoch + (at - self._at0)
        error = event.error
        self._put(
            (
                "node",
                (
                    self.row[0],
                    node_id,
                    seq,
                    event.tool,
                    state.value,
                    at,
                    event.at,
                    wall,
                    self._epoch + (event.at - self._at0),
                    event.attempt,
                    self._executors.pop(node_id, "loop") if self._executors else "loop",
                    int(note is not None and note.cached),
                    0.0,
                    None if error is None else json.dumps(_error_dict(error)),
                    None if note is None else note.digest,
                    outputs,
                ),
            )
        )


def _no_wake() -> None:
    pass


def _value_texts(values: list[Any]) -> Iterable[str]:
    """The JSON texts of scalar values, as the serializer writes them inside its dict."""
    kinds = set(map(type, values))
    if kinds <= {int}:
        return map(int.__repr__, values)
    if kinds <= {str}:
        return map(encode_basestring_ascii, values)
    return map(json_text, values)


def _encode_values(head: str, values: list[Any]) -> list[str]:
    """`head + <value's JSON text> + "}"` for each of `values` (scalars), with one join and one
    split (a NUL is never in JSON text: `encode_basestring_ascii` escapes it)."""
    if not values:
        return []
    return (head + ("}\0" + head).join(_value_texts(values)) + "}").split("\0")


def _error_dict(error: ErrorInfo | BaseException) -> dict[str, str]:
    if isinstance(error, BaseException):
        error = ErrorInfo.from_exception(error)
    return {"type": error.type, "message": error.message, "traceback": error.traceback}


def check_resume(stored: StoredRun, row: RunRow, serializer: Serializer) -> None:
    """Raise `ResumeMismatch` saying what differs between the stored run and this one."""
    run_id, graph, content_hash = row[0], row[1], row[3]
    if stored.graph != graph:
        raise ResumeMismatch(
            f"run {run_id!r} in the store ran graph {stored.graph!r}, not {graph!r}; "
            "resume it with the same graph, or choose a new run_id"
        )
    if stored.inputs_digest != row[5]:
        raise ResumeMismatch(
            f"the inputs of run {run_id!r} differ from the stored run's: "
            f"{_input_diff(stored.inputs, row[4], serializer)}; nothing was reused: resume with "
            "the same inputs, or choose a new run_id"
        )
    if stored.content_hash != content_hash:
        raise ResumeMismatch(
            f"graph {graph!r} changed since run {run_id!r} was stored: its content_hash was "
            f"{str(stored.content_hash)[:12]}, now {str(content_hash)[:12]} (its structure or "
            "constant arguments differ); nothing was reused: choose a new run_id to start afresh"
        )


def _input_diff(old: Blob, new: Blob, serializer: Serializer) -> str:
    try:
        before, after = serializer.loads(old), serializer.loads(new)
    except Exception:
        return "the stored inputs cannot be read with this serializer"
    parts = []
    for name in sorted(before.keys() | after.keys()):
        if name not in after:
            parts.append(f"{name!r} was given before, not now")
        elif name not in before:
            parts.append(f"{name!r} is new")
        elif serializer.digest({name: before[name]}) != serializer.digest({name: after[name]}):
            parts.append(f"{name!r} was {_short(before[name])}, now {_short(after[name])}")
    return "; ".join(parts) or "their encodings differ"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@trio.lowlevel.enable_ki_protection  # Ctrl-C goes to the main task, which closes the run:
async def _writer(  # the writer itself is never interrupted half-way through a batch
    store: RunStore,
    durable: Durable,
    wake: trio.MemoryReceiveChannel[None],
    closing: trio.Event,
) -> None:
    """Commit what the listener queued, one batch per transaction, until the run closes it."""
    async with wake:
        closed = False
        while not closed:
            try:
                await wake.receive()
            except trio.EndOfChannel:
                closed = True
            else:
                # Let the batch fill (fewer, larger commits), unless the run is ending.
                with trio.move_on_after(_BATCH_WINDOW):
                    await closing.wait()
            batch = durable.take()
            if batch:
                await _off_loop(store, functools.partial(store.write, _coalesce(batch)))


async def _off_loop(store: RunStore, fn: Callable[[], T]) -> T:
    """Call `fn` in a worker thread, or inline for a store that never blocks (`MemoryStore`:
    so that runs with it stay exact in virtual time)."""
    if getattr(store, "blocking", True):
        return await trio.to_thread.run_sync(fn)
    await trio.lowlevel.checkpoint()
    return fn()


def _coalesce(batch: list[Op]) -> list[Op]:
    """Keep the last row per node (a start and its finish in one batch write once)."""
    last: dict[tuple[str, Any, Any], Op] = {}
    kept: list[Op] = []
    for op in batch:
        kind, row = op
        if kind == "done":  # a sink's rows: one per node already
            kept.append(op)
            continue
        last.pop((kind, row[0], row[1] if kind == "node" else None), None)
        last[(kind, row[0], row[1] if kind == "node" else None)] = op
    return [*last.values(), *kept]


@asynccontextmanager
async def durable_run(
    store: RunStore,
    *,
    run_id: str,
    graph: str,
    content_hash: str | None,
    inputs: Mapping[str, Any],
    replay: bool,
    resume: bool,
) -> AsyncIterator[Durable]:
    """Claim `run_id` in `store`, check a resumed run, and run the writer around the body.

    The writer's failure (a `StoreError`) cancels the body and is raised; otherwise the body's
    own exception comes out as itself, not wrapped in the writer's nursery's group.
    """
    serializer = store.serializer
    row = run_row(run_id, graph, content_hash, inputs, serializer, trio.current_time())
    stored = await _off_loop(store, lambda: store.begin(row, resume=resume))
    if stored is not None:
        check_resume(stored, row, serializer)
    durable = await _off_loop(
        store, lambda: Durable(store=store, row=row, replay=replay, stored=stored)
    )
    send, receive = trio.open_memory_channel[None](1)
    durable._wake = send
    closing = trio.Event()
    body_error: BaseException | None = None
    writer_error: Exception | None = None
    leftover: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:

            async def write() -> None:
                nonlocal writer_error
                # Shielded: a cancelled run still commits what it queued. Bounded: once the
                # run closes the channel, one last transaction is written (its wait for another
                # process's lock is bounded by the store's busy timeout) and the writer returns.
                with trio.CancelScope(shield=True):
                    try:
                        await _writer(store, durable, receive, closing)
                    except Exception as exc:
                        writer_error = exc
                        nursery.cancel_scope.cancel(reason="the run store failed")

            nursery.start_soon(write)
            try:
                yield durable
            except BaseException as exc:
                body_error = exc  # raised below, as itself
            finally:
                closing.set()
                send.close()
    except BaseExceptionGroup as group:  # only Cancelled can land here (an outer cancel)
        leftover = group
    finally:
        durable.detach()
    if writer_error is not None and (body_error is None or _cancelled(body_error)):
        raise writer_error
    if body_error is not None:
        if writer_error is not None:  # never lost: the run's own error says it too
            body_error.add_note(f"the run store failed as well: {writer_error!r}")
        raise body_error
    if leftover is not None:
        raise leftover


def _cancelled(exc: BaseException) -> bool:
    """Whether `exc` is only cancellation (a `Cancelled`, or a group of nothing else: the
    body's nurseries cancelled by the writer's failure)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(map(_cancelled, exc.exceptions))
    return isinstance(exc, trio.Cancelled)


def check_durable(
    store: object, resume: object, options: Any, runtime_store: RunStore | None
) -> RunStore | None:
    """The store a run persists to (its own, else its runtime's); bad combinations raise
    `ConfigError` before anything starts."""
    own = check_store(store)
    if not isinstance(resume, bool):
        raise ConfigTypeError(f"resume must be True or False, got {resume!r}")
    chosen = own if own is not None else runtime_store
    if resume:
        if chosen is None:
            raise ConfigError(
                "resume=True needs a run store: pass store=trioflow.SQLiteStore(path) (the one "
                "the run was stored in) and its run_id="
            )
        if not options.run_id_given:
            raise ConfigError(
                "resume=True needs the run_id= of the stored run to finish; list stored runs "
                "with store.runs()"
            )
    return chosen


def _static_plan(graph: Any, inputs: Mapping[str, Any]) -> Any:
    """The lowered plan of a static target (graphify or compiled graph), else None."""
    if isinstance(graph, CompiledGraph):
        return graph.plan
    if hasattr(graph, "plans") and hasattr(graph, "trace"):
        return plan_for(graph, inputs)
    return None


_hashes: dict[int, tuple[Any, str]] = {}


def _content_hash(task_graph: Any) -> str:
    """`TaskGraph.content_hash`, once per graph object (a large graph takes a while)."""
    found = _hashes.get(id(task_graph))
    if found is not None and found[0]() is task_graph:
        return found[1]
    value: str = task_graph.content_hash
    key = id(task_graph)
    _hashes[key] = (weakref.ref(task_graph, lambda _: _hashes.pop(key, None)), value)
    return value


async def run_durable(
    runtime: Any, graph: Any, options: Any, seams: Any, store: RunStore, resume: bool
) -> Any:
    """Run `graph` persisting to `store` (and resuming from it): see `trioflow.run_async`."""
    plan = _static_plan(graph, options.inputs)
    content_hash = None
    if plan is not None:
        # Run the very plan that was hashed (a graph whose shape depends on its inputs is
        # traced once, not again by the run).
        content_hash = _content_hash(plan.graph)
        graph = CompiledGraph(plan.graph, plan, max_concurrency=graph.max_concurrency)
    async with durable_run(
        store,
        run_id=options.run_id,
        graph=graph.name,
        content_hash=content_hash,
        inputs=options.inputs,
        replay=plan is None,
        resume=resume,
    ) as durable:
        if durable.sinks:  # no events for the store: it reads the ledger in bulk
            seams = attrs.evolve(seams, sink=durable, memo=durable)
        else:
            listener = combine_listeners([durable, seams.listener])
            seams = attrs.evolve(seams, listener=listener, memo=durable)
        return await execute_run(runtime, graph, options, seams)
