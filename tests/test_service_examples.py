"""The docs' service examples, swapped for fakes the way a user's test would."""

from __future__ import annotations

import importlib.util
import pathlib
import sys
from types import ModuleType

import trio

import trioflow
from trioflow.testing import FakeService, RecordingService

EXAMPLES = pathlib.Path(__file__).parent.parent / "docs" / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def test_the_trainer_can_be_swapped_for_a_fake() -> None:
    trainer = load("trainer")
    fake = FakeService(submit="job-42", inspect_job=lambda job_id: {"id": job_id, "state": "done"})
    trioflow.register_context_service("trainer", fake)
    result = await trioflow.run_async(trainer.train, {"spec": {"model": "x"}})
    assert result == {"job_id": "job-42", "status": {"id": "job-42", "state": "done"}}
    assert [(c.method, c.args, c.node_id) for c in fake.calls] == [
        ("submit", ({"model": "x"},), "train"),
        ("inspect_job", ("job-42",), "inspect_job_1"),
    ]
    assert fake.started and fake.closed


async def test_a_recording_service_forwards_to_the_real_one() -> None:
    trainer = load("trainer")
    recording = RecordingService(trainer.Trainer())
    trioflow.register_context_service("trainer", recording)
    result = await trioflow.run_async(trainer.train, {"spec": {"model": "x"}})
    assert result["job_id"] == "job-1"
    assert [c.method for c in recording.calls] == ["submit", "inspect_job"]
    assert recording.calls_to("inspect_job")[0].node_id == "inspect_job_1"


async def test_a_callable_fake_answers_context_calls() -> None:
    trioflow.register_context_service("predictor", FakeService(__call__=lambda text: text[::-1]))

    @trioflow.graph_fn(name="g", outputs=["y"])
    async def g(context: trioflow.NodeContext) -> str:
        await trio.lowlevel.checkpoint()
        return str(await context.predictor("abc"))

    assert await trioflow.run_async(g) == {"y": "cba"}
