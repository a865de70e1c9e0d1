"""The seed's Trainer service: used from a graph_fn and a tool, and swapped for a fake in tests."""

import itertools

import trio

import trioflow


class Trainer(trioflow.Service):
    """Stands for a client of a training cluster."""

    async def start(self) -> None:
        self._jobs: dict[str, dict[str, object]] = {}
        self._ids = itertools.count(1)

    async def close(self) -> None:
        self._jobs.clear()

    async def submit(self, spec: dict[str, object]) -> str:
        await trio.sleep(0.01)  # a network round trip
        job_id = f"job-{next(self._ids)}"
        self._jobs[job_id] = {"spec": spec, "state": "queued", "by": self.ctx().node_id}
        return job_id

    async def inspect_job(self, job_id: str) -> dict[str, object]:
        await trio.sleep(0.01)
        return dict(self._jobs[job_id], id=job_id)


@trioflow.tool(outputs=["status"])
async def inspect_job(job_id: str, context: trioflow.NodeContext) -> dict[str, object]:
    return await context.trainer().inspect_job(job_id)


@trioflow.graph_fn(name="train", outputs=["job_id", "status"])
async def train(spec: dict[str, object], context: trioflow.NodeContext) -> dict[str, object]:
    job_id = await context.trainer().submit(spec)  # from the graph_fn body
    status = await inspect_job(job_id=job_id)  # from a tool
    return {"job_id": job_id, "status": status["status"]}


def main() -> None:
    trioflow.register_context_service("trainer", Trainer())
    result = trioflow.run(train, inputs={"spec": {"model": "tiny", "epochs": 1}})
    print(result)
    assert result["job_id"] == "job-1"
    assert result["status"]["state"] == "queued" and result["status"]["by"] == "train"


if __name__ == "__main__":
    main()
