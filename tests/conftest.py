"""Shared test set-up: Hypothesis profiles and small helpers for virtual-time tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import trio
from hypothesis import HealthCheck, settings

# A fast default for local runs; `ci` is derandomized so CI failures reproduce exactly.
settings.register_profile("default", max_examples=60, deadline=None)
settings.register_profile(
    "ci",
    max_examples=150,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def live_tasks() -> int:
    """Number of tasks alive in this Trio run (the whole task tree)."""
    root = trio.lowlevel.current_root_task()
    assert root is not None
    count = 0
    stack = [root]
    while stack:
        task = stack.pop()
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


@pytest.fixture(autouse=True)
def _isolated_service_registry() -> Iterator[None]:
    """Each test starts with an empty process-wide service registry and leaves none behind."""
    from trioflow import _services

    saved = dict(_services._registry)
    _services._registry.clear()
    try:
        yield
    finally:
        _services._registry.clear()
        _services._registry.update(saved)
