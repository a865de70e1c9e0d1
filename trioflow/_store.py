"""The run store: what a durable run writes, the `RunStore` protocol, and `MemoryStore`.

A store holds three kinds of rows: one per run (its graph, state, content hash and inputs), one
per node (its record, the digest of its arguments and its serialised outputs) and one per cached
call. Rows are written in batches by one writer (see `_durable`); every method here is a plain,
synchronous call, so the runtime calls the slow ones (`begin`, `write`) from a worker thread.

Values are serialised by the run (`Serializer`), not by the store: `MemoryStore` holds exactly
the text that `SQLiteStore` writes to disk.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import attrs

from ._errors import ConfigError, ConfigTypeError
from ._records import ErrorInfo, NodeRecord, NodeState, RunRecord
from ._serialize import Serializer, check_serializer

__all__ = [
    "CacheRow",
    "DoneColumns",
    "MemoryStore",
    "NodeRow",
    "RunInfo",
    "RunRow",
    "RunStore",
    "StoredRun",
    "check_store",
    "done_rows",
    "run_exists_error",
]

Blob = str | bytes

# One row per node: (run_id, node_id, seq, tool, state, started_at, finished_at, started_wall,
# finished_wall, attempts, executor, cached, waited, error, args_digest, outputs). `*_at` are on
# the Trio clock of the process that ran the node, `*_wall` are POSIX seconds.
NodeRow = tuple[
    str,
    str,
    int,
    str,
    str,
    float | None,
    float | None,
    float | None,
    float | None,
    int,
    str,
    int,
    float,
    str | None,
    str | None,
    Blob | None,
]
NODE_COLUMNS = (
    "run_id, node_id, seq, tool, state, started_at, finished_at, started_wall, finished_wall, "
    "attempts, executor, cached, waited, error, args_digest, outputs"
)
# One row per run: (run_id, graph, state, content_hash, inputs, inputs_digest, started_at,
# finished_at, started_wall, finished_wall).
RunRow = tuple[
    str, str, str, str | None, Blob, str, float | None, float | None, float | None, float | None
]
RUN_COLUMNS = (
    "run_id, graph, state, content_hash, inputs, inputs_digest, started_at, finished_at, "
    "started_wall, finished_wall"
)
# One row per cached call: (key, tool, version, outputs, stored_at as POSIX seconds).
CacheRow = tuple[str, str, str, Blob, float]
# Many plain DONE nodes of one run, as equally long columns: (node_ids, seqs, tools,
# started_ats, finished_ats, attempts, executors, outputs). Their state is DONE, they have no
# error or argument digest, are not cached and did not wait, and their walls are
# `epoch + (at - at0)` of the run's (see `done_rows`).
DoneColumns = tuple[
    list[str], list[int], list[str], list[float], list[float], list[int], list[str], list[Blob]
]
# What the writer sends: ("run", RunRow) | ("node", NodeRow) | ("cache", CacheRow), and, to a
# store whose `bulk_rows` is true, ("done", (run_id, epoch, at0, DoneColumns)).
Op = tuple[str, tuple[Any, ...]]


def done_rows(payload: tuple[Any, ...]) -> list[NodeRow]:
    """The node rows of a `"done"` op's payload."""
    run_id, epoch, at0, columns = payload
    return [
        (run_id, node_id, seq, tool, "DONE", at, end, epoch + (at - at0), epoch + (end - at0),
         attempts, executor, 0, 0.0, None, None, outputs)
        for node_id, seq, tool, at, end, attempts, executor, outputs in zip(*columns, strict=True)
    ]  # fmt: skip


@attrs.frozen
class RunInfo:
    """One stored run, as `store.runs()` lists it.

    `state` is `RUNNING` while the run is in progress (or when its process died), else the
    run's outcome (`DONE`, `FAILED`, `CANCELLED`). `started_at`/`finished_at` are UTC datetimes.
    """

    run_id: str
    graph: str
    state: NodeState
    content_hash: str | None
    inputs: dict[str, Any]
    started_at: dt.datetime | None
    finished_at: dt.datetime | None


RunInfo.__module__ = "trioflow"


