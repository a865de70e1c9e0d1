"""A database connection pool service over the standard library's sqlite3.

Blocking calls run in worker threads (`run_blocking`), a bounded pool hands out connections,
`start()` opens them and `close()` closes them when the runtime closes.
"""

import sqlite3
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

import trioflow


class SqlitePool(trioflow.Service):
    def __init__(self, path: Path, size: int = 2) -> None:
        self.path = path
        self.size = size
        self.in_use = 0
        self.peak = 0
        self.closed = False

    async def start(self) -> None:
        # Trio objects are made here, inside the run that uses them (never in __init__).
        self._free: list[sqlite3.Connection] = [
            await self.run_blocking(self._connect) for _ in range(self.size)
        ]
        self._available = trio.Semaphore(self.size)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)

    async def close(self) -> None:
        for connection in self._free:
            await self.run_blocking(connection.close)
        self.closed = True

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[sqlite3.Connection]:
        async with self._available:  # bounded: at most `size` connections in use
            connection = self._free.pop()
            self.in_use += 1
            self.peak = max(self.peak, self.in_use)
            try:
                yield connection
            finally:
                self.in_use -= 1
                self._free.append(connection)

    async def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        async with self.connection() as connection:
            return await self.run_blocking(lambda: connection.execute(sql, params).fetchall())


@trioflow.tool(outputs=["ok"])
async def insert(name: str, context: trioflow.NodeContext) -> bool:
    await context.db().execute("INSERT INTO users (name) VALUES (?)", (name,))
    return True


@trioflow.tool(outputs=["names"])
async def list_users(context: trioflow.NodeContext) -> list[str]:
    rows = await context.db().execute("SELECT name FROM users ORDER BY name")
    return [name for (name,) in rows]


@trioflow.graph_fn(name="load_users", outputs=["names"], max_concurrency=8)
async def load_users(names: list[str], context: trioflow.NodeContext) -> list[str]:
    await context.db().execute("CREATE TABLE IF NOT EXISTS users (name TEXT)")
    await trioflow.map(insert, names)
    return (await list_users())["names"]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pool = SqlitePool(Path(tmp) / "users.db", size=2)
        trioflow.register_context_service("db", pool)
        names = [f"user{i:02}" for i in range(12)]
        result = trioflow.run(load_users, inputs={"names": names})
        print(result["names"][:3], "peak connections in use:", pool.peak)
        assert result == {"names": names}
        assert pool.peak <= 2 and pool.closed


if __name__ == "__main__":
    main()
