"""The trioflow pytest plugin (entry point `pytest11`), for pytest-trio users.

It is loaded by every pytest run in an environment where trioflow is installed, so it imports
nothing heavy and works without Hypothesis (the profiles are registered only when it is there).

Fixtures:
- `virtual_clock`: a `MockClock(autojump_threshold=0)`; pytest-trio runs the test on it.
- `trioflow_services`: name → instance to register for one test (empty; override it).
- `trioflow_runtime`: an open runtime with `trioflow_services` registered on it.

Hypothesis profiles `trioflow-fast` (the default for local runs) and `trioflow-ci`
(derandomized, more examples) are registered; `TRIOFLOW_HYPOTHESIS_PROFILE=ci` (or `fast`)
loads one.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import trio.testing

from ._runtime import Runtime, open_runtime

__all__ = [
    "load_profile",
    "register_profiles",
    "trioflow_runtime",
    "trioflow_services",
    "virtual_clock",
]

ENV = "TRIOFLOW_HYPOTHESIS_PROFILE"


def register_profiles() -> bool:
    """Register `trioflow-fast` and `trioflow-ci`; False when Hypothesis is not installed."""
    try:
        from hypothesis import HealthCheck, settings
    except ImportError:
        return False
    settings.register_profile("trioflow-fast", max_examples=50, deadline=None)
    settings.register_profile(
        "trioflow-ci",
        max_examples=200,
        deadline=None,
        derandomize=True,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    return True


def load_profile(default: str | None = None) -> str | None:
    """Load the profile named by `$TRIOFLOW_HYPOTHESIS_PROFILE` (`fast` or `ci`), else
    `default`; returns the name loaded, or None when neither is set."""
    name = os.environ.get(ENV) or default
    if not name or not register_profiles():
        return None
    from hypothesis import settings

    full = name if name.startswith("trioflow-") else f"trioflow-{name}"
    settings.load_profile(full)
    return full


def pytest_configure(config: pytest.Config) -> None:
    register_profiles()
    load_profile()


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
