"""Every example the docs include runs, and checks its own answer."""

from __future__ import annotations

import pathlib
import re
import runpy

import pytest

ROOT = pathlib.Path(__file__).parent.parent
EXAMPLES = sorted((ROOT / "docs" / "examples").glob("*.py"))


def test_every_example_is_included_in_a_docs_page() -> None:
    pages = "\n".join(p.read_text() for p in (ROOT / "docs").glob("*.md"))
    included = set(re.findall(r'--8<-- "docs/examples/([\w.]+)"', pages))
    assert included == {p.name for p in EXAMPLES}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    runpy.run_path(str(path), run_name="__main__")
    assert capsys.readouterr().out  # each example prints what it computed


def test_demo_command_runs_an_example_graph_end_to_end(capsys: pytest.CaptureFixture[str]) -> None:
    from trioflow.cli import main

    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "'total': 33" in out
    assert out.count("DONE") == 5
    assert "outputs: {'sum': 20}" in out
