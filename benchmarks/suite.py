"""trioflow's benchmark suite: the same workloads on every system, side by side.

    python benchmarks/suite.py [--quick | --smoke] [--out DIR] [--systems ...]
                               [--workloads ...] [--sizes ...] [--caps ...]

Every cell (system x workload x N x max_concurrency) runs in a fresh process that is killed at
its time budget ("DNF"); repeats are interleaved across systems (repeat 1 of every cell, then
repeat 2, ...); each run checks its answer. The results folder gets results.json (every
measurement, the machine, package versions, load average before and after), results.md (the
tables and the targets) and PNG plots. A system whose package is not installed is "skipped"
(`pip install -e '.[bench]'` brings the other engines). `--smoke` runs tiny sizes and fails on
any wrong answer, error or DNF: CI runs it. Workloads, systems and method: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _systems import SYSTEMS  # noqa: E402
from _workloads import WORKLOADS  # noqa: E402

CAPS = (4, 64)
PACKAGES = ("trioflow", "trio", "attrs", "cattrs", "aethergraph", "radical.asyncflow", "dask")
PACKAGES += ("prefect", "matplotlib")
MODES: dict[str, dict[str, Any]] = {
    "full": {"repeats": 3, "budget": 60.0, "max_repeat_seconds": 20.0},
    "quick": {"repeats": 1, "budget": 10.0, "max_repeat_seconds": 5.0},
    "smoke": {"repeats": 1, "budget": 60.0, "max_repeat_seconds": 5.0},
}


def parse_list(values: Sequence[str] | None) -> list[str] | None:
    if not values:
        return None
    return [v for value in values for v in value.replace(",", " ").split()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small sizes, one repeat (~1 min)")
    mode.add_argument("--smoke", action="store_true", help="tiny sizes; checks answers only")
    parser.add_argument("--out", default="bench-results", help="results folder")
    parser.add_argument("--systems", nargs="*", help=f"default all: {', '.join(SYSTEMS)}")
    parser.add_argument("--workloads", nargs="*", help=f"default all: {', '.join(WORKLOADS)}")
    parser.add_argument("--sizes", nargs="*", help="N for every chosen workload (default: each's)")
    parser.add_argument("--caps", nargs="*", help="max_concurrency values (default: 4 64)")
    parser.add_argument("--repeats", type=int, help="measurements per cell (full: 3)")
    parser.add_argument(
        "--budget", type=float, help="seconds for a cell's measured run before DNF (full: 60)"
    )
    parser.add_argument(
        "--setup-budget",
        type=float,
        default=180.0,
        help="seconds for a cell's imports and warm-up before DNF (default 180)",
    )
    parser.add_argument(
        "--max-repeat-seconds",
        type=float,
        help="a cell whose first run took longer is not repeated (full: 20)",
    )
    parser.add_argument("--python", default=sys.executable, help="interpreter for the cells")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument(
        "--report",
        action="store_true",
        help="run nothing: rewrite results.md and the plots from DIR/results.json (--out DIR)",
    )
    args = parser.parse_args(argv)
    args.mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    for key, default in MODES[args.mode].items():
        if getattr(args, key) is None:
            setattr(args, key, default)
    args.systems = parse_list(args.systems) or list(SYSTEMS)
    args.workloads = [w.upper() for w in parse_list(args.workloads) or list(WORKLOADS)]
    sizes = parse_list(args.sizes)
    args.sizes = [int(float(s)) for s in sizes] if sizes else None
    caps = parse_list(args.caps)
    args.caps = [int(c) for c in caps] if caps else list(CAPS)
    for name in args.systems:
        if name not in SYSTEMS:
            parser.error(f"unknown system {name!r}; choose from: {', '.join(SYSTEMS)}")
    for name in args.workloads:
        if name not in WORKLOADS:
            parser.error(f"unknown workload {name!r}; choose from: {', '.join(WORKLOADS)}")
    if args.repeats < 1 or args.budget <= 0 or any(c < 1 for c in args.caps):
        parser.error("--repeats and --caps must be >= 1 and --budget > 0")
    return args


# -- the machine ----------------------------------------------------------------------------------


def probe(python: str) -> dict[str, Any]:
    """Ask the cells' interpreter which packages it has (and their versions)."""
    modules = sorted({m for s in SYSTEMS.values() for m in s.modules})
    code = (
        "import importlib.util, importlib.metadata as md, json, platform, sys\n"
        f"mods = {modules!r}\npkgs = {list(PACKAGES)!r}\n"
        "def has(m):\n"
        "    try:\n        return importlib.util.find_spec(m) is not None\n"
        "    except Exception:\n        return False\n"
        "def ver(p):\n"
        "    try:\n        return md.version(p)\n"
        "    except Exception:\n        return None\n"
        "print(json.dumps({'modules': {m: has(m) for m in mods},"
        " 'versions': {p: ver(p) for p in pkgs},"
        " 'python': platform.python_version(), 'implementation': platform.python_implementation(),"
        " 'executable': sys.executable}))\n"
    )
    out = subprocess.run(
        [python, "-c", code], capture_output=True, text=True, check=True, env=cell_env(), cwd=ROOT
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load() -> dict[str, Any]:
    one, five, fifteen = os.getloadavg()
    uptime = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout
    return {"1m": one, "5m": five, "15m": fifteen, "uptime": uptime.strip()}


def git_commit() -> str | None:
    if os.environ.get("TRIOFLOW_BENCH_COMMIT"):  # a run from an exported copy of the tree
        return os.environ["TRIOFLOW_BENCH_COMMIT"]
    out = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() or None


def cell_env(prefect_home: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    if prefect_home:  # one Prefect home (database) per suite run, created by the first cell
        env["PREFECT_HOME"] = prefect_home
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(HERE)])
    env.update(
        PYTHONHASHSEED="0",
        PREFECT_LOGGING_LEVEL="WARNING",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
    )
    return env