@attrs.frozen
class StoredRun:
    """What resuming a run needs from the store: its row, the next free `seq`, and its DONE
    nodes that have outputs, as columns (`ids`, `tools`, `outputs`, in any one order).

    `outputs` holds one blob per node, or — from a JSON store, read in one query — all of them
    as one JSON array text, which the run parses at once, only if it reuses anything.
    `digests` maps those of the nodes that have an argument digest to it, in the order they
    ran (replay matches equal calls by occurrence).
    """

    row: RunRow
    next_seq: int
    ids: list[str]
    tools: list[str]
    digests: dict[str, str]
    outputs: list[Blob] | str

    @classmethod
    def of_rows(cls, row: RunRow, nodes: Iterable[NodeRow]) -> StoredRun:
        """The stored run of a run row and its node rows (in any order)."""
        nodes = sorted(nodes, key=lambda n: n[2])
        done = [n for n in nodes if n[4] == "DONE" and n[15] is not None]
        return cls(
            row=row,
            next_seq=nodes[-1][2] + 1 if nodes else 0,
            ids=[n[1] for n in done],
            tools=[n[3] for n in done],
            digests={n[1]: n[14] for n in done if n[14] is not None},
            outputs=[n[15] for n in done],  # type: ignore[misc]  # not None: filtered above
        )

    @property
    def graph(self) -> str:
        return self.row[1]

    @property
    def content_hash(self) -> str | None:
        return self.row[3]

    @property
    def inputs(self) -> Blob:
        return self.row[4]

    @property
    def inputs_digest(self) -> str:
        return self.row[5]


@runtime_checkable
class RunStore(Protocol):
    """Where durable runs persist: `trioflow.SQLiteStore` and `trioflow.MemoryStore`.

    `runs()` and `load()` are for people and tools; the other methods are what a run calls,
    `begin` and `write` from a worker thread (inline when the store sets `blocking = False`),
    `cache_get` on the event loop (it must be fast).
    """

    @property
    def serializer(self) -> Serializer:
        """How outputs and inputs are serialised for this store."""
        ...

    def runs(self) -> list[RunInfo]:
        """Every stored run, oldest first."""
        ...

    def load(self, run_id: str) -> RunRecord:
        """The stored record of a run; `KeyError` for an unknown id."""
        ...

    def outputs(self, run_id: str) -> dict[str, dict[str, Any]]:
        """Node id → outputs, for every node of the run whose outputs are stored."""
        ...

    def begin(self, row: RunRow, *, resume: bool) -> StoredRun | None:
        """Claim `row`'s run id: store the row and return None for a new id; return the stored
        run to resume when `resume` is true; raise `ConfigError` for a reused id otherwise."""
        ...

    def write(self, ops: Sequence[Op]) -> None:
        """Apply a batch of run, node and cache rows in one transaction."""
        ...

    def cache_get(self, key: str) -> tuple[Blob, float] | None:
        """A cached call's serialised outputs and when they were stored (POSIX seconds)."""
        ...

    def cache_of(self, tool: str, version: str, limit: int) -> dict[str, tuple[Blob, float]] | None:
        """Every cached call of one tool version (key → outputs, stored at), or None when there
        are more than `limit`: a run reads them once instead of one row per call."""
        ...


RunStore.__module__ = "trioflow"


def run_exists_error(run_id: str, where: str, state: str) -> ConfigError:
    return ConfigError(
        f"run id {run_id!r} already exists in {where} (state {state}); pass resume=True to "
        "finish it, or choose a new run_id"
    )


def _wall(seconds: float | None) -> dt.datetime | None:
    """A stored wall-clock time (POSIX seconds) as a UTC datetime."""
    return None if seconds is None else dt.datetime.fromtimestamp(seconds, dt.UTC)


_RECORD_FIELDS = frozenset(f.name for f in attrs.fields(NodeRecord))
_RUN_FIELDS = frozenset(f.name for f in attrs.fields(RunRecord))


def node_record(row: NodeRow) -> NodeRecord:
    """The `NodeRecord` of a stored node row."""
    error = None if row[13] is None else ErrorInfo(**json.loads(row[13]))
    fields: dict[str, Any] = {
        "tool": row[3],
        "state": NodeState(row[4]),
        "started_at": row[5],
        "finished_at": row[6],
        "started_wall": _wall(row[7]),
        "finished_wall": _wall(row[8]),
        "attempts": row[9],
        "executor": row[10],
        "cached": bool(row[11]),
        "waited": row[12],
        "error": error,
    }
    return NodeRecord(**{k: v for k, v in fields.items() if k in _RECORD_FIELDS})


