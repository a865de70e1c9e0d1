"""The run stores on their own: serialisation, rows, files shared by processes, bad files."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import os
import pathlib
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from typing import Any, NamedTuple

import attrs
import pytest
from hypothesis import given, strategies as st

import trioflow
from trioflow._serialize import Serializer, Unserialisable, digest, encode
from trioflow._sqlite import SCHEMA_VERSION
from trioflow._store import NodeRow, RunRow

ROOT = pathlib.Path(__file__).parent.parent


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@attrs.frozen
class Point:
    x: int
    y: float
    label: Any = None  # an untyped field: its value's own type must survive


@attrs.define
class Box:
    _items: list[Point]
    color: Color = Color.RED


@dataclasses.dataclass(frozen=True)
class Reading:
    at: dt.datetime
    value: decimal.Decimal
    tags: tuple[str, ...] = ()


class Pair(NamedTuple):
    left: int
    right: str


def _roundtrip(serializer: Serializer, value: dict[str, Any]) -> dict[str, Any]:
    return serializer.loads(serializer.dumps(value))


# -- serialisation ----------------------------------------------------------------------------


def test_outputs_structure_back_to_the_values_the_tool_returned() -> None:
    when = dt.datetime(2026, 12, 3, 7, 0, tzinfo=dt.UTC)
    value = {
        "point": Point(1, 2.5, label=when),
        "box": Box([Point(0, 0.0), Point(3, 1.5, label=(1, "a"))], color=Color.BLUE),
        "reading": Reading(when, decimal.Decimal("1.10"), tags=("a", "b")),
        "pair": Pair(4, "four"),
        "level": Level.HIGH,
        "nested": {1: [{"a", "b"}, frozenset({2})], "x": (None, b"\x00\xff")},
        "misc": [dt.date(2026, 1, 2), dt.time(3, 4), dt.timedelta(hours=5), uuid.UUID(int=7)],
        "path": pathlib.Path("/tmp/x"),
        "tricky": {"$t": "not a tag", "$v": 1},
    }
    back = _roundtrip(Serializer("json"), value)
    assert back == value
    assert type(back["box"]) is Box and type(back["box"]._items[1].label) is tuple
    assert type(back["point"].label) is dt.datetime
    assert type(back["level"]) is Level and type(back["pair"]) is Pair


datetimes = st.datetimes().map(lambda d: d.replace(fold=0))  # isoformat has no fold
scalars = st.none() | st.booleans() | st.integers() | st.text() | st.floats(allow_nan=False)
hashables = scalars | st.tuples(scalars, scalars) | datetimes
values = st.recursive(
    scalars | datetimes | st.sampled_from(Color) | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=4), inner, max_size=4)
        | st.dictionaries(hashables, inner, max_size=3)
        | st.frozensets(hashables, max_size=4)
        | st.builds(Point, st.integers(), st.floats(allow_nan=False), inner)
    ),
    max_leaves=12,
)


@given(st.dictionaries(st.text(min_size=1, max_size=5), values, max_size=4))
def test_every_encodable_value_roundtrips_with_its_types(value: dict[str, Any]) -> None:
    back = _roundtrip(Serializer("json"), value)
    assert back == value
    assert _types(back) == _types(value)


def _types(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return (type(value), [_types(v) for v in value])
    if isinstance(value, dict):
        return (dict, sorted((repr(k), _types(v)) for k, v in value.items()))
    if isinstance(value, Point):
        return (Point, _types(value.label))
    return type(value)


tricky_text = st.text(max_size=4) | st.sampled_from(["$t", "$v", '"$t"', "\\", '$t"'])


@given(
    st.lists(
        st.dictionaries(tricky_text, values | tricky_text | st.just({"$t": 1}), max_size=3),
        max_size=4,
    )
)
def test_stored_values_read_back_at_once_as_one_array(found: list[dict[str, Any]]) -> None:
    json_ = Serializer("json")
    blobs = [json_.dumps(value) for value in found]
    text = "[" + ",".join(blobs) + "]"  # what SQLiteStore reads for a resume, in one query
    back = json_.loads_array(text, len(found))  # type: ignore[arg-type]
    assert back == found == json_.loads_many(blobs)  # type: ignore[arg-type]
    assert [_types(v) for v in back] == [_types(v) for v in found]
    with pytest.raises(ValueError, match="array of"):
        json_.loads_array(text, len(found) + 1)


def test_a_stored_array_that_is_not_one_dict_per_value_is_a_value_error() -> None:
    json_ = Serializer("json")
    with pytest.raises(ValueError, match="not a dict of names"):
        json_.loads_array('[{"a":1},[2]]', 2)
    with pytest.raises(ValueError):
        json_.loads_array('[{"a":1},{"b":', 2)


@given(st.dictionaries(st.text(max_size=3), values, max_size=4))
def test_digest_is_canonical_for_equal_values(value: dict[str, Any]) -> None:
    reordered = dict(reversed(list(value.items())))
    assert digest(reordered) == digest(value)


def test_digest_tells_apart_values_json_would_confuse() -> None:
    assert digest({"x": 1}) != digest({"x": 1.0})
    assert digest({"x": 1}) != digest({"x": True})
    assert digest({"x": (1, 2)}) != digest({"x": [1, 2]})
    assert digest({"x": {1: "a"}}) != digest({"x": {"1": "a"}})
    assert digest({"x": {1, 2, 3}}) == digest({"x": {3, 2, 1}})


def test_an_unserialisable_value_names_its_type_and_where_it_is() -> None:
    class Local:
        pass

    with pytest.raises(Unserialisable) as info:
        encode({"rows": [1, object()]}, "output 'rows'")
    assert info.value.type_name == "builtins.object"
    assert "[1]" in str(info.value)

    @attrs.frozen
    class Inner:
        x: int

    with pytest.raises(Unserialisable, match="define it at module level"):
        encode(Inner(1))
    with pytest.raises(Unserialisable, match="Local"):
        encode(Local())


def test_pickle_serializer_stores_arbitrary_objects_and_json_refuses_to_read_them() -> None:
    value = {"out": Reading(dt.datetime(2026, 1, 1), decimal.Decimal(1)), "fn": len}
    blob = Serializer("pickle").dumps(value)
    assert isinstance(blob, bytes)
    assert Serializer("pickle").loads(blob) == value
    with pytest.raises(trioflow.ConfigError, match="serializer='pickle'"):
        Serializer("json").loads(blob)


def test_bad_serializer_is_a_config_error() -> None:
    with pytest.raises(trioflow.ConfigError, match="'json'"):
        trioflow.MemoryStore(serializer="yaml")
    with pytest.raises(trioflow.ConfigError, match="'json'"):
        trioflow.SQLiteStore("x.db", serializer="marshal")


# -- rows in, records out ---------------------------------------------------------------------

WALL = dt.datetime(2026, 12, 3, 7, tzinfo=dt.UTC).timestamp()


def run_row(run_id: str, state: str = "RUNNING", inputs: str = '{"n":3}') -> RunRow:
    return (run_id, "pipeline", state, "abc123", inputs, "d1", 1.0, None, WALL, None)


def node_row(
    run_id: str, node_id: str, seq: int, state: str = "DONE", outputs: str | None = '{"out":1}'
) -> NodeRow:
    error = None if state != "FAILED" else '{"type":"ValueError","message":"x","traceback":""}'
    return (
        run_id,
        node_id,
        seq,
        "work",
        state,
        1.0,
        2.0,
        WALL,
        WALL,
        1,
        "loop",
        0,
        0.0,
        error,
        "dg",
        outputs if state == "DONE" else None,
    )


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> trioflow.RunStore:
    if request.param == "memory":
        return trioflow.MemoryStore()
    return trioflow.SQLiteStore(tmp_path / "runs.db")


def test_a_run_written_in_batches_loads_as_its_record(store: trioflow.RunStore) -> None:
    assert isinstance(store, trioflow.RunStore)
    assert store.begin(run_row("r1"), resume=False) is None
    store.write([("node", node_row("r1", "work_1", 0, "RUNNING"))])
    store.write(
        [
            ("node", node_row("r1", "work_1", 0)),
            ("node", node_row("r1", "work_2", 1, "FAILED")),
            ("run", (*run_row("r1", "FAILED")[:7], 5.0, WALL, WALL)),
        ]
    )
    record = store.load("r1")
    assert isinstance(record, trioflow.RunRecord)
    assert record.run_id == "r1" and record.graph_id == "pipeline"
    assert record.states() == {
        "work_1": trioflow.NodeState.DONE,
        "work_2": trioflow.NodeState.FAILED,
    }
    assert record.nodes["work_2"].error == trioflow.ErrorInfo("ValueError", "x")
    assert (record.started_at, record.finished_at) == (1.0, 5.0)
    assert store.outputs("r1") == {"work_1": {"out": 1}}
    (info,) = store.runs()
    assert info == trioflow.RunInfo(
        run_id="r1",
        graph="pipeline",
        state=trioflow.NodeState.FAILED,
        content_hash="abc123",
        inputs={"n": 3},
        started_at=dt.datetime(2026, 12, 3, 7, tzinfo=dt.UTC),
        finished_at=dt.datetime(2026, 12, 3, 7, tzinfo=dt.UTC),
    )
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        info.state = trioflow.NodeState.DONE  # type: ignore[misc]


def test_unknown_run_id_is_a_key_error(store: trioflow.RunStore) -> None:
    with pytest.raises(KeyError):
        store.load("nope")
    assert store.runs() == []


def test_a_run_id_is_claimed_once(store: trioflow.RunStore) -> None:
    store.begin(run_row("r1"), resume=False)
    store.write([("node", node_row("r1", "work_1", 0))])
    with pytest.raises(trioflow.ConfigError, match="resume=True"):
        store.begin(run_row("r1"), resume=False)
    stored = store.begin(run_row("r1"), resume=True)
    assert stored is not None
    assert stored.content_hash == "abc123" and stored.ids == ["work_1"] and stored.next_seq == 1


def test_cache_rows(store: trioflow.RunStore) -> None:
    assert store.cache_get("k") is None
    store.write([("cache", ("k", "work", "v1", '{"out":2}', 1234.5))])
    assert store.cache_get("k") == ('{"out":2}', 1234.5)


def test_cache_rows_of_one_tool_version(store: trioflow.RunStore) -> None:
    store.write(
        [("cache", (f"k{i}", "work", "v1", f'{{"out":{i}}}', 1.0)) for i in range(3)]
        + [("cache", ("other", "work", "v2", '{"out":9}', 1.0))]
    )
    assert store.cache_of("work", "v1", 3) == {f"k{i}": (f'{{"out":{i}}}', 1.0) for i in range(3)}
    assert store.cache_of("work", "v1", 2) is None  # too many to read at once
    assert store.cache_of("nope", "v1", 2) == {}


def test_memory_store_holds_exactly_what_sqlite_writes(tmp_path: pathlib.Path) -> None:
    mem, disk = trioflow.MemoryStore(), trioflow.SQLiteStore(tmp_path / "s.db")
    text = Serializer("json").dumps({"p": Point(1, 2.0)})
    for s in (mem, disk):
        s.begin(run_row("r"), resume=False)
        s.write([("node", node_row("r", "work_1", 0, outputs=text))])  # type: ignore[arg-type]
    assert mem.outputs("r") == disk.outputs("r") == {"work_1": {"p": Point(1, 2.0)}}
    assert mem.load("r") == disk.load("r")


# -- the SQLite file ----------------------------------------------------------------------------


def test_sqlite_store_survives_the_process_and_uses_wal(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "deep" / "runs.db"
    first = trioflow.SQLiteStore(path)
    first.begin(run_row("r1"), resume=False)
    first.write([("node", node_row("r1", "work_1", 0))])
    first.close()
    again = trioflow.SQLiteStore(path)
    assert again.load("r1").states() == {"work_1": trioflow.NodeState.DONE}
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_a_file_that_is_not_a_database_is_a_store_error(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(os.urandom(8192))
    with pytest.raises(trioflow.StoreError, match="not an SQLite database") as info:
        trioflow.SQLiteStore(path)
    assert info.value.__cause__ is None
    assert info.value.__context__ is None or info.value.__suppress_context__


def _store_of_2000_rows(tmp_path: pathlib.Path) -> pathlib.Path:
    """A closed store file of one run with 2000 node rows, its WAL checkpointed into it."""
    path = tmp_path / "runs.db"
    store = trioflow.SQLiteStore(path)
    store.begin(run_row("r1"), resume=False)
    store.write([("node", node_row("r1", f"work_{i}", i)) for i in range(2000)])
    store.close()
    _checkpoint(path)
    return path


def test_a_truncated_store_is_a_store_error(tmp_path: pathlib.Path) -> None:
    path = _store_of_2000_rows(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(trioflow.StoreError, match="truncated"):
        trioflow.SQLiteStore(path)


def test_a_store_read_while_another_process_checkpoints_it_opens(tmp_path: pathlib.Path) -> None:
    """Mid-checkpoint, the file's page 1 already claims every page while the file is still
    short; the pages are in the WAL. That is a live store, not a truncated one (CI once failed
    on a header read that raced a checkpoint)."""
    path = tmp_path / "live" / "runs.db"
    store = trioflow.SQLiteStore(path)
    hold = sqlite3.connect(path)  # another process's connection: no checkpoint when store closes
    try:
        hold.execute("SELECT count(*) FROM meta").fetchall()
        store.begin(run_row("r1"), resume=False)
        store.write([("node", node_row("r1", f"work_{i}", i)) for i in range(2000)])
        store.close()
        copies = {}
        for name in ("mid", "full"):
            (tmp_path / name).mkdir()
            for suffix in ("", "-wal"):
                copies[name + suffix] = tmp_path / name / f"runs.db{suffix}"
                copies[name + suffix].write_bytes(pathlib.Path(f"{path}{suffix}").read_bytes())
    finally:
        hold.close()
    _checkpoint(copies["full"])  # the file as it is once the checkpoint ends
    full = copies["full"].read_bytes()
    page = int.from_bytes(full[16:18], "big")
    mid = bytearray(copies["mid"].read_bytes())
    assert len(mid) < len(full) // 2  # most pages are still only in the WAL
    mid[:page] = full[:page]  # the checkpoint has written page 1, and no page past the file yet
    copies["mid"].write_bytes(bytes(mid))
    live = trioflow.SQLiteStore(copies["mid"])
    try:
        states = live.load("r1").states()
    finally:
        live.close()
    assert states == {f"work_{i}": trioflow.NodeState.DONE for i in range(2000)}


def test_a_corrupted_page_is_a_store_error_not_a_sqlite_traceback(tmp_path: pathlib.Path) -> None:
    path = _store_of_2000_rows(tmp_path)
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    for offset in range(2 * page, len(data) - page, page):  # scribble over every b-tree page
        data[offset : offset + 64] = os.urandom(64)
    path.write_bytes(bytes(data))
    with pytest.raises(trioflow.StoreError, match="corrupted") as info:
        trioflow.SQLiteStore(path)  # refused when opened, not by a later read
    assert info.value.__suppress_context__ or info.value.__context__ is None  # no sqlite traceback


def _checkpoint(path: pathlib.Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.close()


def test_another_applications_database_is_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER)")
    conn.commit()
    conn.close()
    with pytest.raises(trioflow.StoreError, match="not a trioflow store"):
        trioflow.SQLiteStore(path)


@pytest.mark.parametrize("version", [SCHEMA_VERSION + 1, 0])
def test_a_store_of_another_schema_version_is_refused(tmp_path: pathlib.Path, version: int) -> None:
    path = tmp_path / "runs.db"
    trioflow.SQLiteStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))
    conn.commit()
    conn.close()
    expected = "newer trioflow" if version > SCHEMA_VERSION else "older trioflow"
    with pytest.raises(trioflow.StoreError, match=expected):
        trioflow.SQLiteStore(path)


def test_a_directory_path_is_refused_naming_a_file_to_use(tmp_path: pathlib.Path) -> None:
    with pytest.raises(trioflow.StoreError, match="is a directory.*runs.db"):
        trioflow.SQLiteStore(tmp_path)


def test_a_memory_path_is_refused() -> None:
    with pytest.raises(trioflow.ConfigTypeError, match="MemoryStore"):
        trioflow.SQLiteStore(":memory:")


def test_pickle_store_reads_back_objects(tmp_path: pathlib.Path) -> None:
    store = trioflow.SQLiteStore(tmp_path / "p.db", serializer="pickle")
    blob = store.serializer.dumps({"out": {"fn": len}})
    store.begin(run_row("r"), resume=False)
    store.write([("node", node_row("r", "work_1", 0, outputs=blob))])  # type: ignore[arg-type]
    assert store.outputs("r") == {"work_1": {"out": {"fn": len}}}
    with pytest.raises(trioflow.ConfigError, match="trust"):
        trioflow.SQLiteStore(tmp_path / "p.db").outputs("r")


WRITER = textwrap.dedent(
    """
    import sys
    from trioflow import SQLiteStore
    store = SQLiteStore(sys.argv[1], timeout=60)
    name, runs, nodes = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    for r in range(runs):
        run_id = f"{name}-{r}"
        store.begin((run_id, "g", "RUNNING", None, "{}", "d", 0.0, None, 0.0, None), resume=False)
        for start in range(0, nodes, 50):
            store.write([
                ("node", (run_id, f"n_{i}", i, "t", "DONE", 0.0, 1.0, None, None, 1, "loop", 0,
                          0.0, None, None, '{"out":%d}' % i))
                for i in range(start, start + 50)
            ])
        store.write([("run", (run_id, "g", "DONE", None, "{}", "d", 0.0, 1.0, None, None))])
    """
)


def test_two_processes_writing_one_store_file_lose_nothing(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "shared.db"
    trioflow.SQLiteStore(path).close()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), name, "20", "200"], cwd=ROOT, env=env
        )
        for name in ("a", "b")
    ]
    for p in procs:
        assert p.wait(timeout=120) == 0
    store = trioflow.SQLiteStore(path)
    runs = store.runs()
    assert sorted(r.run_id for r in runs) == sorted(f"{n}-{r}" for n in "ab" for r in range(20))
    assert all(r.state is trioflow.NodeState.DONE for r in runs)
    for r in runs:
        assert store.outputs(r.run_id) == {f"n_{i}": {"out": i} for i in range(200)}


OPENER = textwrap.dedent(
    """
    import sys
    import trioflow
    print("ready", flush=True)
    sys.stdin.readline()  # every process is ready: all open the new file at once
    trioflow.SQLiteStore(sys.argv[1]).close()
    """
)


def test_processes_creating_one_new_store_at_once_all_open_it(tmp_path: pathlib.Path) -> None:
    """SQLite refuses a racing switch of a new file to WAL mode at once, without its busy
    timeout; every process still opens the store (as two `trioflow run`s at once would)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for round_ in range(5):
        path = tmp_path / f"new-{round_}.db"
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", OPENER, str(path)],
                cwd=ROOT,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(6)
        ]
        try:
            for p in procs:
                assert p.stdout is not None and p.stdout.readline() == "ready\n"
            for p in procs:
                assert p.stdin is not None
                p.stdin.write("go\n")
                p.stdin.flush()
            for p in procs:
                _, err = p.communicate(timeout=120)
                assert p.returncode == 0, err
        finally:
            for p in procs:
                p.kill()
        assert trioflow.SQLiteStore(path).runs() == []


@given(
    st.text(max_size=6) | st.sampled_from(["$t", '"$t"', "\\", "é", "\u2028"]),
    st.integers() | st.text(max_size=6) | st.sampled_from(["$t", '"$t"', "\\", "\x00", "é"]),
)
def test_one_int_or_str_output_is_stored_as_the_general_encoder_writes_it(
    name: str, value: int | str
) -> None:
    """The short path for the commonest outputs writes the very text of the general one."""
    from trioflow._serialize import _dumps

    assert Serializer("json").dumps({name: value}) == _dumps({name: value})
