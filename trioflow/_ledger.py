"""The node life cycle of one run, in one place: every state change, and the events it emits.

PENDING → RUNNING → DONE | FAILED | CANCELLED, or PENDING → SKIPPED (or CANCELLED when the run
ends first). Both schedulers change a node's state only through the methods here, and each
change is also the one place a `RunEvent` is emitted from. Rows are plain list columns, so a
state change on the hot path is a few list stores; with no listener no event object is built,
and exceptions are formatted only when a snapshot (or a listener) needs them. A durable sink
(the run store) gets no events for nodes: each change appends the row's index to a log (`starts`,
`lazy`, `log`), and the sink reads the changed rows from the columns in bulk.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from ._errors import is_run_failure
from ._events import EventKind, Listener, RunEvent
from ._gcpause import gc_paused
from ._records import ErrorInfo, NodeRecord, NodeState, RunRecord

__all__ = ["Ledger", "Sink"]

_NOT_YET = math.nan
_PENDING = NodeState.PENDING
_RUNNING = NodeState.RUNNING
_DONE = NodeState.DONE
_FAILED = NodeState.FAILED
_CANCELLED = NodeState.CANCELLED
_SKIPPED = NodeState.SKIPPED


def _never() -> float:
    return 0.0


class Sink(Protocol):
    """A durable sink (the run store): instead of two events per node, it reads the rows that
    changed since it last looked, in bulk, from the ledger's columns: the rows that started
    (`Ledger.starts`), that finished DONE with outputs the ledger was not given (`Ledger.lazy`:
    the scheduler left them in their slots), and that finished otherwise (`Ledger.log`).

    `attach` is given the ledger when the run's ledger is made; it may set `ledger.wake`,
    which is called whenever a log stops being empty. Listeners are unaffected.
    """

    def attach(self, ledger: Ledger) -> None: ...

    def run_started(self, at: float) -> None: ...

    def run_finished(self, outcome: NodeState, at: float) -> None: ...


class Ledger:
    """Node rows of one run (shared by its nested graphs), and the run's event stream."""

    __slots__ = (
        "attempts",
        "cached",
        "epoch",
        "errors",
        "executors",
        "finished",
        "graph_id",
        "ids",
        "infos",
        "lazy",
        "listener",
        "listener_error",
        "log",
        "now",
        "on_listener_error",
        "run_id",
        "sink",
        "started",
        "starts",
        "states",
        "t0",
        "tools",
        "waited",
        "wake",
        "wall0",
    )

    def __init__(
        self,
        run_id: str = "",
        graph_id: str = "",
        now: Callable[[], float] = _never,
        listener: Listener | None = None,
        sink: Sink | None = None,
    ) -> None:
        self.run_id = run_id
        self.graph_id = graph_id
        self.now = now
        self.listener = listener
        self.sink = sink
        # With a sink, the rows that changed since the sink last took these logs (see `Sink`).
        self.starts: list[int] | None = None
        self.lazy: list[int] | None = None
        self.log: list[int] | None = None
        self.wake: Callable[[], None] = _nothing  # called when a log stops being empty
        self.listener_error: Exception | None = None
        self.on_listener_error: Callable[[], None] = _nothing
        self.ids: list[str] = []
        self.tools: list[str] = []
        self.states: list[NodeState] = []
        # Clock readings as C doubles (8 bytes a row, no float object); NaN: not yet.
        self.started = array("d")
        self.finished = array("d")
        self.attempts: list[int] = []
        self.executors: list[str] = []
        self.errors: dict[int, BaseException | ErrorInfo] = {}
        self.infos: dict[int, ErrorInfo] = {}  # errors formatted, on demand
        self.waited: dict[int, float] = {}
        self.cached: set[int] = set()
        self.t0 = now()
        self.wall0 = datetime.now(UTC)
        self.epoch = self.wall0 - timedelta(seconds=self.t0)
        if sink is not None:
            self.starts, self.lazy, self.log = [], [], []
            sink.attach(self)

    def __len__(self) -> int:
        return len(self.ids)

    # -- rows --------------------------------------------------------------------------------

    def add(self, node_id: str, tool: str, executor: str = "loop") -> int:
        """Append a PENDING row; returns its index."""
        self.ids.append(node_id)
        self.tools.append(tool)
        self.states.append(_PENDING)
        self.started.append(_NOT_YET)
        self.finished.append(_NOT_YET)
        self.attempts.append(0)
        self.executors.append(executor)
        return len(self.ids) - 1

    def add_running(
        self,
        node_id: str,
        tool: str,
        executor: str,
        inputs: Mapping[str, Any] | None,
        at: float | None = None,
    ) -> int:
        """`add` and `start` at once, for a node whose capacity was free: returns its index.
        (`at` as for `start`.)"""
        if at is None:
            at = self.now()
        self.ids.append(node_id)
        self.tools.append(tool)
        self.states.append(_RUNNING)
        self.started.append(at)
        self.finished.append(_NOT_YET)
        self.attempts.append(1)
        self.executors.append(executor)
        idx = len(self.ids) - 1
        if self.listener is not None:
            self._emit("node_started", idx, _RUNNING, at, None, inputs, None)
        if self.starts is not None:
            self._to_sink(self.starts, idx)
        return idx

    def add_many(self, node_ids: list[str], tools: list[str], executors: list[str]) -> int:
        """Append PENDING rows for a whole static graph; returns the first row's index."""
        base = len(self.ids)
        n = len(node_ids)
        self.ids.extend(node_ids)
        self.tools.extend(tools)
        self.states.extend([_PENDING] * n)
        self.started.extend(array("d", (_NOT_YET,)) * n)
        self.finished.extend(array("d", (_NOT_YET,)) * n)
        self.attempts.extend([0] * n)
        self.executors.extend(executors)
        return base

    # -- the life cycle ----------------------------------------------------------------------

    def start(
        self, idx: int, inputs: Mapping[str, Any] | None = None, at: float | None = None
    ) -> None:
        """PENDING → RUNNING: the node holds its capacity and its first attempt begins.

        `at` is a clock reading the caller already has and that is still the time: the finish
        of the node its loop ran just before, with no suspension since (one read per node).
        """
        self.states[idx] = _RUNNING
        if at is None:
            at = self.now()
        self.started[idx] = at
        self.attempts[idx] = 1
        if self.listener is not None:
            self._emit("node_started", idx, _RUNNING, at, None, inputs, None)
        if self.starts is not None:
            self._to_sink(self.starts, idx)

    def retry(self, idx: int, attempt: int) -> None:
        """The node begins attempt number `attempt` (2, 3, ...)."""
        self.attempts[idx] = attempt

    def done(self, idx: int, outputs: Mapping[str, Any] | None) -> float:
        """RUNNING → DONE; returns the clock reading it recorded. (`outputs` may be None only
        while nobody listens: the scheduler then does not build the dict.)"""
        self.states[idx] = _DONE
        self.finished[idx] = at = self.now()
        if self.listener is not None:
            self._emit("node_finished", idx, _DONE, at, None, None, outputs)
        if self.log is not None:
            if outputs is None:  # left in their slots by the scheduler, for the sink to read
                assert self.lazy is not None
                self._to_sink(self.lazy, idx)
            else:
                self._to_sink(self.log, idx)
        return at

    def reuse(self, idx: int, outputs: Mapping[str, Any], cached: bool) -> None:
        """RUNNING → DONE without an attempt: outputs from a stored run or the result cache."""
        self.attempts[idx] = 0
        if cached:
            self.cached.add(idx)
        self.done(idx, outputs)

    def reuse_many(self, idxs: Sequence[int]) -> None:
        """PENDING → DONE without an attempt, for many rows at once (ascending) and without
        events: a resume's stored nodes, when nobody but the store that holds them listens
        (nor logged for a sink: the store holds these rows already)."""
        if not idxs:
            return
        at = self.now()
        n, first, stop = len(idxs), idxs[0], idxs[-1] + 1
        if stop - first == n:  # one run of rows (the common case): slice stores
            self.states[first:stop] = [_DONE] * n
            self.started[first:stop] = self.finished[first:stop] = array("d", (at,)) * n
            return
        states, started, finished = self.states, self.started, self.finished
        for i in idxs:
            states[i] = _DONE
            started[i] = finished[i] = at

    def fail(self, idx: int, exc: BaseException | ErrorInfo) -> None:
        """RUNNING → FAILED with the node's original exception."""
        self.states[idx] = _FAILED
        self.finished[idx] = at = self.now()
        self.errors[idx] = exc
        if self.listener is not None:
            self._emit("node_finished", idx, _FAILED, at, self.error_info(idx), None, None)
        if self.log is not None:
            self._to_sink(self.log, idx)

    def fail_inner(self, idx: int, exc: BaseException) -> None:
        """RUNNING → FAILED for a node made of nodes (a nested graph, a map) whose inner nodes
        failed: their errors are theirs, this node's record names them."""
        inner = sorted({leaf.node_id for leaf in _leaves(exc) if hasattr(leaf, "node_id")})
        self.fail(
            idx,
            ErrorInfo(type="DependencyFailed", message=f"inner nodes failed: {', '.join(inner)}"),
        )

    def cancel(self, idx: int) -> None:
        """RUNNING or PENDING → CANCELLED (a no-op for a node that already finished)."""
        state = self.states[idx]
        at = self.now()
        if state is _RUNNING:
            self.finished[idx] = at
        elif state is not _PENDING:
            return
        self.states[idx] = _CANCELLED
        if self.listener is not None:
            self._emit("node_finished", idx, _CANCELLED, at, None, None, None)
        if self.log is not None:
            self._to_sink(self.log, idx)

    def skip(self, idx: int, cause: ErrorInfo) -> bool:
        """PENDING → SKIPPED because a dependency failed; False if the node was not pending."""
        if self.states[idx] is not _PENDING:
            return False
        self.states[idx] = _SKIPPED
        self.errors[idx] = cause
        if self.listener is not None:
            self._emit("node_finished", idx, _SKIPPED, self.now(), cause, None, None)
        if self.log is not None:
            self._to_sink(self.log, idx)
        return True

    def _to_sink(self, rows: list[int], idx: int) -> None:
        """Row `idx` into one of the sink's lists (`starts`, `log`, `lazy`), waking the sink
        when the list was empty (it drains them all at its next batch)."""
        if not rows:
            self.wake()
        rows.append(idx)

    def add_wait(self, idx: int, seconds: float) -> None:
        """Count `seconds` the node spent waiting for capacity or a rate-limit turn."""
        if seconds > 0:
            self.waited[idx] = self.waited.get(idx, 0.0) + seconds

    def finish_unfinished(self) -> None:
        """Mark every row still RUNNING or PENDING as CANCELLED: nothing is left running."""
        states = self.states
        if _RUNNING not in states and _PENDING not in states:  # C scans: the usual end
            return
        for i in range(len(states)):
            if states[i] is _RUNNING or states[i] is _PENDING:
                self.cancel(i)

    # -- run events --------------------------------------------------------------------------

    def run_started(self) -> None:
        self.t0 = self.now()
        self.wall0 = datetime.now(UTC)
        self.epoch = self.wall0 - timedelta(seconds=self.t0)
        if self.sink is not None:
            self.sink.run_started(self.t0)
        if self.listener is not None:
            self._emit("run_started", -1, None, self.t0, None, None, None)

    def run_finished(self, outcome: NodeState) -> None:
        if self.sink is not None:
            self.sink.run_finished(outcome, self.now())
        if self.listener is not None:
            self._emit("run_finished", -1, outcome, self.now(), None, None, None)

    def error_info(self, idx: int) -> ErrorInfo:
        info = self.infos.get(idx)
        if info is None:
            err = self.errors[idx]
            info = ErrorInfo.from_exception(err) if isinstance(err, BaseException) else err
            self.infos[idx] = info
        return info

    def failures(self) -> list[tuple[int, BaseException]]:
        """The original exceptions of failed nodes whose own code raised (not composites'
        inner failures), once each, in row order."""
        seen: set[int] = set()
        found: list[tuple[int, BaseException]] = []
        for idx, err in self.errors.items():
            if (
                self.states[idx] is _FAILED
                and isinstance(err, BaseException)
                and not is_run_failure(err)
                and id(err) not in seen
            ):
                seen.add(id(err))
                found.append((idx, err))
        return found

    def _emit(
        self,
        kind: EventKind,
        idx: int,
        state: NodeState | None,
        at: float,
        error: ErrorInfo | None,
        inputs: Mapping[str, Any] | None,
        outputs: Mapping[str, Any] | None,
    ) -> None:
        listener = self.listener
        assert listener is not None
        if idx >= 0:
            event = RunEvent(
                kind,
                self.run_id,
                self.graph_id,
                self.ids[idx],
                self.tools[idx],
                state,
                at,
                self.epoch,
                self.attempts[idx],
                error,
                len(self.ids),
                inputs,
                outputs,
            )
        else:
            event = RunEvent(
                kind, self.run_id, self.graph_id, None, None, state, at, self.epoch, 0, error,
                len(self.ids),
            )  # fmt: skip
        try:
            listener(event)
        except Exception as exc:
            # Not swallowed: the run fails with it. The listener hears nothing more.
            self.listener = None
            if self.listener_error is None:
                self.listener_error = exc
                self.on_listener_error()

    # -- snapshots ---------------------------------------------------------------------------

    def snapshot(
        self, started_at: float | None, finished_at: float | None, *, final: bool = False
    ) -> RunRecord:
        """A frozen `RunRecord` of every row so far.

        With `final` (the run has ended, so no row changes again) the node records are built on
        first read, one by one (`record=True` then costs next to nothing until a node is
        looked at). Otherwise one `NodeRecord` per row is built now, positionally; the wall
        time of a clock reading is computed once (nodes of a fast run share many readings).
        """
        if final:
            shift = self.epoch.__add__
            return RunRecord(
                run_id=self.run_id,
                graph_id=self.graph_id,
                nodes=_FinalNodes(self),  # type: ignore[arg-type]
                started_at=started_at,
                finished_at=finished_at,
                started_wall=None if started_at is None else shift(timedelta(0, started_at)),
                finished_wall=None if finished_at is None else shift(timedelta(0, finished_at)),
            )
        with gc_paused():  # every record made here stays alive with the snapshot
            return self._snapshot(started_at, finished_at)

    def node_record(self, i: int) -> NodeRecord:
        """Row `i` as a `NodeRecord`."""
        started, finished = self.started[i], self.finished[i]
        shift = self.epoch.__add__
        return NodeRecord(
            self.tools[i],
            self.states[i],
            None if started != started else started,  # NaN: never started
            None if finished != finished else finished,
            self.attempts[i],
            self.error_info(i) if i in self.errors else None,
            self.executors[i],
            i in self.cached,
            self.waited.get(i, 0.0),
            None if started != started else shift(timedelta(0, started)),
            None if finished != finished else shift(timedelta(0, finished)),
        )

    def _snapshot(self, started_at: float | None, finished_at: float | None) -> RunRecord:
        errors = {i: self.error_info(i) for i in self.errors}
        waited, cached = self.waited, self.cached
        walls: dict[float, datetime | None] = {}
        known = walls.get
        shift = self.epoch.__add__
        unseen = _UNSEEN
        record = NodeRecord
        nodes: dict[str, NodeRecord] = {}
        for i, (node_id, tool, state, started, finished, attempts, executor) in enumerate(
            zip(
                self.ids,
                self.tools,
                self.states,
                self.started,
                self.finished,
                self.attempts,
                self.executors,
                strict=True,
            )
        ):
            if started != started:  # NaN: never started
                started = started_wall = None
            else:
                started_wall = known(started, unseen)
                if started_wall is unseen:
                    started_wall = walls[started] = shift(timedelta(0, started))
            if finished != finished:
                finished = finished_wall = None
            else:
                finished_wall = known(finished, unseen)
                if finished_wall is unseen:
                    finished_wall = walls[finished] = shift(timedelta(0, finished))
            nodes[node_id] = record(
                tool,
                state,
                started,
                finished,
                attempts,
                errors.get(i),
                executor,
                i in cached,
                waited.get(i, 0.0),
                started_wall,
                finished_wall,
            )
        return RunRecord(
            run_id=self.run_id,
            graph_id=self.graph_id,
            nodes=nodes,
            started_at=started_at,
            finished_at=finished_at,
            started_wall=None if started_at is None else shift(timedelta(0, started_at)),
            finished_wall=None if finished_at is None else shift(timedelta(0, finished_at)),
        )


_UNSEEN: Any = object()


class _FinalNodes(Mapping[str, NodeRecord]):
    """Node id → `NodeRecord` of a run that has ended, each built from the ledger on first
    read. Compares, iterates and serialises like the dict it stands for; pickles as one."""

    __slots__ = ("_built", "_index", "_ledger")

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._index: dict[str, int] | None = None
        self._built: dict[str, NodeRecord] = {}

    def __getitem__(self, node_id: str) -> NodeRecord:
        found = self._built.get(node_id)
        if found is None:
            if self._index is None:
                self._index = {n: i for i, n in enumerate(self._ledger.ids)}
            found = self._built[node_id] = self._ledger.node_record(self._index[node_id])
        return found

    def __iter__(self) -> Iterator[str]:
        return iter(self._ledger.ids)

    def __len__(self) -> int:
        return len(self._ledger.ids)

    def __contains__(self, node_id: object) -> bool:
        if self._index is None:
            self._index = {n: i for i, n in enumerate(self._ledger.ids)}
        return node_id in self._index

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        return dict(self.items()) == dict(other.items())

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(dict(self.items()))

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (dict(self.items()),))


def _nothing() -> None:
    pass


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]
