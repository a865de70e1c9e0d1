"""The trioflow pytest plugin (entry point `pytest11`), for pytest-trio users.

It is loaded by every pytest run in an environment where trioflow is installed, so it imports
nothing heavy but Hypothesis (when installed: its profiles must exist before pytest reads
`--hypothesis-profile`), and works without it.

Fixtures:
- `virtual_clock`: a `MockClock(autojump_threshold=0)`; pytest-trio runs the test on it.
- `trioflow_services`: name → instance to register for one test (empty; override it).
- `trioflow_runtime`: an open runtime with `trioflow_services` registered on it.
- `trioflow_isolated_services`: an empty process-wide service registry for one test.
These are per *test*: under Hypothesis' `@given` use `trioflow.testing.run_virtual(...,
services=...)` inside the test body instead, which is fresh for every example.

Hypothesis profiles, registered when this module is imported — before pytest reads
`--hypothesis-profile` and before any conftest runs:
- `trioflow-fast` (loaded by default; `trioflow-ci` instead when Hypothesis detects CI),
- `trioflow-ci`: derandomized, more examples, the database off.
Who wins, last first: `pytest --hypothesis-profile=NAME`; a profile your conftest.py loads;
`$TRIOFLOW_HYPOTHESIS_PROFILE` (`fast`, `ci` or any registered name); the default above.
Both skip Hypothesis' explain phase, which can take most of a failing test's time.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import trio.testing

from ._runtime import Runtime, open_runtime

__all__ = [
    "CI_EXAMPLES",
    "FAST_EXAMPLES",
    "load_profile",
    "register_profiles",
    "trioflow_runtime",
    "trioflow_services",
    "virtual_clock",
]

ENV = "TRIOFLOW_HYPOTHESIS_PROFILE"
# Examples per test. benchmarks/bench_testing_kit.py measures that FAST_EXAMPLES finds each of
# six classic scheduler bugs in 20 of 20 seeds (50 missed in 2-5 of 20).
FAST_EXAMPLES = 100
CI_EXAMPLES = 300


# -- Hypothesis profiles ------------------------------------------------------------------------


def register_profiles() -> bool:
    """Register `trioflow-fast` and `trioflow-ci`; False when Hypothesis is not installed."""
    try:
        from hypothesis import HealthCheck, Phase, settings
    except ImportError:
        return False
    phases = [p for p in Phase if p is not Phase.explain]
    settings.register_profile(
        "trioflow-fast", max_examples=FAST_EXAMPLES, deadline=None, phases=phases
    )
    settings.register_profile(
        "trioflow-ci",
        max_examples=CI_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=True,
        phases=phases,
        suppress_health_check=[HealthCheck.too_slow],
    )
    return True


def _full_name(name: str) -> str:
    """`ci` → `trioflow-ci` (ours first: Hypothesis has a `ci` profile of its own)."""
    from hypothesis import settings

    if name.startswith("trioflow-"):
        return name
    try:
        settings.get_profile(f"trioflow-{name}")
    except Exception:  # not one of ours: a profile registered under that very name
        return name
    return f"trioflow-{name}"


def load_profile(default: str | None = None) -> str | None:
    """Load the profile named by `$TRIOFLOW_HYPOTHESIS_PROFILE` (`fast`, `ci` or a registered
    name), else `default`; returns the name loaded, or None when neither is set (or Hypothesis
    is not installed)."""
    name = os.environ.get(ENV) or default
    if not name or not register_profiles():
        return None
    from hypothesis import settings

    full = _full_name(name)
    settings.load_profile(full)
    return full


def _load_default_profile() -> None:
    """At plugin import: the env var's profile, else trioflow-ci on CI, else trioflow-fast.
    A conftest's `load_profile` and `--hypothesis-profile` both come later, so they win."""
    if not register_profiles():
        return
    from hypothesis import settings

    on_ci = settings.get_current_profile_name() == "ci"  # Hypothesis' own CI detection
    load_profile(default="trioflow-ci" if on_ci else "trioflow-fast")


_load_default_profile()


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def virtual_clock() -> trio.testing.MockClock:
    """Virtual time that jumps whenever every task is blocked: timing assertions are exact."""
    return trio.testing.MockClock(autojump_threshold=0)


@pytest.fixture
def trioflow_isolated_services() -> Iterator[None]:
    """An empty service registry for one test; what was registered before comes back after."""
    from ._services import isolated_services

    with isolated_services():
        yield


@pytest.fixture
def trioflow_services() -> dict[str, Any]:
    """Services to register on `trioflow_runtime`; override this fixture to supply fakes."""
    return {}


@pytest.fixture
async def trioflow_runtime(trioflow_services: dict[str, Any]) -> AsyncIterator[Runtime]:
    """An open runtime for one test, with `trioflow_services` registered (and started)."""
    async with open_runtime() as runtime:
        for name, instance in trioflow_services.items():
            await runtime.register(name, instance)
        yield runtime
