"""The suite's workloads W1-W6 as plain data: a DAG (dependency lists) plus what each node does.

Every system runs the same DAG and every node computes the same value, so each run's answer
can be checked against `expected()`. Nothing here imports an engine.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

MOD = 1_000_003
SLEEP_S = 0.01  # W4's node duration


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    sizes: tuple[int, ...]
    quick_sizes: tuple[int, ...]
    smoke_sizes: tuple[int, ...]
    stands_for: str


WORKLOADS: dict[str, Workload] = {
    w.key: w
    for w in [
        Workload(
            "W1",
            "fan-out / fan-in",
            (1_000, 10_000, 100_000, 1_000_000),
            (1_000, 10_000),
            (50,),
            "one source, N independent trivial nodes, one sink that reads all N results: a "
            "batch of small calls (pure scheduling overhead; how cost grows with N)",
        ),
        Workload(
            "W2",
            "chain",
            (1_000,),
            (1_000,),
            (20,),
            "N trivial nodes, each depending on the previous one: a sequential pipeline "
            "(latency of one hand-off, no parallelism to hide it)",
        ),
        Workload(
            "W3",
            "random layered DAG",
            (10_000,),
            (10_000,),
            (100,),
            "N trivial nodes in 20 layers, each depending on 1-3 random nodes of the layer "
            "above (fixed seed): a realistic irregular workflow",
        ),
        Workload(
            "W4",
            "sleep-bound fan-out",
            (2_000,),
            (400,),
            (16,),
            "N nodes that each sleep 10 ms (I/O-bound calls: HTTP, an LLM, a database); the "
            "ideal makespan is N x 0.01 s / max_concurrency, the ratio to it is reported",
        ),
        Workload(
            "W5",
            "mixed sleeps and CPU bursts",
            (5_000,),
            (1_000,),
            (40,),
            "N nodes, half sleeping a random 0-5 ms, half burning a random 0-20k-iteration "
            "CPU loop (fixed seed): I/O waits mixed with parsing/serialisation work",
        ),
        Workload(
            "W6",
            "services",
            (10_000,),
            (2_000,),
            (40,),
            "a SERVICE_TASK's cold start (call to ready), then N nodes that each call the "
            "started service through context.<name>() (a warm call): clients, pools, models",
        ),
    ]
}


@dataclass(frozen=True)
class Dag:
    """`deps[i]` are node i's dependencies (all < i); the answer is the last node's value.

    `profile` is what the middle nodes of a fan-out do ("" nothing, "sleep", "mixed", "svc");
    the source and the sink of a fan-out, and every node of the other shapes, do nothing.
    """

    workload: str
    deps: list[list[int]]
    profile: str = ""
    fan: bool = False
    layers: list[list[int]] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.deps)

    def work(self, i: int) -> str:
        if self.fan and 0 < i < len(self.deps) - 1:
            return self.profile
        return ""


def fan_out_in(workload: str, width: int, profile: str = "") -> Dag:
    deps: list[list[int]] = [[]] + [[0] for _ in range(width)] + [list(range(1, width + 1))]
    layers = [[0], list(range(1, width + 1)), [width + 1]]
    return Dag(workload, deps, profile, fan=True, layers=layers)


def chain(length: int) -> Dag:
    deps: list[list[int]] = [[]] + [[i] for i in range(length - 1)]
    return Dag("W2", deps, layers=[[i] for i in range(length)])


def layered(n: int, layers: int = 20, seed: int = 7) -> Dag:
    rng = random.Random(seed)
    per = max(1, n // layers)
    deps: list[list[int]] = [[] for _ in range(per)]
    for layer in range(1, layers):
        above = range((layer - 1) * per, layer * per)
        for _ in range(per):
            deps.append(sorted(rng.sample(above, rng.randint(1, min(3, per)))))
    # A sink that reads the last layer, so the answer depends on every layer.
    deps.append(list(range((layers - 1) * per, layers * per)))
    groups = [list(range(k * per, (k + 1) * per)) for k in range(layers)] + [[layers * per]]
    return Dag("W3", deps, layers=groups)


def build(workload: str, n: int) -> Dag:
    if workload == "W1":
        return fan_out_in("W1", n)
    if workload == "W2":
        return chain(n)
    if workload == "W3":
        return layered(n)
    if workload == "W4":
        return fan_out_in("W4", n, "sleep")
    if workload == "W5":
        return fan_out_in("W5", n, "mixed")
    if workload == "W6":
        return fan_out_in("W6", n, "svc")
    raise ValueError(f"unknown workload {workload!r}; known: {', '.join(WORKLOADS)}")


def value(i: int, xs: list[int]) -> int:
    return (i + sum(xs)) % MOD


def expected(dag: Dag) -> int:
    values: list[int] = []
    for i, ds in enumerate(dag.deps):
        values.append(value(i, [values[d] for d in ds]))
    return values[-1]


def plan(profile: str, i: int) -> tuple[float, int]:
    """(seconds to sleep, CPU-loop iterations) for node i of a profile."""
    if profile == "sleep":
        return SLEEP_S, 0
    if profile == "mixed":
        rng = random.Random(i * 7919 + 13)
        if rng.random() < 0.5:
            return rng.uniform(0.0, 0.005), 0
        return 0.0, rng.randint(0, 20_000)
    return 0.0, 0


def burn(iterations: int) -> int:
    """A CPU burst: pure-Python work that holds the GIL (parsing, serialisation)."""
    acc = 0
    for k in range(iterations):
        acc = (acc + k * k) % MOD
    return acc


class Svc:
    """W6's service: counts its calls; `call` computes the node's value."""

    def __init__(self) -> None:
        self.calls = 0

    async def call(self, i: int, xs: list[int]) -> int:
        self.calls += 1
        return value(i, xs)

    def call_sync(self, i: int, xs: list[int]) -> int:
        self.calls += 1
        return value(i, xs)


def ideal_seconds(dag: Dag, cap: int) -> float | None:
    """W4's ideal makespan: N x node duration / max_concurrency."""
    if dag.profile != "sleep":
        return None
    return (dag.n - 2) * SLEEP_S / cap


def describe(dag: Dag) -> dict[str, Any]:
    return {"workload": dag.workload, "nodes": dag.n, "profile": dag.profile}
