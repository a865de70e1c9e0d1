"""The command line's progress: counters fed by run events, drawn at most a few times a second.

`Progress` is a run-event listener that only updates counters (a few dict and int operations per
event), so the run does not pay for drawing. A ticker task in the same Trio run draws those
counters on a timer: `PlainDisplay` (here) writes a plain line at most once a second, and one per
failure, when stderr is not a terminal; `_live.LiveDisplay` redraws a `rich` live display on a
terminal at most 10 times a second.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, TextIO

import trio

from ._records import ErrorInfo, NodeState

if TYPE_CHECKING:
    from ._events import RunEvent

__all__ = ["Display", "PlainDisplay", "Progress", "format_seconds", "tick"]

_DONE = NodeState.DONE
_FAILED = NodeState.FAILED
_SKIPPED = NodeState.SKIPPED


class Progress:
    """Counts of a run's nodes by state, the running nodes and the failures, from its events.

    Called for every event of the run, so it does the least it can: int counters compared by
    identity (no enum hashing), the event itself kept for a running node (no allocation).
    """

    __slots__ = (
        "cancelled",
        "done",
        "failed",
        "failures",
        "graph",
        "known",
        "outcome",
        "run_id",
        "running",
        "skipped",
        "started",
        "started_any",
    )

    def __init__(self) -> None:
        self.done = self.failed = self.skipped = self.cancelled = 0
        # node id -> its node_started event; insertion order is start order, so the first
        # entry is the node that has been running longest.
        self.running: dict[str | None, RunEvent] = {}
        self.failures: list[tuple[str, str, ErrorInfo | None]] = []
        self.known = 0
        self.started: float | None = None
        self.started_any = False
        self.run_id = ""
        self.graph = ""
        self.outcome: NodeState | None = None

    def listen(self, event: RunEvent) -> None:
        """The run-event listener (a bound method: cheaper to call than `__call__`)."""
        kind = event.kind
        if event.known > self.known:
            self.known = event.known
        if kind == "node_finished":
            self.running.pop(event.node_id, None)
            state = event.state
            if state is _DONE:
                self.done += 1
            elif state is _SKIPPED:
                self.skipped += 1
            elif state is _FAILED:
                self.failed += 1
                self.failures.append((event.node_id or "", event.tool or "", event.error))
            else:
                self.cancelled += 1
        elif kind == "node_started":
            self.started_any = True
            running = self.running
            if event.node_id not in running:  # a retry keeps its first start
                running[event.node_id] = event
        elif kind == "run_started":
            if self.started is None:  # nested graphs share the run; the root's is the start
                self.started = event.at
                self.run_id = event.run_id
                self.graph = event.graph_id
        elif kind == "run_finished" and event.graph_id == self.graph:
            self.outcome = event.state

    @property
    def finished(self) -> int:
        """Nodes in a final state."""
        return self.done + self.failed + self.skipped + self.cancelled

    def elapsed(self, now: float) -> float:
        return 0.0 if self.started is None else max(0.0, now - self.started)

    def longest(self, now: float) -> tuple[str, str, float] | None:
        """The node that has been running longest: (node id, tool, seconds so far)."""
        for event in self.running.values():
            return event.node_id or "", event.tool or "", max(0.0, now - event.at)
        return None


def format_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Display(Protocol):
    """Draws a `Progress`; `update` is called on a timer and once more at the end."""

    interval: float

    def update(self, progress: Progress, now: float, final: bool = False) -> None: ...


class PlainDisplay:
    """Plain progress lines for logs: at most one a second while it changes, one per failure."""

    def __init__(self, stream: TextIO, *, verbose: bool = False, interval: float = 1.0) -> None:
        self.stream = stream
        self.verbose = verbose
        self.interval = interval
        self._last: tuple[int, ...] | None = None
        self._failures_shown = 0
        self._header = ""
        self._shown = False

    def header(self, text: str) -> None:
        """A first line, written once the run has nodes (nothing for a run that never starts:
        an error before any node is a usage error, reported on its own)."""
        self._header = text

    def update(self, progress: Progress, now: float, final: bool = False) -> None:
        if not self._shown:
            if not (progress.known or progress.started_any):
                return
            self._shown = True
            if self._header:
                self.stream.write(self._header + "\n")
        elapsed = progress.elapsed(now)
        lines: list[str] = []
        failures = progress.failures
        for node_id, tool, error in failures[self._failures_shown :]:
            what = f"{error.type}: {error.message}" if error is not None else "failed"
            lines.append(f"[{format_seconds(elapsed):>6}] FAILED {node_id} ({tool}): {what}")
        self._failures_shown = len(failures)
        p = progress
        state = (p.known, p.done, p.failed, p.skipped, p.cancelled, len(p.running))
        if state != self._last:
            self._last = state
            line = (
                f"[{format_seconds(elapsed):>6}] {progress.done}/{progress.known} done, "
                f"{len(p.running)} running, {p.failed} failed, {p.skipped} skipped"
            )
            if p.cancelled:
                line += f", {p.cancelled} cancelled"
            longest = progress.longest(now)
            if longest is not None and not final:
                line += f"; longest: {longest[0]} ({format_seconds(longest[2])})"
            lines.append(line)
        if lines:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()


async def tick(display: Display, progress: Progress) -> None:
    """Redraw `display` every `display.interval` seconds until cancelled."""
    while True:
        display.update(progress, trio.current_time())
        await trio.sleep(display.interval)
