"""Executors in fresh interpreters: SIGINT ignored (as in a CI background job), no worker
process left behind, no ResourceWarning at exit, and a missing extra named."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import ROOT, worker_pythonpath
from test_executors import pid_alive

# Run in a child whose SIGINT is ignored, as a background job of a non-interactive shell has it:
# Ray's workers inherit that, and ray.cancel(force=False) is then a silent no-op unless the
# task wrapper puts Python's handler back on the worker.
RAY_CHILD = """
import json, os, pathlib, signal, sys, time
import trio, trioflow

assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN

def work(started, done):
    pathlib.Path(started).write_text(str(os.getpid()))
    for _ in range(300):          # 3 s in short sleeps: the interrupt lands between two
        time.sleep(0.01)
    pathlib.Path(done).write_text("side effect")

def alive(pid):
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"

async def main(tmp):
    started, done = f"{tmp}/started", f"{tmp}/done"
    async with trioflow.RayExecutor(init_options={"num_cpus": 1}) as ex:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ex.run, work, started, done)
                while not os.path.exists(started):  # noqa: ASYNC110
                    await trio.sleep(0.01)
                began = time.perf_counter()
                scope.cancel()
        waited = time.perf_counter() - began
        await trio.sleep(3.5 - (time.perf_counter() - began))
        side_effect = os.path.exists(done)
    pid = int(pathlib.Path(started).read_text())
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    print(json.dumps({"waited": waited, "side_effect": side_effect, "worker_alive": alive(pid)}))

trio.run(main, sys.argv[1])
"""

PROCESS_CHILD = """
import json, os, pathlib, sys, time
import trio, trioflow

def work(started):
    pathlib.Path(started).write_text(str(os.getpid()))
    time.sleep(30)

def alive(pid):
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"

async def main(tmp):
    started = f"{tmp}/started"
    async with trioflow.ProcessExecutor(max_workers=2) as ex:
        pids = [await ex.run(os.getpid), await ex.run(lambda: os.getpid())]
        with trio.move_on_after(20) as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ex.run, work, started)
                while not os.path.exists(started):  # noqa: ASYNC110
                    await trio.sleep(0.01)
                scope.cancel()
        pids.append(int(pathlib.Path(started).read_text()))
    print(json.dumps({"alive": [p for p in set(pids) if alive(p)]}))

if __name__ == "__main__":
    trio.run(main, sys.argv[1])
"""


def run_child(code: str, tmp_path, *, ignore_sigint: bool = False, timeout: float = 120):
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(code))
    env = dict(os.environ, PYTHONPATH=worker_pythonpath())

    def preexec() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    proc = subprocess.run(
        [sys.executable, "-W", "always::ResourceWarning", str(script), str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=preexec if ignore_sigint else None,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ResourceWarning" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_ray_cancel_stops_a_task_even_when_sigint_is_ignored(tmp_path) -> None:
    result = run_child(RAY_CHILD, tmp_path, ignore_sigint=True)
    assert not result["side_effect"]
    # Interrupted by ray.cancel itself, not by the fallback that kills the worker after 1 s.
    assert result["waited"] < 0.9, result
    assert not result["worker_alive"]  # the private cluster went away with the executor


def test_no_process_worker_survives_and_no_resource_warning(tmp_path) -> None:
    result = run_child(PROCESS_CHILD, tmp_path)
    assert result["alive"] == []


@pytest.mark.parametrize(("module", "extra"), [("trio_parallel", "process"), ("ray", "ray")])
def test_a_missing_extra_is_named(tmp_path, module: str, extra: str) -> None:
    code = f"""
    import json, sys
    sys.modules[{module!r}] = None  # as if not installed
    import trio, trioflow
    ex = trioflow.ProcessExecutor() if {extra!r} == "process" else trioflow.RayExecutor()
    async def main():
        try:
            async with ex:
                pass
        except trioflow.ConfigError as exc:
            print(json.dumps({{"message": str(exc)}}))
    trio.run(main)
    """
    result = run_child(code, tmp_path)
    assert f"pip install 'trioflow[{extra}]'" in result["message"]


def test_a_script_without_the_main_guard_is_told_to_add_it(tmp_path) -> None:
    """A script that starts a run at import makes each worker start it again; the error says
    so (not that something failed to pickle)."""
    code = """
    import json
    import trioflow

    @trioflow.tool(outputs=["y"], executor="process")
    def double(x: int) -> int:
        return 2 * x

    @trioflow.graph_fn(name="g", outputs=["y"])
    async def g() -> int:
        return (await double(x=1))["y"]

    try:  # (no `if __name__ == "__main__":`)
        trioflow.run(g)
    except trioflow.NodeFailed as exc:
        print(json.dumps({"notes": getattr(exc.__cause__, "__notes__", [])}))
    """
    result = run_child(code, tmp_path)
    assert any('if __name__ == "__main__":' in note for note in result["notes"]), result
    assert not any("pickled" in note for note in result["notes"]), result


def test_importing_trioflow_imports_neither_ray_nor_trio_parallel() -> None:
    code = "import sys, trioflow; print(sorted({'ray', 'trio_parallel', 'cloudpickle'} & set(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == "[]"


CTRL_C_CHILD = """
import os, pathlib, sys, time
import trioflow

@trioflow.tool(outputs=["y"], executor="process")
def slow(started: str, done: str) -> None:
    pathlib.Path(started).write_text(str(os.getpid()))
    time.sleep(3)
    pathlib.Path(done).write_text("side effect")

@trioflow.graph_fn(name="g", outputs=["y"])
async def g(started: str, done: str) -> None:
    await slow(started=started, done=done)

if __name__ == "__main__":
    tmp = sys.argv[1]
    try:
        trioflow.run(g, inputs={"started": f"{tmp}/started", "done": f"{tmp}/done"})
    except KeyboardInterrupt:
        print("interrupted", time.perf_counter(), flush=True)
        raise
"""


def test_ctrl_c_kills_the_running_process_task(tmp_path) -> None:
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CTRL_C_CHILD))
    started, done = tmp_path / "started", tmp_path / "done"
    proc = subprocess.Popen(
        [sys.executable, "-W", "always::ResourceWarning", str(script), str(tmp_path)],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=worker_pythonpath()),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert started.exists(), proc.stderr.read() if proc.poll() is not None else "no start"
        time.sleep(0.2)
        sent = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert "KeyboardInterrupt" in err
    assert "ResourceWarning" not in err, err
    assert float(out.split()[1]) - sent < 2.0  # (perf_counter is system-wide on Linux)
    assert not pid_alive(int(started.read_text()))  # the worker was killed
    time.sleep(max(0.0, 3.3 - (time.perf_counter() - sent)))
    assert not done.exists()
