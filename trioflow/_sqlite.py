"""`SQLiteStore`: the run store in one SQLite file (the standard library's `sqlite3`).

The file is in WAL mode with a busy timeout, so several processes may share it: readers never
block the writer, and writers queue for the file's lock. Each process writes through one
connection, one batched transaction at a time; reads use a connection per thread. A `meta`
table holds the schema version: a file written by another version, a file that is not a
trioflow store, and a truncated or corrupted file are each a `StoreError` saying so, never a
traceback from sqlite.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ._errors import ConfigTypeError, StoreError
from ._records import RunRecord
from ._serialize import Serializer, check_serializer
from ._store import (
    NODE_COLUMNS,
    RUN_COLUMNS,
    Blob,
    NodeRow,
    Op,
    RunInfo,
    RunRow,
    StoredRun,
    run_exists_error,
    run_info,
    run_record,
)

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]

SCHEMA_VERSION = 1
_APP = "trioflow"
# json_group_array is built in from SQLite 3.38 (and aggregate FILTER from 3.30): older
# libraries read a resumed run row by row.
_JSON_AGGREGATES = sqlite3.sqlite_version_info >= (3, 38, 0)
T = TypeVar("T")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, graph TEXT NOT NULL, state TEXT NOT NULL, content_hash TEXT,
    inputs BLOB, inputs_digest TEXT NOT NULL, started_at REAL, finished_at REAL,
    started_wall REAL, finished_wall REAL
);
CREATE TABLE IF NOT EXISTS nodes (
    run_id TEXT NOT NULL, node_id TEXT NOT NULL, seq INTEGER NOT NULL, tool TEXT NOT NULL,
    state TEXT NOT NULL, started_at REAL, finished_at REAL, started_wall REAL,
    finished_wall REAL, attempts INTEGER NOT NULL, executor TEXT NOT NULL,
    cached INTEGER NOT NULL, waited REAL NOT NULL, error TEXT, args_digest TEXT, outputs BLOB,
    PRIMARY KEY (run_id, node_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cache (
    key TEXT PRIMARY KEY, tool TEXT NOT NULL, version TEXT NOT NULL, outputs BLOB NOT NULL,
    stored_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS cache_by_tool ON cache (tool, version);
INSERT OR IGNORE INTO meta VALUES ('app', '{_APP}'), ('schema_version', '{SCHEMA_VERSION}');
"""
_PUT_NODE = f"INSERT OR REPLACE INTO nodes ({NODE_COLUMNS}) VALUES ({', '.join('?' * 16)})"
_PUT_RUN = f"INSERT OR REPLACE INTO runs ({RUN_COLUMNS}) VALUES ({', '.join('?' * 10)})"
_PUT_CACHE = "INSERT OR REPLACE INTO cache VALUES (?, ?, ?, ?, ?)"
# Many plain DONE rows of one run (a "done" op) in one statement: the run's id, epoch and at0
# are bound once (?1-?3), each row binds 8 values, and each step inserts `size` rows — a row
# each would cost a step, its GIL release, and 16 bindings (None ones are slow in sqlite3).
_DONE_SIZES = (256, 16, 1)


def _put_done(size: int) -> str:
    values = ",".join(["(?,?,?,?,?,?,?,?)"] * size)
    return (
        f"INSERT OR REPLACE INTO nodes ({NODE_COLUMNS}) SELECT ?1, column1, column2, column3, "
        "'DONE', column4, column5, ?2 + (column4 - ?3), ?2 + (column5 - ?3), column6, column7, "
        f"0, 0.0, NULL, NULL, column8 FROM (VALUES {values})"
    )


