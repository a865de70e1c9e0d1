"""How fast trioflow.testing finds six classic scheduler bugs, and how small it shrinks them.

The hand-written scheduler of docs/examples/scheduler_testing.py, with one bug planted at a
time (cap exceeded under a race; dependent starts early; swallowed failure; orphan after
cancel; leaked token on failure; nested-graph deadlock), is checked with `check_scheduler`'s
default strategy under the `trioflow-fast` profile's example budget, once per seed. For each bug: in
how many seeds it was found, the median number of examples to the first failure, the median
total time (search + shrinking), and the shrunk graph's size (nodes, nested ones included).
The correct scheduler is checked too: it must pass in every seed (no false alarm).

    python benchmarks/bench_testing_kit.py [--seeds 20] [--examples N] [--smoke]

Exits 1 if a bug is missed in any seed or the correct scheduler is flagged.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import pathlib
import platform
import statistics
import sys
import time
from typing import Any

from hypothesis import Phase, given, seed, settings

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "docs" / "examples"))
sys.path.insert(0, str(ROOT))

from scheduler_testing import BUGS, schedule  # noqa: E402

from trioflow.pytest_plugin import FAST_EXAMPLES  # noqa: E402
from trioflow.testing import SchedulerCase, run_scheduler, scheduler_cases  # noqa: E402


def hunt(bug: str | None, run_seed: int, examples: int) -> dict[str, Any]:
    """One search: examples to the first failure, seconds in all, the shrunk case."""
    scheduler = functools.partial(schedule, bug=bug)
    seen = {"examples": 0, "first": None}
    last: list[SchedulerCase] = []

    @seed(run_seed)
    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        derandomize=False,
        phases=[Phase.generate, Phase.target, Phase.shrink],
        report_multiple_bugs=False,
    )
    @given(case=scheduler_cases())
    def prop(case: SchedulerCase) -> None:
        seen["examples"] += 1
        problems = run_scheduler(scheduler, case).violations()
        if problems:
            if seen["first"] is None:
                seen["first"] = seen["examples"]
            last.append(case)
            raise AssertionError(problems[0])

    start = time.perf_counter()
    with contextlib.suppress(AssertionError):
        prop()
    elapsed = time.perf_counter() - start
    shrunk = last[-1] if last else None
    return {
        "found": shrunk is not None,
        "first": seen["first"],
        "seconds": elapsed,
        "size": shrunk.graph.size if shrunk else None,
        "cap": shrunk.max_concurrency if shrunk else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--examples", type=int, default=FAST_EXAMPLES)
    parser.add_argument("--smoke", action="store_true", help="2 seeds, to check it still runs")
    args = parser.parse_args(argv)
    seeds = 2 if args.smoke else args.seeds
    print(
        f"trioflow.testing vs six planted scheduler bugs: {seeds} seeds, max_examples="
        f"{args.examples}; python {platform.python_version()} on {platform.machine()}"
    )
    print(
        f"{'bug':<28}{'found':>8}{'median ex.':>12}{'max ex.':>9}{'median s':>10}"
        f"{'total s':>9}{'shrunk nodes':>14}"
    )
    ok = True
    for bug in (*BUGS, None):
        runs = [hunt(bug, s, args.examples) for s in range(seeds)]
        found = [r for r in runs if r["found"]]
        name = bug or "(correct scheduler)"
        if bug is None:
            ok &= not found
            per = statistics.median(r["seconds"] for r in runs)
            print(f"{name:<28}{len(found):>5}/{seeds:<2}  false alarms; {per:.2f} s per run")
            continue
        ok &= len(found) == seeds
        firsts = [r["first"] for r in found]
        sizes = sorted({r["size"] for r in found})
        print(
            f"{name:<28}{len(found):>5}/{seeds:<2}"
            f"{statistics.median(firsts) if firsts else float('nan'):>12.1f}"
            f"{max(firsts, default=0):>9}"
            f"{statistics.median(r['seconds'] for r in runs):>10.2f}"
            f"{sum(r['seconds'] for r in runs):>9.1f}"
            f"{'/'.join(map(str, sizes)):>14}"
        )
    print("result:", "every bug found in every seed, no false alarm" if ok else "MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
