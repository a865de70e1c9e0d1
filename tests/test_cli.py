"""The `trioflow` command, run as a subprocess in a temporary directory for every path: success,
failures, bad usage, --json, plain and live progress, --timeout, Ctrl-C then --resume, and
reading the store back."""

from __future__ import annotations

import json
import os
import pathlib
import re
import select
import shlex
import signal
import subprocess
import sys
import time

import pytest

import trioflow

ROOT = pathlib.Path(__file__).resolve().parent.parent

FLOWS = '''
import os
import pathlib

import trio

import trioflow

HERE = pathlib.Path(__file__).parent


def log(name):
    with open(HERE / "calls.log", "a") as f:
        f.write(name + "\\n")


@trioflow.tool(outputs=["out"])
async def double(x: int) -> int:
    log(f"double {x}")
    return x * 2


@trioflow.tool(outputs=["sum"])
async def add(xs: list[int]) -> int:
    return sum(xs)


@trioflow.graphify(name="pipeline", outputs=["sum"])
def pipeline(vals):
    outs = [double(x=vals[i]) for i in range(len(vals))]
    return add(xs=[o.out for o in outs]).sum


@trioflow.tool(outputs=["out"])
async def boom(x: int) -> int:
    await trio.sleep(0.01)
    raise ValueError(f"bad value {x}")


@trioflow.graphify(name="failing", outputs=["a", "b"])
def failing(x=1):
    return {"a": double(x=x).out, "b": boom(x=x).out}


@trioflow.graphify(name="bad_trace", outputs=["out"])
def bad_trace(x):
    return double(x=x + 1).out


@trioflow.graph_fn(name="echo", outputs=["values"])
async def echo(a, b=None, c=None, d=None, e=None, f=None):
    return {"a": a, "b": b, "c": c, "d": d, "e": e, "f": f}


@trioflow.tool(outputs=["out"])
async def hang(xs: list[int]) -> int:
    """Writes the marker file once it runs, then waits until released (or cancelled)."""
    log("hang")
    (HERE / "started.marker").write_text("started")
    if not os.environ.get("RELEASE"):
        await trio.sleep_forever()
    return sum(xs)


@trioflow.graphify(name="slow", outputs=["out"])
def slow(n=3):
    firsts = [double(x=i) for i in range(n)]
    return hang(xs=[f.out for f in firsts]).out


@trioflow.tool(outputs=["out"])
async def tick(i: int) -> int:
    await trio.sleep(0.4)
    return i


@trioflow.graph_fn(name="ticking", outputs=["out"])
async def ticking(n=3):
    total = 0
    for i in range(n):
        total += (await tick(i=i))["out"]
    return total


not_a_graph = 42
'''


@pytest.fixture
def workdir(tmp_path: pathlib.Path) -> pathlib.Path:
    (tmp_path / "flows.py").write_text(FLOWS)
    return tmp_path


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    env.update(PYTHONPATH=str(ROOT), COLUMNS="120", **extra)
    return env