_PUT_DONE = {size: _put_done(size) for size in _DONE_SIZES}
_NODES_OF = f"SELECT {NODE_COLUMNS} FROM nodes WHERE run_id = ? ORDER BY seq"
# What a resume reads, in one scan and one row: the DONE nodes' ids and tools as JSON arrays and
# their outputs as one JSON array text (each stored output is JSON text), so that 100k nodes cost
# a few strings to parse, not 100k row tuples. `nontext` counts outputs that are not text
# (pickled bytes, which this cannot join): the rows are read one by one then. Argument digests
# (graph_fn calls, cached tools; a static graph's nodes have none) are read only if there are,
# in the order the calls ran.
_REUSABLE = "state = 'DONE' AND outputs IS NOT NULL"
_RESUME = f"""
SELECT max(seq), json_group_array(node_id) FILTER (WHERE done),
    json_group_array(tool) FILTER (WHERE done),
    '[' || coalesce(group_concat(outputs, ',') FILTER (WHERE done), '') || ']',
    count(*) FILTER (WHERE done AND typeof(outputs) != 'text'),
    count(args_digest) FILTER (WHERE done)
FROM (
    SELECT seq, node_id, tool, args_digest, outputs, {_REUSABLE} AS done
    FROM nodes WHERE run_id = ?
)
"""
_DIGESTS = (
    "SELECT node_id, args_digest FROM nodes "
    f"WHERE run_id = ? AND {_REUSABLE} AND args_digest IS NOT NULL ORDER BY seq"
)
_RESUME_ROWS = (
    f"SELECT seq, node_id, tool, args_digest, outputs FROM nodes WHERE run_id = ? AND {_REUSABLE}"
)
_MAX_SEQ = "SELECT max(seq) FROM nodes WHERE run_id = ?"
_RUN = f"SELECT {RUN_COLUMNS} FROM runs WHERE run_id = ?"


def _is_locked(exc: sqlite3.DatabaseError) -> bool:
    """Whether SQLite gave up waiting for another connection's lock (not a bad file)."""
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)


