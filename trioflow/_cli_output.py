"""What the command line writes: messages on stderr (styled on a terminal, plain otherwise) and
JSON on stdout.

`rich` is imported only when stderr is a terminal, so a script or a CI log does not pay for it.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, TextIO

from ._convert import converter

__all__ = ["Messages", "Part", "is_terminal", "to_json"]

Part = str | tuple[str, str]
"""Text, or (text, rich style)."""


def is_terminal(stream: TextIO) -> bool:
    """A terminal that can draw a live display (not `TERM=dumb`)."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        return False
    return tty and os.environ.get("TERM", "") != "dumb"


def to_json(value: Any, *, indent: int | None = None) -> str:
    """JSON through trioflow's converter (attrs classes, datetimes, enums); anything else as
    its `str`."""
    return json.dumps(converter.unstructure(value), indent=indent, default=str)


class Messages:
    """Lines on stderr, each made of parts: plain text or (text, style)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.console: Any = None
        if is_terminal(self.stream):
            from rich.console import Console

            self.console = Console(file=self.stream, highlight=False, soft_wrap=True)

    def say(self, *parts: Part) -> None:
        if self.console is not None:
            from rich.text import Text

            self.console.print(Text.assemble(*parts))
        else:
            self.stream.write("".join(p if isinstance(p, str) else p[0] for p in parts) + "\n")
            self.stream.flush()

    def error(self, message: str, hint: str = "", detail: str = "") -> None:
        """`error: message`, then `  hint: ...` and an optional detail (a traceback)."""
        self.say(("error", "bold red"), f": {message}")
        if hint:
            self.say("  ", ("hint", "dim"), f": {hint}")
        if detail:
            self.say((detail.rstrip(), "dim"))
