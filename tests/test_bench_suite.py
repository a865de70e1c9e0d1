"""The benchmark suite's own machinery: cells run and check answers, DNF kills, skips report."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def suite(
    out: Path, *args: str, timeout: float = 120
) -> tuple[subprocess.CompletedProcess[str], dict]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, str(BENCH / "suite.py"), "--out", str(out), "--no-plots", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    results = (
        json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
    )
    return proc, results


@pytest.fixture
def workloads():
    sys.path.insert(0, str(BENCH))
    try:
        import _workloads

        yield _workloads
    finally:
        sys.path.remove(str(BENCH))


def test_smoke_cells_run_in_fresh_processes_and_check_answers(tmp_path, workloads):
    proc, results = suite(
        tmp_path,
        "--smoke",
        "--systems",
        "trio-pool",
        "trioflow-graphify",
        "--workloads",
        "W1",
        "--caps",
        "4",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ms = results["measurements"]
    assert [(m["system"], m["status"]) for m in ms] == [
        ("trio-pool", "ok"),
        ("trioflow-graphify", "ok"),
    ]
    answer = workloads.expected(workloads.build("W1", 50))
    assert all(m["answer"] == answer and m["nodes"] == 52 for m in ms)
    assert len({m["pid"] for m in ms}) == 2  # one process per cell
    assert "rerun_s" in ms[1]["extra"]
    assert results["machine"]["cores"] == os.cpu_count()
    assert {"1m", "uptime"} <= set(results["load_before"]) and "uptime" in results["load_after"]
    graphify = next(r for r in results["summary"] if r["system"] == "trioflow-graphify")
    assert graphify["vs_trio"] > 0 and graphify["repeats"] == 1
    table = (tmp_path / "results.md").read_text()
    assert "## W1: fan-out / fan-in" in table and "| trioflow @graphify |" in table
    (tmp_path / "results.md").unlink()  # --report rewrites it from results.json alone
    proc, _ = suite(tmp_path, "--report")
    assert proc.returncode == 0 and (tmp_path / "results.md").read_text() == table


def test_a_cell_over_its_budget_is_killed_and_reported_dnf(tmp_path):
    # 2,000 nodes of 10 ms at max_concurrency 4 take 5 s; the budget is 1 s.
    start = time.monotonic()
    proc, results = suite(
        tmp_path,
        "--systems",
        "trio-pool",
        "--workloads",
        "W4",
        "--sizes",
        "2000",
        "4000",
        "--caps",
        "4",
        "--budget",
        "1",
        "--repeats",
        "2",
    )
    assert time.monotonic() - start < 20
    assert proc.returncode == 0, proc.stdout + proc.stderr
    dnf, bigger = results["measurements"]  # a DNF cell is not repeated
    assert (dnf["n"], dnf["status"]) == (2000, "DNF")
    assert 1 <= dnf["dnf_after_s"] <= 3
    assert (bigger["n"], bigger["status"], bigger["reason"]) == (
        4000,
        "skipped",
        "a smaller N did not finish",
    )
    with pytest.raises(ProcessLookupError):  # the cell's whole session is gone
        os.killpg(dnf["pid"], 0)
    assert "DNF (>1 s)" in (tmp_path / "results.md").read_text()


def test_a_system_that_cannot_run_is_reported_skipped(tmp_path):
    proc, results = suite(
        tmp_path, "--systems", "prefect", "--workloads", "W1", "--sizes", "100000", "--caps", "4"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (m,) = results["measurements"]
    assert m["status"] == "skipped"
    if importlib.util.find_spec("prefect") is None:
        assert m["reason"].startswith("not installed (prefect)")
    else:
        assert m["reason"] == "small N only (N <= 10,000)"
    assert "skipped" in (tmp_path / "results.md").read_text()


def test_targets_are_read_from_the_summary(workloads):
    sys.path.insert(0, str(BENCH))
    try:
        import _report
    finally:
        sys.path.remove(str(BENCH))

    def ok(system, workload, n, cap, seconds, **more):
        nodes = n + 2
        return {
            "system": system,
            "workload": workload,
            "n": n,
            "cap": cap,
            "status": "ok",
            "median_s": seconds,
            "us_per_node": seconds / nodes * 1e6,
            **more,
        }

    summary = [
        ok("trio-pool", "W1", 10_000, 4, 0.1),
        ok("trioflow-graphify", "W1", 10_000, 4, 0.12, rerun_s=0.09),
        ok("trioflow-graph_fn", "W1", 10_000, 4, 0.2, vs_trio=2.0),
        {
            "system": "aethergraph-graphify",
            "workload": "W1",
            "n": 10_000,
            "cap": 4,
            "status": "DNF",
            "dnf_after_s": 60.0,
        },
    ]
    results = {"summary": summary, "settings": {"caps": [4], "budget_s": 60.0}}
    got = {t: (m, met) for t, m, met in _report.targets(results)}
    assert got["@graphify ≤ 1.0x the worker-pool floor (W1-W3)"][1] == "**yes**"  # 0.9x
    assert got["@graph_fn gather/map ≤ 1.5x the best Trio floor (W1)"][1] == "**no**"  # 2.0x
    name = "≥ 100x faster per node than aethergraph-graphify (W1 N=10k, cap 4; against trioflow graphify)"
    measured, met = got[name]
    # At least 60 s / 10,002 nodes = 6 ms per node against graphify's 12 us: >= 500x.
    assert measured.startswith("≥ 500x") and met == "**yes**"