def cli(cwd: pathlib.Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trioflow", *args],
        cwd=cwd,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def cli_many(
    cwd: pathlib.Path, *commands: list[str], **env: str
) -> list[subprocess.CompletedProcess[str]]:
    """Independent commands, started together (each still its own process) to save time."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "trioflow", *args],
            cwd=cwd,
            env=_env(**env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in commands
    ]
    done = []
    try:
        for args, proc in zip(commands, procs, strict=True):
            out, err = proc.communicate(timeout=120)
            done.append(subprocess.CompletedProcess(args, proc.returncode, out, err))
    finally:
        for proc in procs:
            proc.kill()
    return done


def calls(workdir: pathlib.Path) -> list[str]:
    log = workdir / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


# -- run: success ---------------------------------------------------------------------------------


def test_run_prints_outputs_and_stores_the_run(workdir: pathlib.Path) -> None:
    proc = cli(workdir, "run", "flows.py:pipeline", "--input", "vals=[1, 2, 3]", "--run-id", "r1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "sum = 12\n"
    assert "done" in proc.stderr and "r1" in proc.stderr
    assert "\x1b[" not in proc.stderr  # not a terminal: plain lines
    assert "trioflow: run r1 of pipeline" in proc.stderr
    assert "4/4 done, 0 running, 0 failed, 0 skipped" in proc.stderr
    assert (workdir / ".trioflow" / "runs.db").is_file()
    record = trioflow.SQLiteStore(str(workdir / ".trioflow" / "runs.db")).load("r1")
    assert set(record.states().values()) == {trioflow.NodeState.DONE}
    assert len(record.nodes) == 4


def test_json_output_is_exactly_one_document(workdir: pathlib.Path) -> None:
    proc = cli(workdir, "run", "flows.py:pipeline", "-i", "vals=[5]", "--json", "--no-store")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"sum": 10}
    assert not (workdir / ".trioflow").exists()


def test_input_values_are_json_or_plain_strings_and_override_the_inputs_file(
    workdir: pathlib.Path,
) -> None:
    values = {
        "a": ("hello world", "hello world"),  # not JSON: a plain string
        "b": ("3", 3),
        "c": ('"3"', "3"),
        "d": ('{"k": [1, null]}', {"k": [1, None]}),
        "e": ("true", True),
    }
    (workdir / "in.json").write_text(json.dumps({"a": "from the file", "f": ["file"]}))
    args = [arg for name, (text, _) in values.items() for arg in ("--input", f"{name}={text}")]
    proc = cli(
        workdir, "run", "flows.py:echo", "--inputs", "in.json", *args, "--json", "--no-store"
    )
    assert proc.returncode == 0, proc.stderr
    expected = {name: value for name, (_, value) in values.items()}
    assert json.loads(proc.stdout) == {"values": {**expected, "f": ["file"]}}


def test_module_target_imports_from_the_working_directory(workdir: pathlib.Path) -> None:
    (workdir / "pkg").mkdir()
    (workdir / "pkg" / "__init__.py").write_text("")
    (workdir / "pkg" / "flows.py").write_text(FLOWS)
    proc = cli(workdir, "run", "pkg.flows:pipeline", "-i", "vals=[1]", "--json", "--no-store")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"sum": 2}


def test_file_target_in_another_directory_imports_its_neighbours(workdir: pathlib.Path) -> None:
    sub = workdir / "sub"
    sub.mkdir()
    (sub / "helper.py").write_text(FLOWS)
    (sub / "main_flow.py").write_text("from helper import pipeline\n")
    proc = cli(
        workdir, "run", "sub/main_flow.py:pipeline", "-i", "vals=[2]", "--json", "--no-store"
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"sum": 4}


# -- run: failures --------------------------------------------------------------------------------


def test_node_failure_exits_1_naming_the_node_and_the_original_error(
    workdir: pathlib.Path,
) -> None:
    plain, verbose, collect = cli_many(
        workdir,
        ["run", "flows.py:failing", "--run-id", "f1"],
        ["run", "flows.py:failing", "--no-store", "--verbose", "--json"],
        ["run", "flows.py:failing", "--on-error", "collect", "--json", "--no-store"],
    )
    assert plain.returncode == 1
    assert plain.stdout == ""
    assert "boom_1: ValueError: bad value 1" in plain.stderr
    assert "Traceback" not in plain.stderr
    assert "trioflow runs show f1" in plain.stderr
    assert "--run-id f1 --resume" in plain.stderr

    assert verbose.returncode == 1
    assert "Traceback" in verbose.stderr and 'raise ValueError(f"bad value {x}")' in verbose.stderr
    errors = {"errors": {"boom_1": {"type": "ValueError", "message": "bad value 1"}}}
    assert json.loads(verbose.stdout) == errors

    assert collect.returncode == 1, collect.stderr
    assert json.loads(collect.stdout) == errors


def test_timeout_exits_1_naming_the_cancelled_nodes(workdir: pathlib.Path) -> None:
    proc = cli(workdir, "run", "flows.py:slow", "--timeout", "0.5", "--json", "--no-store")
    assert proc.returncode == 1, proc.stderr
    assert "timed out" in proc.stderr and "cancelled while running: hang_1" in proc.stderr
    assert json.loads(proc.stdout) == {
        "errors": {
            "hang_1": {"type": "Cancelled", "message": "cancelled: the run timed out after 0.5s"}
        }
    }


# -- run: bad usage -------------------------------------------------------------------------------

BAD_USAGE = [
    (["nope.py:pipeline"], "no such file: nope.py"),
    (["nope.flows:pipeline"], "no module named 'nope'"),
    (["flows.py"], "bad target 'flows.py'"),
    (["flows.py:pipelin"], "flows.py has no 'pipelin'"),
    (["flows.py:not_a_graph"], "is a int, not a graph"),
    (["flows.py:pipeline", "--input", "vals=[1, 2"], "--input vals: bad JSON"),
    (["flows.py:pipeline", "--input", "vals"], "expected NAME=VALUE"),
    (["flows.py:pipeline", "--inputs", "missing.json"], "cannot read it"),
    (["flows.py:pipeline", "--inputs", "flows.py"], "--inputs flows.py: bad JSON"),
    (["flows.py:pipeline", "--input", "vals=[1]", "--input", "extra=1"], "unknown inputs"),
    (["flows.py:pipeline"], "missing required inputs ['vals']"),
    (["flows.py:bad_trace", "--input", "x=1"], "building the graph failed: [value-op]"),
    (["flows.py:pipeline", "--input", "vals=[1]", "--resume"], "--resume needs --run-id"),
    (
        ["flows.py:pipeline", "-i", "vals=[1]", "--no-store", "--resume", "--run-id", "x"],
        "--resume needs the run store",
    ),
]


def test_bad_usage_exits_2_with_a_one_line_hint(workdir: pathlib.Path) -> None:
    procs = cli_many(workdir, *(["run", *args] for args, _ in BAD_USAGE))
    for (args, message), proc in zip(BAD_USAGE, procs, strict=True):
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stdout == ""
        lines = proc.stderr.splitlines()
        assert len(lines) == 2, (args, proc.stderr)
        assert lines[0].startswith("error: ") and message in lines[0], (args, proc.stderr)
        assert lines[1].startswith("  hint: "), (args, proc.stderr)
    assert calls(workdir) == []  # nothing ran


def test_bad_usage_with_json_prints_one_error_document(workdir: pathlib.Path) -> None:
    proc = cli(workdir, "run", "flows.py:pipelin", "--json")
    assert proc.returncode == 2
    error = json.loads(proc.stdout)["error"]
    assert error["type"] == "UsageError" and "pipelin" in error["message"] and error["hint"]


def test_reusing_a_run_id_and_resuming_with_other_inputs_exit_2(workdir: pathlib.Path) -> None:
    first = ["run", "flows.py:pipeline", "-i", "vals=[1, 2]", "--run-id", "r"]
    assert cli(workdir, *first).returncode == 0
    assert calls(workdir) == ["double 1", "double 2"]

    again = cli(workdir, *first)
    assert again.returncode == 2 and "hint:" in again.stderr

    other = cli(
        workdir, "run", "flows.py:pipeline", "-i", "vals=[1, 3]", "--run-id", "r", "--resume"
    )
    assert other.returncode == 2 and "hint:" in other.stderr
    assert "ResumeMismatch" in other.stderr or "resume" in other.stderr.lower()

    resumed = cli(workdir, *first, "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout) == {"sum": 6}
    assert calls(workdir) == ["double 1", "double 2"]  # nothing ran twice


# -- Ctrl-C and --resume --------------------------------------------------------------------------


def _wait_for(path: pathlib.Path, proc: subprocess.Popen[str], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} did not appear within {seconds}s"
        time.sleep(0.01)


def test_ctrl_c_cancels_everything_and_prints_the_command_that_finishes_the_run(
    workdir: pathlib.Path,
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "trioflow", "run", "flows.py:slow", "--input", "n=3"],
        cwd=workdir,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(workdir / "started.marker", proc, seconds=60)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "hang_1" in err
    command = err.strip().splitlines()[-1].strip()
    assert command.startswith("python -m trioflow run flows.py:slow"), err
    assert "--resume" in command and "--run-id" in command
    run_id = shlex.split(command)[shlex.split(command).index("--run-id") + 1]

    # The store is consistent: nothing is left RUNNING, the finished nodes are DONE.
    shown = cli(workdir, "runs", "show", run_id)
    assert shown.returncode == 0, shown.stderr
    assert "RUNNING" not in shown.stdout
    record = trioflow.SQLiteStore(str(workdir / ".trioflow" / "runs.db")).load(run_id)
    assert record.states() == {
        "double_1": trioflow.NodeState.DONE,
        "double_2": trioflow.NodeState.DONE,
        "double_3": trioflow.NodeState.DONE,
        "hang_1": trioflow.NodeState.CANCELLED,
    }

    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "trioflow"]
    finish = subprocess.run(
        [sys.executable, *argv[1:], "--json"],
        cwd=workdir,
        env=_env(RELEASE="1"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finish.returncode == 0, finish.stderr
    assert json.loads(finish.stdout) == {"out": 0 + 2 + 4}
    # The three finished nodes were not run again; the cancelled one was.
    assert calls(workdir) == ["double 0", "double 1", "double 2", "hang", "hang"]


# -- trioflow graph -------------------------------------------------------------------------------


def test_graph_formats(workdir: pathlib.Path) -> None:
    mermaid, dot, data, defaults, shape, reactive = cli_many(
        workdir,
        ["graph", "flows.py:pipeline", "--input", "vals=[1, 2]", "--format", "mermaid"],
        ["graph", "flows.py:pipeline", "-i", "vals=[1, 2]", "--format", "dot"],
        ["graph", "flows.py:pipeline", "-i", "vals=[1, 2]", "--format", "json"],
        ["graph", "flows.py:slow"],  # drawn for the function's default inputs
        ["graph", "flows.py:pipeline", "--format", "dot"],
        ["graph", "flows.py:echo"],
    )
    assert mermaid.returncode == 0, mermaid.stderr
    assert mermaid.stdout.startswith("flowchart TD\n") and "n_double_2" in mermaid.stdout
    assert mermaid.stdout == trioflow_graph(workdir).to_mermaid()
    assert dot.stdout.startswith('digraph "pipeline" {') and "n_double_1 -> n_add_1" in dot.stdout
    graph = trioflow.TaskGraph.from_dict(json.loads(data.stdout))
    assert list(graph.nodes) == ["double_1", "double_2", "add_1"]
    assert defaults.returncode == 0 and "n_double_3 --> n_hang_1" in defaults.stdout

    assert shape.returncode == 2 and shape.stdout == ""
    assert "shape-dependent" in shape.stderr and "hint:" in shape.stderr
    assert reactive.returncode == 2 and "@graph_fn" in reactive.stderr


def trioflow_graph(workdir: pathlib.Path) -> trioflow.TaskGraph:
    import importlib.util

    spec = importlib.util.spec_from_file_location("cli_test_flows", workdir / "flows.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    graph: trioflow.TaskGraph = module.pipeline.compile(vals=[1, 2])
    return graph


# -- trioflow runs --------------------------------------------------------------------------------


def test_runs_list_show_and_export(workdir: pathlib.Path) -> None:
    ok, bad = cli_many(  # two processes writing to one store at once
        workdir,
        ["run", "flows.py:pipeline", "-i", "vals=[1, 2]", "--run-id", "ok-1"],
        ["run", "flows.py:failing", "--run-id", "bad-1", "--on-error", "skip_dependents"],
    )
    assert (ok.returncode, bad.returncode) == (0, 1), (ok.stderr, bad.stderr)

    listed, shown, exported = cli_many(
        workdir, ["runs", "list"], ["runs", "show", "bad-1"], ["runs", "export", "ok-1"]
    )
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines() if line.strip()}
    assert rows["ok-1"][1:3] == ["pipeline", "DONE"] and rows["ok-1"][-2:] == ["3/3", "0"]
    assert rows["bad-1"][1:3] == ["failing", "FAILED"] and rows["bad-1"][-2:] == ["1/2", "1"]

    assert shown.returncode == 0, shown.stderr
    lines = {line.split()[0]: line for line in shown.stdout.splitlines() if line.strip()}
    assert "FAILED" in lines["boom_1"] and "ValueError: bad value 1" in lines["boom_1"]
    assert "DONE" in lines["double_1"]

    record = trioflow.RunRecord.from_dict(json.loads(exported.stdout))
    stored = trioflow.SQLiteStore(str(workdir / ".trioflow" / "runs.db")).load("ok-1")
    assert record == stored
    assert list(record.nodes) == ["double_1", "double_2", "add_1"]


def test_runs_with_an_unknown_run_id_or_store_exit_2(workdir: pathlib.Path) -> None:
    listed, shown, not_a_store = cli_many(
        workdir, ["runs", "list"], ["runs", "show", "nope"], ["runs", "list", "--store", "flows.py"]
    )
    assert listed.returncode == 0 and listed.stdout == ""  # no store: no runs, and none created
    assert shown.returncode == 2 and "no run store" in shown.stderr
    assert not_a_store.returncode == 2 and "cannot read the run store" in not_a_store.stderr
    assert not (workdir / ".trioflow").exists()
    run = ["run", "flows.py:pipeline", "-i", "vals=[1]", "--store", "other.db", "--run-id", "x"]
    assert cli(workdir, *run).returncode == 0
    missing, found = cli_many(
        workdir,
        ["runs", "export", "nope", "--store", "other.db"],
        ["runs", "show", "x", "--store", "other.db"],
    )
    assert missing.returncode == 2 and "no run 'nope'" in missing.stderr
    assert "hint: recent runs: x" in missing.stderr
    assert found.returncode == 0 and "x" in found.stdout


# -- the live display -----------------------------------------------------------------------------


def test_live_display_in_a_terminal(workdir: pathlib.Path) -> None:
    import fcntl
    import struct
    import termios

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "trioflow", "run", "flows.py:ticking", "--no-store"],
        cwd=workdir,
        env=_env(TERM="xterm-256color"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave,
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        out = proc.stdout.read() if proc.stdout else b""
        proc.wait(timeout=10)
    finally:
        proc.kill()
        os.close(master)
        if proc.stdout:
            proc.stdout.close()
    raw = b"".join(chunks).decode(errors="replace")
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)  # the text, without control codes
    assert proc.returncode == 0, raw
    assert out == b"out = 3\n"
    assert "\x1b[1A" in raw and "\x1b[2K" in raw  # redrawn in place: cursor up, erase line
    assert "━" in screen  # the bar
    assert "1/2 done" in screen and "2/3 done" in screen  # graph_fn: of those known so far
    assert "3/3 done" in screen
    assert "running 1" in screen
    assert "longest running: tick_2 0." in screen
    assert screen.count("3/3 done") < 5  # not redrawn needlessly after the end


# -- the README's main command ------------------------------------------------------------------


def test_readme_demo_command_runs_the_example_through_the_cli(tmp_path: pathlib.Path) -> None:
    readme = (ROOT / "README.md").read_text().splitlines()
    line = readme[readme.index("<!-- demo-command -->") + 2]
    steps = [shlex.split(step) for step in line.split("&&")]
    assert steps[0][:3] == ["python3", "-m", "venv"] and steps[1][0] == ".venv/bin/pip"
    commands = steps[2:]
    assert [c[:2] for c in commands] == [
        [".venv/bin/trioflow", "run"],
        [".venv/bin/trioflow", "runs"],
    ]
    # The installed console script is `trioflow.cli:main`; here it runs from this checkout.
    run_args = [str(ROOT / a) if a.startswith("examples/") else a for a in commands[0][1:]]
    first = cli(tmp_path, *run_args)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("words = [[")
    shown = cli(tmp_path, *commands[1][1:])
    assert shown.returncode == 0, shown.stderr
    assert "14 nodes: 14 done" in shown.stdout
    again = cli(tmp_path, *run_args)  # the same line again: every node's output is reused
    assert again.returncode == 0 and again.stdout == first.stdout
    assert "(14 reused from the store)" in again.stderr