def _header_problem(path: Path) -> str | None:
    """What the file's SQLite header shows is wrong with it, if anything: said of a file
    SQLite refused (see `SQLiteStore._open_schema`: it is not a check of its own)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            header = f.read(100)
    except OSError:
        return None  # not a file we can read: SQLite's own error says more
    if size == 0:
        return None  # a new, empty file
    if len(header) < 100 or not header.startswith(b"SQLite format 3\x00"):
        return "it is not an SQLite database"
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    # The in-header size is valid when the change counter matches "version-valid-for".
    if header[24:28] == header[92:96] and pages * page_size > size:
        return f"it is truncated ({size} bytes of {pages * page_size})"
    return None


class SQLiteStore:
    """A run store in one SQLite file; several processes may share it.

    `serializer="json"` (default) stores outputs as tagged JSON; `"pickle"` stores any
    picklable object — read it back only from a file you trust, since unpickling runs code.
    `timeout` is how many seconds a write waits for another process holding the file's lock.
    """

    blocking = True  # file I/O: the run calls `begin` and `write` from a worker thread
    bulk_rows = True  # takes "done" ops (see `_store.Op`)

    def __init__(
        self, path: str | os.PathLike[str], *, serializer: str = "json", timeout: float = 30.0
    ) -> None:
        if not isinstance(path, str | os.PathLike) or str(path) in ("", ":memory:"):
            raise ConfigTypeError(
                f"SQLiteStore(path) takes a file path, got {path!r}; "
                "use trioflow.MemoryStore() for a store in memory"
            )
        self.path = Path(path)
        if self.path.is_dir():
            raise StoreError(
                f"store path {str(self.path)!r} is a directory; give SQLiteStore a file path, "
                f"such as {str(self.path / 'runs.db')!r}"
            )
        self._serializer = check_serializer(serializer)
        self._timeout = float(timeout)
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._writer: sqlite3.Connection | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._guard(self._open_schema)

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    @property
    def serializer(self) -> Serializer:
        return self._serializer

    # -- connections and errors ------------------------------------------------------------

    def _guard(self, fn: Callable[[], T]) -> T:
        """Run `fn`, turning sqlite's errors about the file into a `StoreError`."""
        try:
            return fn()
        except sqlite3.DatabaseError as exc:
            text = str(exc)
            if _is_locked(exc):
                raise StoreError(
                    f"store {str(self.path)!r} stayed locked by another process for "
                    f"{self._timeout}s ({text}); pass SQLiteStore(..., timeout=...) to wait longer"
                ) from None
            raise StoreError(
                f"store {str(self.path)!r} cannot be used: {text}; the file is corrupted, "
                "truncated or not a trioflow store — move it aside (a new store is created) "
                "or restore it from a backup"
            ) from None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False
        )
        try:
            self._use_wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")
        except BaseException:
            conn.close()
            raise
        return conn

    def _use_wal(self, conn: sqlite3.Connection) -> None:
        """Put the file in WAL mode (a no-op once it is).

        SQLite answers a connection that races another one to switch a new file's mode (two
        processes opening a new store at once) with "database is locked" at once, without
        waiting for its busy timeout: retried here, up to the same timeout."""
        deadline = time.monotonic() + self._timeout
        pause = 0.001
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if not _is_locked(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(pause)  # (sync code: the store's callers run it in a thread or at start)
            pause = min(pause * 2, 0.05)

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._write_lock:
            if self._writer is None:
                self._writer = self._connect()
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _open_schema(self) -> None:
        """Open (or create) the schema; a file SQLite refuses is named by what its header shows.

        The header is read only after SQLite refused the file: another process may be
        checkpointing it, and mid-checkpoint page 1 claims pages still in the WAL, so a live
        store read raw looks truncated. SQLite's own snapshot decides; the header explains."""
        try:
            self._read_schema()
        except sqlite3.DatabaseError as exc:
            problem = None if _is_locked(exc) else _header_problem(self.path)
            if problem is None:
                raise
            raise StoreError(
                f"store {str(self.path)!r} cannot be used: {problem}; move it aside (a new "
                "store is created) or restore it from a backup"
            ) from None

    def _read_schema(self) -> None:
        conn = self._reader()
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and "meta" not in tables:
            raise StoreError(
                f"{str(self.path)!r} is an SQLite database but not a trioflow store "
                f"(its tables are {sorted(tables)}); give SQLiteStore another path"
            )
        if "meta" in tables:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            self._check_meta(meta)
            found = conn.execute("PRAGMA quick_check(1)").fetchone()
            if found != ("ok",):  # (SQLite reports what it finds as a row, not an error)
                problem = str(found[0] if found else "no answer").replace("\n", " ")
                raise StoreError(
                    f"store {str(self.path)!r} cannot be used: it is corrupted ({problem}); "
                    "move it aside (a new store is created) or restore it from a backup"
                )
            return
        with self._write_lock:  # idempotent, so racing processes both succeed
            conn.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} COMMIT;")

    def _check_meta(self, meta: dict[str, str]) -> None:
        if meta.get("app") != _APP or "schema_version" not in meta:
            raise StoreError(f"{str(self.path)!r} is not a trioflow store (its meta is {meta})")
        version = meta["schema_version"]
        if version != str(SCHEMA_VERSION):
            newer = version.isdigit() and int(version) > SCHEMA_VERSION
            raise StoreError(
                f"store {str(self.path)!r} has schema version {version}, this trioflow reads "
                f"version {SCHEMA_VERSION}; "
                + (
                    "it was written by a newer trioflow: upgrade trioflow to read it"
                    if newer
                    else "it was written by an older trioflow: export its runs with that "
                    "version, or start a new store"
                )
            )

    def close(self) -> None:
        """Close this thread's and the writer's connections (others close when their thread
        ends). The store may still be used afterwards: connections reopen on demand."""
        with self._write_lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- reading ---------------------------------------------------------------------------

    def runs(self) -> list[RunInfo]:
        """Every stored run, oldest first."""

        def read() -> list[RunRow]:
            query = f"SELECT {RUN_COLUMNS} FROM runs ORDER BY started_wall, rowid"
            return self._reader().execute(query).fetchall()

        return [run_info(row, self._serializer) for row in self._guard(read)]

    def _run_and_nodes(self, run_id: str) -> tuple[RunRow, list[NodeRow]] | None:
        def read() -> tuple[RunRow, list[NodeRow]] | None:
            conn = self._reader()
            conn.execute("BEGIN")  # one snapshot for both reads
            try:
                row = conn.execute(_RUN, (run_id,)).fetchone()
                if row is None:
                    return None
                return row, conn.execute(_NODES_OF, (run_id,)).fetchall()
            finally:
                conn.execute("COMMIT")

        return self._guard(read)

    def load(self, run_id: str) -> RunRecord:
        """The stored `RunRecord` of a run; `KeyError` for an unknown id."""
        found = self._run_and_nodes(run_id)
        if found is None:
            raise KeyError(run_id)
        return run_record(*found)

    def outputs(self, run_id: str) -> dict[str, dict[str, Any]]:
        """Node id → outputs, for every node of the run whose outputs are stored."""
        found = self._run_and_nodes(run_id)
        if found is None:
            raise KeyError(run_id)
        loads = self._serializer.loads
        return {n[1]: loads(n[15]) for n in found[1] if n[15] is not None}

    def cache_get(self, key: str) -> tuple[Blob, float] | None:
        def read() -> tuple[Blob, float] | None:
            query = "SELECT outputs, stored_at FROM cache WHERE key = ?"
            row: tuple[Blob, float] | None = self._reader().execute(query, (key,)).fetchone()
            return row

        return self._guard(read)

    def cache_of(self, tool: str, version: str, limit: int) -> dict[str, tuple[Blob, float]] | None:
        """Every cached call of one tool version, or None when there are more than `limit`."""

        def read() -> dict[str, tuple[Blob, float]] | None:
            query = "SELECT key, outputs, stored_at FROM cache WHERE tool = ? AND version = ?"
            rows = self._reader().execute(query + " LIMIT ?", (tool, version, limit + 1))
            found = {key: (blob, at) for key, blob, at in rows.fetchall()}
            return found if len(found) <= limit else None

        return self._guard(read)

    # -- writing ---------------------------------------------------------------------------

    def begin(self, row: RunRow, *, resume: bool) -> StoredRun | None:
        run_id = row[0]

        def claim() -> StoredRun | None:
            with self._transaction() as conn:
                found = conn.execute(_RUN, (run_id,)).fetchone()
                if found is None:
                    conn.execute(_PUT_RUN, row)
                    return None
                if not resume:
                    raise run_exists_error(run_id, f"store {str(self.path)!r}", found[2])
                return self._stored(conn, found)

        return self._guard(claim)

    def _stored(self, conn: sqlite3.Connection, row: RunRow) -> StoredRun:
        """What a resume of the run of `row` needs (in the caller's transaction)."""
        run_id = row[0]
        if self._serializer.name == "json" and _JSON_AGGREGATES:
            try:
                last, ids, tools, outputs, nontext, keyed = conn.execute(
                    _RESUME, (run_id,)
                ).fetchone()
                digests = {}
                if keyed and not nontext:
                    digests = dict(conn.execute(_DIGESTS, (run_id,)).fetchall())
            except (sqlite3.OperationalError, sqlite3.DataError):
                # A library built without JSON functions, or outputs too big to join into one
                # string (SQLite's length limit): read the rows one by one instead (and if the
                # file is what failed, that read fails too, and says so).
                nontext = True
            if not nontext:
                return StoredRun(
                    row=row,
                    next_seq=0 if last is None else last + 1,
                    ids=json.loads(ids),
                    tools=json.loads(tools),
                    digests=digests,
                    outputs=outputs,
                )
        last = conn.execute(_MAX_SEQ, (run_id,)).fetchone()[0]
        rows = sorted(conn.execute(_RESUME_ROWS, (run_id,)).fetchall())  # by seq
        return StoredRun(
            row=row,
            next_seq=0 if last is None else last + 1,
            ids=[r[1] for r in rows],
            tools=[r[2] for r in rows],
            digests={r[1]: r[3] for r in rows if r[3] is not None},
            outputs=[r[4] for r in rows],
        )

    def write(self, ops: Sequence[Op]) -> None:
        """Apply a batch of rows in one transaction."""
        nodes = [row for kind, row in ops if kind == "node"]
        runs = [row for kind, row in ops if kind == "run"]
        cache = [row for kind, row in ops if kind == "cache"]
        done = [row for kind, row in ops if kind == "done"]

        def apply() -> None:
            with self._transaction() as conn:
                if runs:
                    conn.executemany(_PUT_RUN, runs)
                if nodes:
                    conn.executemany(_PUT_NODE, nodes)
                for payload in done:
                    _write_done(conn, payload)
                if cache:
                    conn.executemany(_PUT_CACHE, cache)

        self._guard(apply)


def _write_done(conn: sqlite3.Connection, payload: tuple[Any, ...]) -> None:
    """A "done" op's rows, `size` rows a statement (fewer when the library allows fewer
    bound values than the largest size needs)."""
    run_id, epoch, at0, columns = payload
    head = (run_id, epoch, at0)
    limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    flat = tuple(itertools.chain.from_iterable(zip(*columns, strict=True)))  # row by row
    n, k = len(columns[0]), 0
    for size in _DONE_SIZES:
        if 3 + 8 * size > limit or n - k < size:
            continue
        stop = k + (n - k) // size * size
        conn.executemany(
            _PUT_DONE[size], [head + flat[8 * j : 8 * (j + size)] for j in range(k, stop, size)]
        )
        k = stop


SQLiteStore.__module__ = "trioflow"