def run_record(row: RunRow, nodes: Sequence[NodeRow]) -> RunRecord:
    """The `RunRecord` of a stored run row and its node rows (in seq order)."""
    fields: dict[str, Any] = {
        "run_id": row[0],
        "graph_id": row[1],
        "nodes": {n[1]: node_record(n) for n in nodes},
        "started_at": row[6],
        "finished_at": row[7],
        "started_wall": _wall(row[8]),
        "finished_wall": _wall(row[9]),
    }
    return RunRecord(**{k: v for k, v in fields.items() if k in _RUN_FIELDS})


def run_info(row: RunRow, serializer: Serializer) -> RunInfo:
    return RunInfo(
        run_id=row[0],
        graph=row[1],
        state=NodeState(row[2]),
        content_hash=row[3],
        inputs=serializer.loads(row[4]),
        started_at=_wall(row[8]),
        finished_at=_wall(row[9]),
    )


class MemoryStore:
    """A run store in memory, for tests: it serialises exactly as `SQLiteStore` does.

    Lives as long as the object; several runs (and threads) may use one instance.
    """

    blocking = False  # every method is quick and in memory: the run calls them inline
    bulk_rows = True  # takes "done" ops (see `Op`)

    def __init__(self, *, serializer: str = "json") -> None:
        self._serializer = check_serializer(serializer)
        self._lock = threading.Lock()
        self._runs: dict[str, RunRow] = {}
        self._nodes: dict[str, dict[str, NodeRow]] = {}
        self._cache: dict[str, CacheRow] = {}

    def __repr__(self) -> str:
        return f"MemoryStore(runs={len(self._runs)})"

    @property
    def serializer(self) -> Serializer:
        return self._serializer

    def runs(self) -> list[RunInfo]:
        with self._lock:
            rows = list(self._runs.values())
        return [run_info(row, self._serializer) for row in rows]

    def _nodes_of(self, run_id: str) -> list[NodeRow]:
        with self._lock:
            if run_id not in self._runs:
                raise KeyError(run_id)
            return sorted(self._nodes.get(run_id, {}).values(), key=lambda n: n[2])

    def load(self, run_id: str) -> RunRecord:
        nodes = self._nodes_of(run_id)
        return run_record(self._runs[run_id], nodes)

    def outputs(self, run_id: str) -> dict[str, dict[str, Any]]:
        return {
            n[1]: self._serializer.loads(n[15]) for n in self._nodes_of(run_id) if n[15] is not None
        }

    def begin(self, row: RunRow, *, resume: bool) -> StoredRun | None:
        run_id = row[0]
        with self._lock:
            found = self._runs.get(run_id)
            if found is None:
                self._runs[run_id] = row
                return None
            if not resume:
                raise run_exists_error(run_id, repr(self), found[2])
            return StoredRun.of_rows(found, self._nodes.get(run_id, {}).values())

    def write(self, ops: Sequence[Op]) -> None:
        with self._lock:
            for kind, row in ops:
                if kind == "node":
                    self._nodes.setdefault(row[0], {})[row[1]] = row
                elif kind == "done":
                    nodes = self._nodes.setdefault(row[0], {})
                    for node_row in done_rows(row):
                        nodes[node_row[1]] = node_row
                elif kind == "run":
                    self._runs[row[0]] = row
                else:
                    self._cache[row[0]] = row

    def cache_get(self, key: str) -> tuple[Blob, float] | None:
        row = self._cache.get(key)
        return None if row is None else (row[3], row[4])

    def cache_of(self, tool: str, version: str, limit: int) -> dict[str, tuple[Blob, float]] | None:
        with self._lock:
            found = {k: (r[3], r[4]) for k, r in self._cache.items() if r[1:3] == (tool, version)}
        return found if len(found) <= limit else None


MemoryStore.__module__ = "trioflow"


def check_store(store: object) -> RunStore | None:
    """`store=`: None or a `RunStore`."""
    if store is None:
        return None
    if not isinstance(store, RunStore):
        raise ConfigTypeError(
            f"store must be a trioflow.SQLiteStore, trioflow.MemoryStore or another "
            f"trioflow.RunStore, got {store!r}"
        )
    return store