# -- running cells --------------------------------------------------------------------------------


def read_events(path: Path) -> dict[str, dict[str, Any]]:
    if not path.exists():
        return {}
    events = [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]
    return {e["event"]: e for e in events}


def run_cell(
    python: str,
    system: str,
    workload: str,
    n: int,
    cap: int,
    budget: float,
    setup_budget: float,
    scratch: str,
) -> dict[str, Any]:
    """One measurement in a fresh process (its own session).

    The measured run gets `budget` seconds from its start; imports, the warm-up run and a
    server's start-up before it get `setup_budget`. Past either, the whole session is killed.
    """
    with tempfile.TemporaryDirectory(prefix="trioflow-bench-") as tmp:
        out = Path(tmp) / "cell.jsonl"
        spec = {"system": system, "workload": workload, "n": n, "cap": cap, "out": str(out)}
        env = cell_env(str(Path(scratch) / "prefect"))
        started = time.time()
        with open(Path(tmp) / "stderr.txt", "w+") as stderr_file:
            proc = subprocess.Popen(
                [python, str(HERE / "_cell.py"), json.dumps(spec)],
                cwd=tmp,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr_file,
                start_new_session=True,
            )
            try:
                killed, timing = wait_for(proc, out, budget, setup_budget, started)
            finally:  # interrupted or not: no cell outlives the suite
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            ended = time.time()
            stderr_file.seek(0)
            stderr = stderr_file.read()[-1500:]
        by_kind = read_events(out)
    return cell_record(
        by_kind, killed, timing, started, ended, stderr, proc.returncode, setup_budget
    )


def wait_for(
    proc: subprocess.Popen[bytes], out: Path, budget: float, setup_budget: float, started: float
) -> tuple[str | None, float | None]:
    """Poll the cell; kill its session past a budget. Returns (what was killed, run start)."""
    killed = None
    timing: float | None = None
    while proc.poll() is None:
        time.sleep(0.02)
        now = time.time()
        events = read_events(out)
        if "timing" in events:  # the latest measured run's start
            timing = events["timing"]["wall"]
        if timing is not None and now - timing > budget:
            killed = "run"
        elif timing is None and now - started > setup_budget:
            killed = "setup"
        if killed:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return killed, timing


def cell_record(
    by_kind: dict[str, dict[str, Any]],
    killed: str | None,
    timing: float | None,
    started: float,
    ended: float,
    stderr: str,
    returncode: int | None,
    setup_budget: float,
) -> dict[str, Any]:
    record: dict[str, Any] = {"wall_s": ended - started}
    if "started" in by_kind:
        record["pid"] = by_kind["started"]["pid"]
    result = by_kind.get("result")
    if killed == "run" and timing is not None and result is None:
        # A lower bound on the measured run: from its start to the kill.
        record.update(status="DNF", dnf_after_s=ended - timing)
        return record
    if killed == "setup":
        record.update(status="DNF", reason=f"set-up and warm-up took over {setup_budget:g} s")
        return record
    if result is None:
        record.update(status="error", error=f"exit code {returncode}: {stderr}")
        return record
    result = dict(result)
    result.pop("event")
    record.update(result)
    if record["status"] == "error":
        record["stderr"] = stderr
    elif "rerun" in by_kind:
        record["extra"]["rerun_s"] = by_kind["rerun"]["seconds"]
    elif killed:
        record["extra"]["rerun_dnf"] = True  # the first run finished, the second did not
    elif returncode:
        record.update(status="error", error=f"exit code {returncode}: {stderr}")
    return record


