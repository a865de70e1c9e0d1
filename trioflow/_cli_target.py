"""What the command line runs: a graph named by `file.py:name` or `package.module:name`, and its
input values from `--input NAME=VALUE` and `--inputs FILE.json`.

Everything here fails with `UsageError` (exit code 2) and a one-line hint, before anything runs.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from ._graph_fn import GraphFn
from ._graphify import Graphify

__all__ = ["UsageError", "load_inputs", "load_target", "parse_value"]


class UsageError(Exception):
    """Bad usage of the command line: a message and a one-line hint; exit code 2."""

    def __init__(self, message: str, hint: str = "") -> None:
        self.message = message
        self.hint = hint
        super().__init__(message)


def parse_value(text: str, what: str) -> Any:
    """A JSON value; text that is not JSON and does not look like it (`{`, `[`, `"`) is a string."""
    try:
        return json.loads(text)
    except ValueError as exc:
        if text.lstrip()[:1] in ("{", "[", '"'):
            raise UsageError(
                f"{what}: bad JSON {text!r} ({exc})",
                'quote the value for the shell, e.g. --input \'items=["a", "b"]\'',
            ) from None
        return text


def load_inputs(pairs: Sequence[str], inputs_file: str | None) -> dict[str, Any]:
    """The run's inputs: `--inputs FILE.json` first, then each `--input NAME=VALUE` over it."""
    inputs: dict[str, Any] = {}
    if inputs_file is not None:
        try:
            text = Path(inputs_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(
                f"--inputs {inputs_file}: cannot read it ({exc.strerror or exc})",
                "give the path of a JSON file holding an object of input values",
            ) from None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise UsageError(
                f"--inputs {inputs_file}: bad JSON ({exc})",
                'the file must hold one JSON object, e.g. {"items": ["a", "b"]}',
            ) from None
        if not isinstance(data, dict):
            raise UsageError(
                f"--inputs {inputs_file}: expected a JSON object, got {type(data).__name__}",
                'the file must hold one JSON object, e.g. {"items": ["a", "b"]}',
            )
        inputs.update(data)
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise UsageError(
                f"--input {pair!r}: expected NAME=VALUE",
                'e.g. --input n=3 or --input \'items=["a", "b"]\'',
            )
        inputs[name] = parse_value(value, f"--input {name}")
    return inputs


def _split(target: str) -> tuple[str, str]:
    where, sep, name = target.rpartition(":")
    if not sep or not where or not name:
        raise UsageError(
            f"bad target {target!r}: expected path/to/file.py:name or package.module:name",
            "e.g. trioflow run examples/wordcount.py:wordcount",
        )
    return where, name


def _is_file(where: str) -> bool:
    return where.endswith(".py") or "/" in where or os.sep in where


def _import_file(where: str) -> ModuleType:
    path = Path(where).resolve()
    if not path.is_file():
        raise UsageError(
            f"no such file: {where}",
            "TARGET is path/to/file.py:name (relative to the working directory)",
        )
    # As `python file.py` would: the file's directory first on the import path, so the file
    # can import its neighbours.
    directory = str(path.parent)
    if sys.path[:1] != [directory]:
        sys.path.insert(0, directory)
    name = path.stem if path.name != "__init__.py" else path.parent.name
    existing = sys.modules.get(name)
    if existing is not None:
        if Path(getattr(existing, "__file__", "") or "").resolve() == path:
            return existing
        raise UsageError(
            f"{where}: its module name {name!r} clashes with the module {existing.__name__!r} "
            "already imported",
            "rename the file, or name it as package.module:name",
        )
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:  # pragma: no cover - a .py file always has a spec
        raise UsageError(f"cannot import {where}", "TARGET is path/to/file.py:name")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # registered first, so tools defined in it can be imported back
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _import_module(where: str) -> ModuleType:
    cwd = os.getcwd()
    if cwd not in sys.path[:1]:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (exc.name == where or where.startswith(exc.name + ".")):
            raise UsageError(
                f"no module named {exc.name!r} (from the working directory {cwd})",
                "TARGET is package.module:name importable from here, or path/to/file.py:name",
            ) from None
        raise


def load_target(target: str) -> GraphFn | Graphify:
    """Import the graph that `target` names; `UsageError` for anything that is not one."""
    where, name = _split(target)
    try:
        module = _import_file(where) if _is_file(where) else _import_module(where)
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(
            f"importing {where} failed: {type(exc).__name__}: {exc}",
            "run the file with python to see the full traceback",
        ) from exc
    obj: Any = module
    for part in name.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            graphs = sorted(k for k, v in vars(module).items() if isinstance(v, GraphFn | Graphify))
            raise UsageError(
                f"{where} has no {name!r}",
                f"graphs defined there: {', '.join(graphs)}" if graphs else "no graphs there",
            ) from None
    if not isinstance(obj, GraphFn | Graphify):
        raise UsageError(
            f"{target} is a {type(obj).__name__}, not a graph",
            "decorate it with @trioflow.graph_fn or @trioflow.graphify",
        )
    return obj
