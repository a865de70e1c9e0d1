"""Shared test set-up: Hypothesis profiles and small helpers for virtual-time tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from trioflow.pytest_plugin import load_profile

# Dogfood the plugin's profiles: `trioflow-fast` locally, `trioflow-ci` (derandomized) when
# CI sets TRIOFLOW_HYPOTHESIS_PROFILE=ci.
load_profile(default="fast")


@pytest.fixture(autouse=True)
def _isolated_service_registry(trioflow_isolated_services: None) -> Iterator[None]:
    """Each test starts with an empty service registry and leaves none behind (the plugin's
    `trioflow_isolated_services` fixture, made autouse here)."""
    yield