def plan_cells(args: argparse.Namespace) -> list[tuple[str, int, int]]:
    cells = []
    for w in args.workloads:
        workload = WORKLOADS[w]
        sizes = (
            args.sizes
            or {
                "full": workload.sizes,
                "quick": workload.quick_sizes,
                "smoke": workload.smoke_sizes,
            }[args.mode]
        )
        for n in sorted(sizes):
            for cap in args.caps:
                cells.append((w, n, cap))
    return cells


def skip_reason(key: str, workload: str, n: int, available: dict[str, bool]) -> str | None:
    system = SYSTEMS[key]
    missing = [m for m in system.modules if not available.get(m, False)]
    if missing:
        return f"not installed ({', '.join(missing)}); pip install -e '.[bench]'"
    if system.workloads is not None and workload not in system.workloads:
        return "n/a"
    if system.max_n is not None and n > system.max_n:
        return f"small N only (N <= {system.max_n:,})"
    return None


def run_suite(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    info = probe(args.python)
    available = info.pop("modules")
    results: dict[str, Any] = {
        "suite": "trioflow benchmarks",
        "mode": args.mode,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "argv": sys.argv[1:],
        "machine": {
            "cores": os.cpu_count(),
            "cpu": cpu_model(),
            "platform": platform.platform(),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1),
            **info,
        },
        "git_commit": git_commit(),
        "settings": {
            "repeats": args.repeats,
            "budget_s": args.budget,
            "setup_budget_s": args.setup_budget,
            "max_repeat_seconds": args.max_repeat_seconds,
            "caps": args.caps,
        },
        "load_before": load(),
        "systems": {
            key: {"label": s.label, "kind": s.kind, "note": s.note}
            for key, s in SYSTEMS.items()
            if key in args.systems
        },
        "workloads": {
            w: {"title": WORKLOADS[w].title, "stands_for": WORKLOADS[w].stands_for}
            for w in args.workloads
        },
        "measurements": [],
    }
    scratch = tempfile.mkdtemp(prefix="trioflow-bench-run-")

    def save() -> None:  # after every cell, so an interrupted run keeps what it measured
        partial = out / "results.json.part"
        partial.write_text(json.dumps(results, indent=1) + "\n")
        os.replace(partial, out / "results.json")

    try:
        run_cells(args, available, results["measurements"], scratch, save)
    except KeyboardInterrupt:
        results["interrupted"] = True
        print("interrupted: reporting the cells measured so far", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    results["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    results["load_after"] = load()
    results["summary"] = summarize(results["measurements"])
    return results


def run_cells(
    args: argparse.Namespace,
    available: dict[str, bool],
    measurements: list[dict[str, Any]],
    scratch: str,
    save: Callable[[], None],
) -> None:
    cells = plan_cells(args)
    done: dict[tuple[str, str, int, int], list[dict[str, Any]]] = {}
    dnf: set[tuple[str, str, int]] = set()  # (system, workload, cap) that did not finish
    for repeat in range(args.repeats):
        # Rotate the system order each repeat, so no system always runs first or last.
        shift = repeat % len(args.systems)
        order = args.systems[shift:] + args.systems[:shift]
        for workload, n, cap in cells:
            for key in order:
                cell = (key, workload, n, cap)
                previous = done.get(cell, [])
                if repeat and (
                    not previous
                    or previous[-1]["status"] != "ok"
                    or previous[0]["seconds"] > args.max_repeat_seconds
                ):
                    continue  # skipped, DNF, failed, or too slow to repeat: one is enough
                base = {"system": key, "workload": workload, "n": n, "cap": cap}
                reason = skip_reason(key, workload, n, available)
                if reason is None and (key, workload, cap) in dnf:
                    reason = "a smaller N did not finish"
                if reason is not None:
                    if reason != "n/a":
                        record = {**base, "repeat": repeat, "status": "skipped", "reason": reason}
                        measurements.append(record)
                        done.setdefault(cell, []).append(record)
                    continue
                load_1m = os.getloadavg()[0]
                record = run_cell(
                    args.python, key, workload, n, cap, args.budget, args.setup_budget, scratch
                )
                record = {**base, "repeat": repeat, "load_1m": load_1m, **record}
                if record["status"] == "DNF":
                    dnf.add((key, workload, cap))
                measurements.append(record)
                done.setdefault(cell, []).append(record)
                print(progress(record), flush=True)
                save()


def progress(m: dict[str, Any]) -> str:
    head = f"{m['workload']} N={m['n']:<8,} cap={m['cap']:<3} {m['system']:<22} #{m['repeat'] + 1}"
    if m["status"] == "ok":
        per = m["seconds"] / m["nodes"] * 1e6
        return f"{head} {m['seconds']:9.3f} s  {per:9.2f} us/node"
    if m["status"] == "DNF":
        return f"{head} DNF (killed at the budget)"
    return f"{head} {m['status'].upper()}: {m.get('error', m.get('reason', ''))}"


# -- summary --------------------------------------------------------------------------------------


def summarize(measurements: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per cell: median with min-max, us/node, peak bytes/node, ratio to the best Trio floor."""
    cells: dict[tuple[str, str, int, int], list[dict[str, Any]]] = {}
    for m in measurements:
        cells.setdefault((m["system"], m["workload"], m["n"], m["cap"]), []).append(m)
    rows = []
    for (system, workload, n, cap), ms in cells.items():
        ok = [m for m in ms if m["status"] == "ok"]
        row: dict[str, Any] = {"system": system, "workload": workload, "n": n, "cap": cap}
        if not ok:
            last = ms[-1]
            row["status"] = last["status"]
            row["reason"] = last.get("reason") or last.get("error")
            if last["status"] == "DNF":
                row["dnf_after_s"] = last.get("dnf_after_s")
            rows.append(row)
            continue
        secs = [m["seconds"] for m in ok]
        nodes = ok[0]["nodes"]
        row.update(
            status="ok",
            repeats=len(ok),
            nodes=nodes,
            median_s=statistics.median(secs),
            min_s=min(secs),
            max_s=max(secs),
        )
        row["us_per_node"] = row["median_s"] / nodes * 1e6
        peaks = [m["peak_bytes"] for m in ok if m.get("peak_bytes") is not None]
        if peaks:
            row["peak_bytes_per_node"] = statistics.median(peaks) / nodes
        for key in ("rerun_s", "cold_s", "ideal_s"):
            values = [m["extra"][key] for m in ok if key in m.get("extra", {})]
            if values:
                row[key] = statistics.median(values)
        if "ideal_s" in row:
            row["ideal_ratio"] = row["median_s"] / row["ideal_s"]
            if "rerun_s" in row:
                row["rerun_ideal_ratio"] = row["rerun_s"] / row["ideal_s"]
        rows.append(row)
    floors: dict[tuple[str, int, int], float] = {}
    for row in rows:
        if row["status"] == "ok" and row["system"] in ("trio-pool", "trio-spawn"):
            key = (row["workload"], row["n"], row["cap"])
            floors[key] = min(floors.get(key, float("inf")), row["median_s"])
    for row in rows:
        floor = floors.get((row["workload"], row["n"], row["cap"]))
        if floor and row["status"] == "ok":
            row["vs_trio"] = row["median_s"] / floor
            if "rerun_s" in row:
                row["rerun_vs_trio"] = row["rerun_s"] / floor
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    import _report

    if args.report:
        results = json.loads((out / "results.json").read_text())
        results["summary"] = summarize(results["measurements"])
        (out / "results.md").write_text(_report.markdown(results))
        for note in [] if args.no_plots else _report.plots(results, out):
            print(note)
        return 0
    out.mkdir(parents=True, exist_ok=True)
    print(f"trioflow benchmark suite ({args.mode}) -> {out}/", flush=True)
    results = run_suite(args, out)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")

    (out / "results.md").write_text(_report.markdown(results))
    if not args.no_plots:
        for note in _report.plots(results, out):
            print(note)
    bad = [m for m in results["measurements"] if m["status"] == "error"]
    if args.mode == "smoke":
        bad += [m for m in results["measurements"] if m["status"] == "DNF"]
    for m in bad:
        print(f"FAILED: {progress(m)}\n{m.get('traceback') or m.get('stderr') or ''}")
    print(f"wrote {out}/results.json, {out}/results.md")
    return 130 if results.get("interrupted") else 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
