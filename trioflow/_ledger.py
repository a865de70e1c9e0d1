"""The node life cycle of one run, in one place: every state change, and the events it emits.

PENDING → RUNNING → DONE | FAILED | CANCELLED, or PENDING → SKIPPED (or CANCELLED when the run
ends first). Both schedulers change a node's state only through the methods here, and each
change is also the one place a `RunEvent` is emitted from. Rows are plain list columns, so a
state change on the hot path is a few list stores; with no listener no event object is built,
and exceptions are formatted only when a snapshot (or a listener) needs them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from ._events import EventKind, Listener, RunEvent
from ._records import ErrorInfo, NodeRecord, NodeState, RunRecord

__all__ = ["Ledger"]

_PENDING = NodeState.PENDING
_RUNNING = NodeState.RUNNING
_DONE = NodeState.DONE
_FAILED = NodeState.FAILED
_CANCELLED = NodeState.CANCELLED
_SKIPPED = NodeState.SKIPPED


def _never() -> float:
    return 0.0


class Ledger:
    """Node rows of one run (shared by its nested graphs), and the run's event stream."""

    __slots__ = (
        "attempts",
        "cached",
        "errors",
        "executors",
        "finished",
        "graph_id",
        "ids",
        "listener",
        "listener_error",
        "now",
        "on_listener_error",
        "run_id",
        "started",
        "states",
        "t0",
        "tools",
        "waited",
        "wall0",
    )

    def __init__(
        self,
        run_id: str = "",
        graph_id: str = "",
        now: Callable[[], float] = _never,
        listener: Listener | None = None,
    ) -> None:
        self.run_id = run_id
        self.graph_id = graph_id
        self.now = now
        self.listener = listener
        self.listener_error: Exception | None = None
        self.on_listener_error: Callable[[], None] = _nothing
        self.ids: list[str] = []
        self.tools: list[str] = []
        self.states: list[NodeState] = []
        self.started: list[float | None] = []
        self.finished: list[float | None] = []
        self.attempts: list[int] = []
        self.executors: list[str] = []
        self.errors: dict[int, BaseException | ErrorInfo] = {}
        self.waited: dict[int, float] = {}
        self.cached: set[int] = set()
        self.t0 = now()
        self.wall0 = datetime.now(UTC)

    def __len__(self) -> int:
        return len(self.ids)

    # -- rows --------------------------------------------------------------------------------

    def add(self, node_id: str, tool: str, executor: str = "loop") -> int:
        """Append a PENDING row; returns its index."""
        self.ids.append(node_id)
        self.tools.append(tool)
        self.states.append(_PENDING)
        self.started.append(None)
        self.finished.append(None)
        self.attempts.append(0)
        self.executors.append(executor)
        return len(self.ids) - 1

    def add_many(self, node_ids: list[str], tools: list[str], executors: list[str]) -> int:
        """Append PENDING rows for a whole static graph; returns the first row's index."""
        base = len(self.ids)
        n = len(node_ids)
        self.ids.extend(node_ids)
        self.tools.extend(tools)
        self.states.extend([_PENDING] * n)
        self.started.extend([None] * n)
        self.finished.extend([None] * n)
        self.attempts.extend([0] * n)
        self.executors.extend(executors)
        return base

    # -- the life cycle ----------------------------------------------------------------------

    def start(self, idx: int, inputs: Mapping[str, Any] | None = None) -> None:
        """PENDING → RUNNING: the node holds its capacity and its first attempt begins."""
        self.states[idx] = _RUNNING
        self.started[idx] = self.now()
        self.attempts[idx] = 1
        if self.listener is not None:
            self._emit("node_started", idx, _RUNNING, inputs=inputs)

    def retry(self, idx: int, attempt: int) -> None:
        """The node begins attempt number `attempt` (2, 3, ...)."""
        self.attempts[idx] = attempt

    def done(self, idx: int, outputs: Mapping[str, Any]) -> None:
        """RUNNING → DONE."""
        self.states[idx] = _DONE
        self.finished[idx] = self.now()
        if self.listener is not None:
            self._emit("node_finished", idx, _DONE, outputs=outputs)

    def reuse(self, idx: int, outputs: Mapping[str, Any], cached: bool) -> None:
        """RUNNING → DONE without an attempt: outputs from a stored run or the result cache."""
        self.attempts[idx] = 0
        if cached:
            self.cached.add(idx)
        self.done(idx, outputs)

    def fail(self, idx: int, exc: BaseException) -> None:
        """RUNNING → FAILED with the node's original exception."""
        self.states[idx] = _FAILED
        self.finished[idx] = self.now()
        self.errors[idx] = exc
        if self.listener is not None:
            self._emit("node_finished", idx, _FAILED, error=self._error_info(idx))

    def cancel(self, idx: int) -> None:
        """RUNNING or PENDING → CANCELLED (a no-op for a node that already finished)."""
        state = self.states[idx]
        if state is _RUNNING:
            self.finished[idx] = self.now()
        elif state is not _PENDING:
            return
        self.states[idx] = _CANCELLED
        if self.listener is not None:
            self._emit("node_finished", idx, _CANCELLED)

    def skip(self, idx: int, cause: ErrorInfo) -> bool:
        """PENDING → SKIPPED because a dependency failed; False if the node was not pending."""
        if self.states[idx] is not _PENDING:
            return False
        self.states[idx] = _SKIPPED
        self.errors[idx] = cause
        if self.listener is not None:
            self._emit("node_finished", idx, _SKIPPED, error=cause)
        return True

    def add_wait(self, idx: int, seconds: float) -> None:
        """Count `seconds` the node spent waiting for capacity or a rate-limit turn."""
        if seconds > 0:
            self.waited[idx] = self.waited.get(idx, 0.0) + seconds

    def finish_unfinished(self) -> None:
        """Mark every row still RUNNING or PENDING as CANCELLED: nothing is left running."""
        states = self.states
        for i in range(len(states)):
            if states[i] is _RUNNING or states[i] is _PENDING:
                self.cancel(i)

    # -- run events --------------------------------------------------------------------------

    def run_started(self) -> None:
        self.t0 = self.now()
        self.wall0 = datetime.now(UTC)
        if self.listener is not None:
            self._emit("run_started", -1, None)

    def run_finished(self, outcome: NodeState) -> None:
        if self.listener is not None:
            self._emit("run_finished", -1, outcome)

    def wall(self, at: float | None) -> datetime | None:
        """The UTC time of a Trio-clock reading of this run."""
        if at is None:
            return None
        return self.wall0 + timedelta(seconds=at - self.t0)

    def _error_info(self, idx: int) -> ErrorInfo:
        err = self.errors[idx]
        if isinstance(err, BaseException):
            err = self.errors[idx] = ErrorInfo.from_exception(err)
        return err

    def _emit(
        self,
        kind: EventKind,
        idx: int,
        state: NodeState | None,
        *,
        error: ErrorInfo | None = None,
        inputs: Mapping[str, Any] | None = None,
        outputs: Mapping[str, Any] | None = None,
    ) -> None:
        listener = self.listener
        assert listener is not None
        at = self.now()
        node = idx >= 0
        event = RunEvent(
            kind=kind,
            run_id=self.run_id,
            graph_id=self.graph_id,
            node_id=self.ids[idx] if node else None,
            tool=self.tools[idx] if node else None,
            state=state,
            at=at,
            wall=self.wall0 + timedelta(seconds=at - self.t0),
            attempt=self.attempts[idx] if node else 0,
            error=error,
            known=len(self.ids),
            inputs=inputs,
            outputs=outputs,
        )
        try:
            listener(event)
        except Exception as exc:
            # Not swallowed: the run fails with it. The listener hears nothing more.
            self.listener = None
            if self.listener_error is None:
                self.listener_error = exc
                self.on_listener_error()

    # -- snapshots ---------------------------------------------------------------------------

    def snapshot(self, started_at: float | None, finished_at: float | None) -> RunRecord:
        """A frozen `RunRecord` of every row so far."""
        errors = {i: self._error_info(i) for i in self.errors}
        waited, cached, wall = self.waited, self.cached, self.wall
        started, finished = self.started, self.finished
        nodes = {
            node_id: NodeRecord(
                tool=self.tools[i],
                state=self.states[i],
                started_at=started[i],
                finished_at=finished[i],
                attempts=self.attempts[i],
                error=errors.get(i),
                executor=self.executors[i],
                cached=i in cached,
                waited=waited.get(i, 0.0),
                started_wall=wall(started[i]),
                finished_wall=wall(finished[i]),
            )
            for i, node_id in enumerate(self.ids)
        }
        return RunRecord(
            run_id=self.run_id,
            graph_id=self.graph_id,
            nodes=nodes,
            started_at=started_at,
            finished_at=finished_at,
            started_wall=wall(started_at),
            finished_wall=wall(finished_at),
        )


def _nothing() -> None:
    pass
