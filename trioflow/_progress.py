"""The command line's progress: counters fed by run events, drawn at most a few times a second.

`Progress` is a run-event listener that only updates counters (a few dict and int operations per
event), so the run does not pay for drawing. A ticker task in the same Trio run draws those
counters on a timer: `LiveDisplay` redraws a `rich` live display on a terminal at most 10 times a
second, `PlainDisplay` writes a plain line at most once a second (and one per failure) when
stderr is not a terminal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, Self, TextIO

import trio
from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ._records import ErrorInfo, NodeState

if TYPE_CHECKING:
    from ._events import RunEvent

__all__ = ["Display", "LiveDisplay", "PlainDisplay", "Progress", "tick"]

_DONE = NodeState.DONE
_FAILED = NodeState.FAILED
_SKIPPED = NodeState.SKIPPED
_CANCELLED = NodeState.CANCELLED


class Progress:
    """Counts of a run's nodes by state, the running nodes and the failures, from its events."""

    __slots__ = (
        "counts",
        "failures",
        "graph",
        "known",
        "outcome",
        "run_id",
        "running",
        "started",
        "started_any",
    )

    def __init__(self) -> None:
        self.counts: dict[NodeState, int] = dict.fromkeys(NodeState, 0)
        # node id -> (trio time it started, tool); insertion order is start order, so the
        # first entry is the node that has been running longest.
        self.running: dict[str, tuple[float, str]] = {}
        self.failures: list[tuple[str, str, ErrorInfo | None]] = []
        self.known = 0
        self.started: float | None = None
        self.started_any = False
        self.run_id = ""
        self.graph = ""
        self.outcome: NodeState | None = None

    def __call__(self, event: RunEvent) -> None:
        kind = event.kind
        if event.known > self.known:
            self.known = event.known
        if kind == "node_finished":
            node_id = event.node_id
            self.running.pop(node_id, None)  # type: ignore[arg-type]
            state = event.state
            self.counts[state] += 1
            if state is _FAILED:
                self.failures.append((node_id, event.tool or "", event.error))  # type: ignore[arg-type]
        elif kind == "node_started":
            self.started_any = True
            if event.node_id not in self.running:  # a retry keeps its first start
                self.running[event.node_id] = (event.at, event.tool or "")  # type: ignore[index]
        elif kind == "run_started":
            if self.started is None:  # nested graphs share the run; the root's is the start
                self.started = event.at
                self.run_id = event.run_id
                self.graph = event.graph_id
        elif kind == "run_finished" and event.graph_id == self.graph:
            self.outcome = event.state

    @property
    def done(self) -> int:
        return self.counts[_DONE]

    @property
    def finished(self) -> int:
        """Nodes in a final state."""
        c = self.counts
        return c[_DONE] + c[_FAILED] + c[_SKIPPED] + c[_CANCELLED]

    def elapsed(self, now: float) -> float:
        return 0.0 if self.started is None else max(0.0, now - self.started)

    def longest(self, now: float) -> tuple[str, str, float] | None:
        """The node that has been running longest: (node id, tool, seconds so far)."""
        for node_id, (at, tool) in self.running.items():
            return node_id, tool, max(0.0, now - at)
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

    def note(self, text: str) -> None: ...


class PlainDisplay:
    """Plain progress lines for logs: at most one a second while it changes, one per failure."""

    def __init__(self, stream: TextIO, *, verbose: bool = False, interval: float = 1.0) -> None:
        self.stream = stream
        self.verbose = verbose
        self.interval = interval
        self._last: tuple[int, ...] | None = None
        self._failures_shown = 0

    def update(self, progress: Progress, now: float, final: bool = False) -> None:
        elapsed = progress.elapsed(now)
        lines: list[str] = []
        failures = progress.failures
        for node_id, tool, error in failures[self._failures_shown :]:
            what = f"{error.type}: {error.message}" if error is not None else "failed"
            lines.append(f"[{format_seconds(elapsed):>6}] FAILED {node_id} ({tool}): {what}")
        self._failures_shown = len(failures)
        c = progress.counts
        state = (progress.known, *c.values(), len(progress.running))
        if state != self._last and (progress.started is not None or final):
            self._last = state
            line = (
                f"[{format_seconds(elapsed):>6}] {progress.done}/{progress.known} done, "
                f"{len(progress.running)} running, {c[_FAILED]} failed, {c[_SKIPPED]} skipped"
            )
            if c[_CANCELLED]:
                line += f", {c[_CANCELLED]} cancelled"
            longest = progress.longest(now)
            if longest is not None and not final:
                line += f"; longest: {longest[0]} ({format_seconds(longest[2])})"
            lines.append(line)
        if lines:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()

    def note(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()


class LiveDisplay:
    """A `rich` live display on a terminal, redrawn at most 10 times a second."""

    interval = 0.1

    def __init__(self, console: Console, title: str) -> None:
        self.console = console
        self.title = title
        # No auto-refresh thread: the ticker task redraws from inside the Trio run.
        self.live = Live(
            console=console,
            auto_refresh=False,
            transient=False,
            redirect_stdout=False,
            redirect_stderr=True,
        )

    def __enter__(self) -> Self:
        self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.stop()

    def render(self, progress: Progress, now: float, final: bool = False) -> Group:
        c = progress.counts
        known = progress.known
        grid = Table.grid(padding=(0, 1))
        grid.add_row(
            Text(self.title, style="bold"),
            ProgressBar(
                total=known or None,
                completed=progress.done,
                width=30,
                pulse=not known,
                animation_time=now,
            ),
            Text(f"{progress.done}/{known} done", style="bold"),
            Text(format_seconds(progress.elapsed(now)), style="cyan"),
        )
        counts = Text.assemble(
            ("running ", "dim"),
            (str(len(progress.running)), "bold yellow" if progress.running else ""),
            ("  failed ", "dim"),
            (str(c[_FAILED]), "bold red" if c[_FAILED] else ""),
            ("  skipped ", "dim"),
            (str(c[_SKIPPED]), ""),
        )
        if c[_CANCELLED]:
            counts.append_text(Text.assemble(("  cancelled ", "dim"), (str(c[_CANCELLED]), "")))
        parts: list[Text | Table] = [grid, counts]
        longest = progress.longest(now)
        if longest is not None and not final:
            node_id, tool, seconds = longest
            parts.append(
                Text.assemble(
                    ("longest running: ", "dim"),
                    (node_id, "bold"),
                    (f" ({tool}) " if tool and tool != node_id else " ", "dim"),
                    (format_seconds(seconds), "cyan"),
                )
            )
        return Group(*parts)

    def update(self, progress: Progress, now: float, final: bool = False) -> None:
        self.live.update(self.render(progress, now, final), refresh=True)

    def note(self, text: str) -> None:
        self.live.console.print(text, highlight=False, markup=False)


async def tick(display: Display, progress: Progress) -> None:
    """Redraw `display` every `display.interval` seconds until cancelled."""
    while True:
        display.update(progress, trio.current_time())
        await trio.sleep(display.interval)
