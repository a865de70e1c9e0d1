"""What happened in a run: node states, timings and errors, as attrs data.

Records are frozen and JSON-safe (`to_dict`/`from_dict` round-trip losslessly through the one
cattrs converter). Times are on the Trio clock, so tests under `MockClock` can compare them exactly.
"""

from __future__ import annotations

import enum
import traceback
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import attrs

from ._convert import converter

__all__ = ["ErrorInfo", "NodeRecord", "NodeState", "RunRecord", "RunResult"]


class NodeState(enum.StrEnum):
    """The life of one node: PENDING → RUNNING → DONE | FAILED | CANCELLED, or SKIPPED."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    DONE = "DONE"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    SKIPPED = "SKIPPED"

    def __repr__(self) -> str:
        return f"NodeState.{self.name}"


@attrs.frozen
class ErrorInfo:
    """A node's error, JSON-safe: exception type name, message and formatted traceback."""

    type: str
    message: str
    traceback: str = ""

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorInfo:
        return cls(
            type=type(exc).__qualname__,
            message=str(exc),
            traceback="".join(traceback.format_exception(exc)),
        )


@attrs.frozen
class NodeRecord:
    """What happened to one node of a run.

    `started_at`/`finished_at` are on the Trio clock (exact under `MockClock`); the `_wall`
    twins are UTC datetimes, so a stored record still means something later. `executor` names
    where the attempts ran, `cached` says the outputs came from the result cache, and `waited`
    is the seconds the node spent waiting for capacity and rate-limit turns.
    """

    tool: str
    state: NodeState = NodeState.PENDING
    started_at: float | None = None  # trio clock
    finished_at: float | None = None
    attempts: int = 0
    error: ErrorInfo | None = None
    executor: str = "loop"
    cached: bool = False
    waited: float = 0.0
    started_wall: datetime | None = None
    finished_wall: datetime | None = None


@attrs.frozen
class RunRecord:
    """One run: its id, the root graph's id, every node's record (in admission order), timings."""

    run_id: str
    graph_id: str
    nodes: dict[str, NodeRecord] = attrs.field(factory=dict)
    started_at: float | None = None
    finished_at: float | None = None
    started_wall: datetime | None = None
    finished_wall: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict; `RunRecord.from_dict(r.to_dict()) == r`."""
        result: dict[str, Any] = converter.unstructure(self)
        return result

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunRecord:
        return converter.structure(data, cls)

    def states(self) -> dict[str, NodeState]:
        """Node id → state, a convenience for assertions."""
        return {node_id: rec.state for node_id, rec in self.nodes.items()}


@attrs.frozen
class RunResult:
    """A run's outputs (those that could be computed) together with its record.

    The record may be given as a zero-argument function: it is then built on first access
    (a run's record is final when the run returns), so `record=True` costs nothing until read.
    """

    outputs: dict[str, Any]
    _record: RunRecord | Callable[[], RunRecord] = attrs.field(alias="record", repr=False)
    _built: list[RunRecord] = attrs.field(factory=list, init=False, eq=False, repr=False)

    @property
    def record(self) -> RunRecord:
        """The run's `RunRecord`."""
        if not self._built:
            source = self._record
            self._built.append(source if isinstance(source, RunRecord) else source())
        return self._built[0]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RunResult):
            return NotImplemented
        return self.outputs == other.outputs and self.record == other.record

    def __repr__(self) -> str:
        return f"RunResult(outputs={self.outputs!r}, record={self.record!r})"

    @property
    def errors(self) -> dict[str, ErrorInfo]:
        """Node id → error, for every node whose own code failed (once per failure: a nested
        graph or map that failed because an inner node did is not listed again)."""
        return {
            node_id: rec.error
            for node_id, rec in self.record.nodes.items()
            if rec.state is NodeState.FAILED
            and rec.error is not None
            and rec.error.type != "DependencyFailed"
        }

    @property
    def ok(self) -> bool:
        """True when no node failed."""
        return not self.errors
