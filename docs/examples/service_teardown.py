"""Service teardown: fixture-style generators, bounded closes, errors that are never lost.

A generator service tears down after its bare `yield`, like a pytest fixture; a registered
service whose `close()` hangs is cut short after its `close_timeout`, the others are still
closed (in reverse start order), and the runtime's exit raises a `ServiceError` naming it.
Runs in virtual time, so the 2-second bound costs nothing.
"""

from collections.abc import AsyncIterator

import trio
import trio.testing

import trioflow

log: list[str] = []


@trioflow.service_task
async def connection(name: str) -> AsyncIterator[str]:
    log.append(f"open {name}")
    yield f"connection {name}"
    await trio.sleep(0.5)  # teardown may await: it is shielded and bounded
    log.append(f"closed {name}")


class Cache(trioflow.Service):
    async def close(self) -> None:
        log.append("cache closed")


class Stuck(trioflow.Service):
    close_timeout = 2.0  # seconds its close() may take (default 10)

    async def close(self) -> None:
        await trio.sleep_forever()  # a bug: it never returns


async def main() -> None:
    with trioflow.isolated_services({"cache": Cache(), "stuck": Stuck()}):
        try:
            async with trioflow.open_runtime():
                await (await connection("a"))
                await (await connection("b"))
        except trioflow.ServiceError as exc:
            log.append(f"raised: {exc}")
    print("\n".join(log))
    assert log == [
        "open a",
        "open b",
        "closed b",
        "closed a",
        "cache closed",  # still closed after "stuck" was given up on
        "raised: service 'stuck' did not close within 2.0s",
    ]
    assert trio.current_time() == 0.5 + 0.5 + 2.0


if __name__ == "__main__":
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
