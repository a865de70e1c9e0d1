"""The live, columnar record of a run, turned into a frozen `RunRecord` on demand.

One row per node, in admission order. Columns are plain lists so that recording a state change
on the hot path is a list store, not an object allocation; exceptions are formatted only when a
snapshot is taken.
"""

from __future__ import annotations

from ._records import ErrorInfo, NodeRecord, NodeState, RunRecord

__all__ = ["Ledger"]

_PENDING = NodeState.PENDING


class Ledger:
    """Node rows of one run (shared by its nested graphs)."""

    __slots__ = ("attempts", "errors", "finished", "ids", "started", "states", "tools")

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.tools: list[str] = []
        self.states: list[NodeState] = []
        self.started: list[float | None] = []
        self.finished: list[float | None] = []
        self.attempts: list[int] = []
        self.errors: dict[int, BaseException | ErrorInfo] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, node_id: str, tool: str) -> int:
        """Append a PENDING row; returns its index."""
        self.ids.append(node_id)
        self.tools.append(tool)
        self.states.append(_PENDING)
        self.started.append(None)
        self.finished.append(None)
        self.attempts.append(0)
        return len(self.ids) - 1

    def add_many(self, node_ids: list[str], tools: list[str]) -> int:
        """Append PENDING rows for a whole static graph; returns the first row's index."""
        base = len(self.ids)
        n = len(node_ids)
        self.ids.extend(node_ids)
        self.tools.extend(tools)
        self.states.extend([_PENDING] * n)
        self.started.extend([None] * n)
        self.finished.extend([None] * n)
        self.attempts.extend([0] * n)
        return base

    def finish_unfinished(self, now: float) -> None:
        """Mark rows still RUNNING as CANCELLED and rows still PENDING as CANCELLED too.

        Called when a run (or nested graph) is torn down, so no record is left RUNNING.
        """
        states = self.states
        for i in range(len(states)):
            state = states[i]
            if state is NodeState.RUNNING:
                states[i] = NodeState.CANCELLED
                if self.finished[i] is None:
                    self.finished[i] = now
            elif state is _PENDING:
                states[i] = NodeState.CANCELLED

    def snapshot(
        self, run_id: str, graph_id: str, started_at: float | None, finished_at: float | None
    ) -> RunRecord:
        """A frozen `RunRecord` of every row so far."""
        errors: dict[int, ErrorInfo] = {}
        for i, err in self.errors.items():
            if isinstance(err, BaseException):
                err = ErrorInfo.from_exception(err)
                self.errors[i] = err
            errors[i] = err
        nodes = {
            node_id: NodeRecord(
                tool=self.tools[i],
                state=self.states[i],
                started_at=self.started[i],
                finished_at=self.finished[i],
                attempts=self.attempts[i],
                error=errors.get(i),
            )
            for i, node_id in enumerate(self.ids)
        }
        return RunRecord(
            run_id=run_id,
            graph_id=graph_id,
            nodes=nodes,
            started_at=started_at,
            finished_at=finished_at,
        )
