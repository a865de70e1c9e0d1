"""Shared test set-up: Hypothesis profiles and small helpers for virtual-time tests."""

from __future__ import annotations

import os
import pathlib
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


ROOT = pathlib.Path(__file__).resolve().parent.parent


def worker_pythonpath() -> str:
    """PYTHONPATH for processes that must import this checkout (and the test modules)."""
    parts = [str(ROOT), str(ROOT / "tests")]
    if os.environ.get("PYTHONPATH"):
        parts.append(os.environ["PYTHONPATH"])
    return os.pathsep.join(parts)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """One private local Ray cluster for the whole session (Ray takes seconds to start).

    Started from the main thread (Ray dies with the thread that started it), bound to
    127.0.0.1, never attached to a stale cluster (`address="local"`), with workers that
    import this checkout. `RayExecutor()` uses it, since Ray is then already initialised.
    """
    import ray

    os.environ["PYTHONPATH"] = worker_pythonpath()
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(autouse=True)
def _ray_docs_example_joins_the_session_cluster(request: pytest.FixtureRequest) -> None:
    # The Ray docs example uses the session's cluster (RayExecutor() joins an initialised Ray)
    # instead of starting a private one of its own: one cluster start per session, not two.
    if "executor_ray" in request.node.nodeid:
        request.getfixturevalue("ray_cluster")
