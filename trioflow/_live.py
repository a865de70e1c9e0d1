"""The live progress display on a terminal: `rich`, redrawn at most 10 times a second.

Imported only when stderr is a terminal, so scripts and CI logs do not pay for `rich`.
"""

from __future__ import annotations

from typing import Self

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ._progress import Progress, format_seconds

__all__ = ["LiveDisplay"]


def _names_other(node_id: str, tool: str) -> bool:
    """Whether the tool is worth naming next to the node id (`fetch_3` already says `fetch`)."""
    return bool(tool) and not node_id.rpartition(".")[2].startswith(f"{tool}_")


class LiveDisplay:
    """A `rich` live display on a terminal, redrawn at most 10 times a second."""

    interval = 0.1

    def __init__(self, console: Console, title: str) -> None:
        self.console = console
        self.title = title
        self._shown = False
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
        if not self._shown:  # the run never started a node: leave no empty frame behind
            self.live.transient = True
        self.live.stop()

    def render(self, progress: Progress, now: float, final: bool = False) -> Group:
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
            (str(progress.failed), "bold red" if progress.failed else ""),
            ("  skipped ", "dim"),
            (str(progress.skipped), ""),
        )
        if progress.cancelled:
            counts.append_text(
                Text.assemble(("  cancelled ", "dim"), (str(progress.cancelled), ""))
            )
        parts: list[Text | Table] = [grid, counts]
        longest = progress.longest(now)
        if longest is not None and not final:
            node_id, tool, seconds = longest
            parts.append(
                Text.assemble(
                    ("longest running: ", "dim"),
                    (node_id, "bold"),
                    (f" ({tool}) " if _names_other(node_id, tool) else " ", "dim"),
                    (format_seconds(seconds), "cyan"),
                )
            )
        return Group(*parts)

    def update(self, progress: Progress, now: float, final: bool = False) -> None:
        if not self._shown:
            if not (progress.known or progress.started_any):
                return  # nothing to show yet (and nothing at all for a usage error)
            self._shown = True
        self.live.update(self.render(progress, now, final), refresh=True)
