"""The pytest side of trioflow.testing, in real pytest subprocesses: profiles and imports.

Each case runs `python -m pytest` on a one-test project in a temporary directory, with this
checkout first on the path (so the `pytest11` entry point loads this plugin), and checks which
Hypothesis profile is active inside the test.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
from hypothesis import settings

from trioflow.pytest_plugin import CI_EXAMPLES, FAST_EXAMPLES

ROOT = pathlib.Path(__file__).resolve().parent.parent

PROBE = """
import os
from hypothesis import Phase, settings

def test_profile():
    assert settings.get_current_profile_name() == os.environ["EXPECTED"]
    if os.environ["EXPECTED"].startswith("trioflow-"):
        assert Phase.explain not in settings().phases
"""


def env(**extra: str) -> dict[str, str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CI", "TRIOFLOW_HYPOTHESIS_PROFILE", "PYTEST_ADDOPTS")
        and not k.startswith(("GITHUB_", "HYPOTHESIS"))
    }
    return {**clean, "PYTHONPATH": str(ROOT), **extra}


def pytest_in(tmp_path: pathlib.Path, *args: str, **extra: str) -> None:
    (tmp_path / "test_probe.py").write_text(PROBE)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=tmp_path,
        env=env(**extra),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("args", "environ", "conftest", "expected"),
    [
        ((), {}, None, "trioflow-fast"),  # the documented default is really active
        ((), {"CI": "true"}, None, "trioflow-ci"),  # on CI, the CI profile
        ((), {"TRIOFLOW_HYPOTHESIS_PROFILE": "ci"}, None, "trioflow-ci"),
        (  # the flag works (no crash: registered in time) and beats the environment variable
            ("--hypothesis-profile=trioflow-ci",),
            {"TRIOFLOW_HYPOTHESIS_PROFILE": "fast"},
            None,
            "trioflow-ci",
        ),
        (  # and so does a profile the project's conftest loads
            (),
            {"TRIOFLOW_HYPOTHESIS_PROFILE": "ci"},
            "settings.register_profile('mine', max_examples=7)\nsettings.load_profile('mine')\n",
            "mine",
        ),
    ],
    ids=["default", "ci", "env", "flag-beats-env", "conftest-beats-env"],
)
def test_which_profile_is_active(
    tmp_path: pathlib.Path,
    args: tuple[str, ...],
    environ: dict[str, str],
    conftest: str | None,
    expected: str,
) -> None:
    if conftest is not None:
        (tmp_path / "conftest.py").write_text("from hypothesis import settings\n" + conftest)
    pytest_in(tmp_path, *args, EXPECTED=expected, **environ)


def test_profiles_skip_explain_and_ci_is_derandomized() -> None:
    fast, ci = settings.get_profile("trioflow-fast"), settings.get_profile("trioflow-ci")
    assert fast.max_examples == FAST_EXAMPLES and ci.max_examples == CI_EXAMPLES
    assert ci.derandomize and ci.database is None and ci.deadline is None
    assert all("explain" not in [p.name for p in s.phases] for s in (fast, ci))


BLOCKED = "import sys; sys.modules['hypothesis'] = None\n"


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCKED + code],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_kit_imports_and_runs_without_hypothesis() -> None:
    code = """
import functools, runpy
import trioflow.pytest_plugin as plugin
from trioflow.testing import Dag, DagGraph, FakeService, RecordingService, run_scheduler, run_virtual
assert plugin.register_profiles() is False and plugin.load_profile('ci') is None
example = runpy.run_path('docs/examples/scheduler_testing.py')
case = DagGraph(Dag(((), (0,))), durations=(1, 1), failures=(False, False))
assert run_scheduler(example['schedule'], case, max_concurrency=1).violations() == []
bad = functools.partial(example['schedule'], bug='dependent starts early')
assert run_scheduler(bad, case, max_concurrency=2).violations()
assert run_virtual(case.graph).outputs == case.expected()
import trioflow.testing as kit
for name in ('dags', 'check_scheduler'):
    try:
        getattr(kit, name)() if name == 'dags' else kit.check_scheduler(example['schedule'])
    except ImportError as exc:
        assert "pip install 'trioflow[test]'" in str(exc), exc
    else:
        raise AssertionError(name + ' worked without hypothesis')
print('ok')
"""
    proc = run_python(code)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
