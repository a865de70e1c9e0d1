"""`trioflow run TARGET ...`: run a graph with live progress, store it, and map the outcome to an
exit code (0 done, 1 a node failed or the run timed out, 2 bad usage, 130 Ctrl-C).

The run happens in one `trio.run` next to two helper tasks: the progress ticker and a SIGINT
watcher. The first Ctrl-C cancels the run's scope (tools are cancelled at their next checkpoint,
the store writes its last records); a second one raises `KeyboardInterrupt` at once.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import shlex
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import trio

from ._cli_output import Messages, Part, is_terminal, to_json
from ._cli_target import UsageError, load_inputs, load_target
from ._errors import (
    ConfigError,
    GraphBuildError,
    NodeFailed,
    ResumeMismatch,
    RunCancelled,
    TrioflowError,
    is_run_failure,
)
from ._progress import Display, PlainDisplay, Progress, format_seconds, tick
from ._records import ErrorInfo, NodeState, RunRecord, RunResult

__all__ = ["DEFAULT_STORE", "add_input_arguments", "add_run_arguments", "command_run"]

DEFAULT_STORE = os.path.join(".trioflow", "runs.db")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _concurrency(text: str) -> float:
    if text.lower() in ("inf", "unlimited", "none"):
        return math.inf
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer or 'inf', got {text!r}"
        ) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'inf', got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input",
        "-i",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an input value: JSON, or a plain string (repeatable; overrides --inputs)",
    )
    parser.add_argument(
        "--inputs", metavar="FILE.json", help="a JSON object of input values (name -> value)"
    )


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "target", metavar="TARGET", help="path/to/file.py:name or package.module:name"
    )
    add_input_arguments(parser)
    parser.add_argument(
        "--max-concurrency",
        type=_concurrency,
        metavar="N",
        help="how many nodes may run at once ('inf' for no cap; default: the graph's, else 4)",
    )
    parser.add_argument(
        "--on-error",
        choices=("fail_fast", "skip_dependents", "collect"),
        default="fail_fast",
        help="what a node failure does to the rest of the run (default: fail_fast)",
    )
    parser.add_argument(
        "--timeout", type=_seconds, metavar="S", help="cancel the run after S seconds"
    )
    parser.add_argument(
        "--store", metavar="PATH", help=f"the SQLite run store (default: {DEFAULT_STORE})"
    )
    parser.add_argument("--no-store", action="store_true", help="do not store the run")
    parser.add_argument("--run-id", metavar="ID", help="the run's id (default: a new one)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="finish the stored run --run-id: nodes done there are not run again",
    )
    parser.add_argument(
        "--json", action="store_true", help="print exactly one JSON document on stdout"
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="tracebacks of failed nodes")


# -- running ----------------------------------------------------------------------------------


@attrs.define(eq=False)
class Outcome:
    """How a run ended: a result, an error, or a Ctrl-C (with the nodes it cancelled)."""

    result: RunResult | None = None
    error: Exception | None = None
    interrupted: bool = False
    cancelled: list[str] = attrs.field(factory=list)


async def _watch_sigint(
    signals: Any, run_scope: trio.CancelScope, outcome: Outcome, progress: Progress
) -> None:
    async for _ in signals:
        if outcome.interrupted:
            raise KeyboardInterrupt  # a second Ctrl-C: stop waiting for a clean cancel
        outcome.interrupted = True
        outcome.cancelled = [node_id for node_id in progress.running if node_id is not None]
        run_scope.cancel(reason="Ctrl-C")


async def _drive(
    graph: Any,
    inputs: dict[str, Any],
    options: dict[str, Any],
    progress: Progress,
    display: Display,
) -> Outcome:
    from ._runtime import run_async

    outcome = Outcome()
    # Our own SIGINT handling: a Ctrl-C becomes a cancellation of the run, so every node is
    # cancelled at a checkpoint and the store sees the run end, instead of a KeyboardInterrupt
    # landing at an arbitrary point (possibly inside the store's writer).
    with trio.open_signal_receiver(signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            run_scope = trio.CancelScope()
            nursery.start_soon(_watch_sigint, signals, run_scope, outcome, progress)
            nursery.start_soon(tick, display, progress)
            with run_scope:
                try:
                    outcome.result = await run_async(
                        graph, inputs, record=True, on_event=progress.listen, **options
                    )
                except Exception as exc:
                    outcome.error = exc
            nursery.cancel_scope.cancel(reason="run finished")
    display.update(progress, trio.current_time(), final=True)
    return outcome


def _new_run_id(graph_name: str) -> str:
    return f"{graph_name}-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def _prog() -> str:
    main = os.path.basename(sys.argv[0]) if sys.argv else ""
    return "python -m trioflow" if main == "__main__.py" else "trioflow"


def resume_command(args: argparse.Namespace, run_id: str) -> str:
    """The command that finishes this run: the same arguments plus `--run-id ID --resume`."""
    parts = [args.target]
    for pair in args.input:
        parts += ["--input", pair]
    if args.inputs is not None:
        parts += ["--inputs", args.inputs]
    if args.max_concurrency is not None:
        value = args.max_concurrency
        parts += ["--max-concurrency", "inf" if value == math.inf else str(int(value))]
    if args.on_error != "fail_fast":
        parts += ["--on-error", args.on_error]
    if args.timeout is not None:
        parts += ["--timeout", str(args.timeout)]
    if args.store is not None:
        parts += ["--store", args.store]
    parts += ["--run-id", run_id, "--resume"]
    if args.json:
        parts.append("--json")
    if args.verbose:
        parts.append("--verbose")
    return f"{_prog()} run {shlex.join(parts)}"


def _open_store(args: argparse.Namespace) -> tuple[Any, str | None]:
    if args.no_store:
        if args.store is not None:
            raise UsageError("--store and --no-store contradict each other", "give one of them")
        if args.resume:
            raise UsageError("--resume needs the run store", "drop --no-store")
        return None, None
    from . import SQLiteStore

    path = args.store or DEFAULT_STORE
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        return SQLiteStore(path), path
    except (OSError, TrioflowError) as exc:
        raise UsageError(f"cannot open the run store {path}: {exc}", "give --store PATH") from exc


def _usage_hint(exc: BaseException, args: argparse.Namespace) -> tuple[str, str]:
    """The one-line message and hint for an error raised before any node started."""
    if isinstance(exc, GraphBuildError):
        first = str(exc).splitlines()[0]
        return f"building the graph failed: {first}", exc.hint or "see trioflow graph --help"
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    name = type(exc).__name__
    if isinstance(exc, ResumeMismatch):
        return message, "start a new run: drop --resume or pass another --run-id"
    if "input" in message:
        return message, "pass inputs with --input NAME=VALUE or --inputs FILE.json"
    if args.run_id is not None and "run id" in message.replace("_", " ") and not args.resume:
        return message, "add --resume to finish that run, or pass another --run-id"
    if args.no_store and "store" in message:
        return message, "drop --no-store: the run needs the run store"
    if isinstance(exc, TrioflowError):
        return message, "see trioflow run --help"
    return f"{name}: {message}", "the error came before any node started; --verbose for more"


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _record_of(exc: BaseException) -> RunRecord | None:
    for leaf in _leaves(exc):
        record = getattr(leaf, "record", None)
        if isinstance(record, RunRecord):
            return record
    return None


def _failures(record: RunRecord | None, exc: BaseException | None) -> dict[str, ErrorInfo]:
    """Node id → original error, for every failed node (the record's, then the exception's)."""
    failures: dict[str, ErrorInfo] = {}
    if record is not None:
        for node_id, node in record.nodes.items():
            if node.state is NodeState.FAILED and node.error is not None:
                failures[node_id] = node.error
    if exc is not None:
        for leaf in _leaves(exc):
            if isinstance(leaf, NodeFailed) and leaf.node_id not in failures:
                failures[leaf.node_id] = ErrorInfo.from_exception(leaf.__cause__ or leaf)
    return failures


def _cancelled(record: RunRecord | None) -> tuple[list[str], int]:
    """Nodes cancelled while running, and how many were cancelled before they started."""
    running: list[str] = []
    pending = 0
    if record is not None:
        for node_id, node in record.nodes.items():
            if node.state is NodeState.CANCELLED:
                if node.started_at is not None:
                    running.append(node_id)
                else:
                    pending += 1
    return running, pending


def _errors_document(failures: dict[str, ErrorInfo], cancelled: dict[str, str]) -> str:
    errors = {k: {"type": e.type, "message": e.message} for k, e in failures.items()}
    for node_id, why in cancelled.items():
        errors.setdefault(node_id, {"type": "Cancelled", "message": why})
    return json.dumps({"errors": errors})


def _usage_document(kind: str, message: str, hint: str) -> str:
    """--json for bad usage: no node ran, so one `error` instead of per-node `errors`."""
    return json.dumps({"error": {"type": kind, "message": message, "hint": hint}})


def _print_outputs(outputs: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(to_json(outputs))
    else:
        for name, value in outputs.items():
            print(f"{name} = {to_json(value)}")
    sys.stdout.flush()


def _show_failures(out: Messages, failures: dict[str, ErrorInfo], verbose: bool) -> None:
    for node_id, error in failures.items():
        out.say("  ", (node_id or "run", "bold"), ": ", (error.type, "red"), f": {error.message}")
        if verbose and error.traceback:
            out.say((error.traceback.rstrip(), "dim"))


def _traceback(exc: BaseException | None) -> str:
    if exc is None:
        return ""
    import traceback

    return "".join(traceback.format_exception(exc))


def command_run(args: argparse.Namespace) -> int:
    out = Messages()
    try:
        graph = load_target(args.target)
        inputs = load_inputs(args.input, args.inputs)
        try:
            graph.check_inputs(inputs)
        except (ConfigError, TypeError) as exc:
            hint = "pass inputs with --input NAME=VALUE or --inputs FILE.json"
            raise UsageError(str(exc), hint) from exc
        if args.resume and args.run_id is None:
            raise UsageError(
                "--resume needs --run-id: the id of the stored run to finish",
                "list stored runs with: trioflow runs list",
            )
        store, store_path = _open_store(args)
    except UsageError as exc:
        out.error(exc.message, exc.hint, _traceback(exc.__cause__) if args.verbose else "")
        if args.json:
            print(_usage_document("UsageError", exc.message, exc.hint))
        return EXIT_USAGE

    run_id = args.run_id or _new_run_id(graph.name)
    options: dict[str, Any] = {
        "max_concurrency": args.max_concurrency,
        "on_error": args.on_error,
        "timeout": args.timeout,
        "run_id": run_id,
    }
    if store is not None:
        options["store"] = store
        options["resume"] = args.resume
    progress = Progress()
    display: Display
    began = time.perf_counter()
    try:
        if out.console is not None and is_terminal(sys.stderr):
            from ._live import LiveDisplay

            with LiveDisplay(out.console, graph.name) as live:
                outcome = trio.run(_drive, graph, inputs, options, progress, live)
        else:
            stored = f" · store {store_path}" if store_path else ""
            display = PlainDisplay(sys.stderr)
            display.header(f"trioflow: run {run_id} of {graph.name}{stored}")
            outcome = trio.run(_drive, graph, inputs, options, progress, display)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt) or (
            isinstance(exc, BaseExceptionGroup) and exc.subgroup(KeyboardInterrupt) is not None
        ):
            out.say(("interrupted twice", "bold red"), ": stopped without waiting for the run")
            if store_path:
                out.say(f"finish the run with:\n  {resume_command(args, run_id)}")
            return EXIT_INTERRUPTED
        raise
    finally:
        close = getattr(store, "close", None)
        if callable(close):
            close()
    elapsed = time.perf_counter() - began
    report = _Report(out, args, graph.name, run_id, store_path, progress, elapsed)
    return report.exit_code(outcome)


@attrs.define(eq=False)
class _Report:
    """Prints how a run ended and picks the exit code."""

    out: Messages
    args: argparse.Namespace
    graph_name: str
    run_id: str
    store_path: str | None
    progress: Progress
    seconds: float

    def _show_command(self) -> str:
        store = self.args.store
        return f"trioflow runs show {shlex.quote(self.run_id)}" + (
            f" --store {shlex.quote(store)}" if store else ""
        )

    def exit_code(self, outcome: Outcome) -> int:
        args, out = self.args, self.out
        if outcome.interrupted and (outcome.result is None or outcome.error is not None):
            return self._interrupted(outcome)
        error = outcome.error
        if error is not None and not self.progress.started_any and not is_run_failure(error):
            message, hint = _usage_hint(error, args)
            out.error(message, hint, _traceback(error) if args.verbose else "")
            if args.json:
                print(_usage_document(type(error).__name__, message, hint))
            return EXIT_USAGE

        result = outcome.result
        record = result.record if result is not None else _record_of(error) if error else None
        failures = _failures(record, error)
        if result is not None:
            timed_out = any(n.state is NodeState.CANCELLED for n in result.record.nodes.values())
        else:
            timed_out = isinstance(error, RunCancelled)
        if error is None and not failures and not timed_out:
            assert result is not None
            return self._done(result)
        if error is not None and not failures and not timed_out:
            # Something other than a node failure after nodes started: report it as it is.
            failures = {"": ErrorInfo.from_exception(error)}
        running, pending = _cancelled(record) if timed_out else ([], 0)
        if args.json:
            why = f"cancelled: the run timed out after {args.timeout}s"
            print(_errors_document(failures, dict.fromkeys(running, why)))
        elapsed = format_seconds(self.seconds)
        if failures:
            n = len(failures)
            out.say(
                ("failed", "bold red"),
                f": {n} node{'s' * (n != 1)} of {self.graph_name} failed "
                f"(run {self.run_id}, {elapsed})",
            )
            _show_failures(out, failures, args.verbose)
            if not args.verbose:
                out.say(("  (--verbose shows the tracebacks)", "dim"))
        if timed_out:
            names = ", ".join(running) or "none was running"
            more = f" (and {pending} that had not started)" if pending else ""
            out.say(
                ("timed out", "bold red"),
                f": {self.graph_name} hit --timeout {args.timeout}s after {elapsed}; "
                f"cancelled while running: {names}{more}",
            )
        if self.store_path:
            out.say(("inspect it: ", "dim"), self._show_command())
            out.say(("finish it:  ", "dim"), resume_command(args, self.run_id))
        return EXIT_FAILED

    def _done(self, result: RunResult) -> int:
        _print_outputs(result.outputs, self.args.json)
        n = self.progress.known
        parts: list[Part] = [
            ("done", "bold green"),
            f": {self.graph_name} ran {n} node{'s' * (n != 1)}",
        ]
        reused = 0
        if self.store_path:  # only a stored run can reuse outputs (the record is built lazily)
            nodes = result.record.nodes.values()
            reused = sum(1 for r in nodes if r.state is NodeState.DONE and r.attempts == 0)
        if reused:
            parts.append(f" ({reused} reused from the store)")
        parts.append(f" in {format_seconds(self.seconds)} · run {self.run_id}")
        if self.store_path:
            parts.append(f" · {self._show_command()}")
        self.out.say(*parts)
        return EXIT_OK

    def _interrupted(self, outcome: Outcome) -> int:
        args, out = self.args, self.out
        cancelled = outcome.cancelled
        if args.json:
            print(_errors_document({}, dict.fromkeys(cancelled, "cancelled by Ctrl-C")))
        names = ", ".join(cancelled) if cancelled else "none was running"
        out.say(
            ("interrupted", "bold yellow"),
            f": run {self.run_id} cancelled after {format_seconds(self.seconds)}; "
            f"{self.progress.done} nodes done, cancelled while running: {names}",
        )
        if self.store_path:
            out.say("finish the run with:")
            out.say(f"  {resume_command(args, self.run_id)}")
        else:
            out.say("not stored (--no-store): the run cannot be resumed")
        return EXIT_INTERRUPTED
