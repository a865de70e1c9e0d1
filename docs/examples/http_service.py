"""SERVICE_TASK: a persistent HTTP server on 127.0.0.1, started on demand from a graph.

One cold start serves many requests (its counter keeps counting); a second instance runs beside
it on another port; closing the runtime shuts both down with no socket left open.
"""

import functools

import trio

import trioflow


class CountingServer:
    """A tiny HTTP/1.0 server that answers every request with how many it has served."""

    def __init__(self) -> None:
        self.served = 0
        self.open_connections = 0
        self.listeners: list[trio.SocketListener] = []

    @property
    def port(self) -> int:
        return int(self.listeners[0].socket.getsockname()[1])

    async def handle(self, stream: trio.SocketStream) -> None:
        self.open_connections += 1
        try:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    return
                request += chunk
            self.served += 1
            body = f"request {self.served}".encode()
            head = f"HTTP/1.0 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            await stream.send_all(head + body)
        finally:
            self.open_connections -= 1
            await stream.aclose()


starts = 0


@trioflow.service_task(start_timeout=5)
async def http_server(*, task_status: trio.TaskStatus[CountingServer]) -> None:
    global starts
    starts += 1  # counts cold starts
    server = CountingServer()
    async with trio.open_nursery() as nursery:
        serve = functools.partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1")
        server.listeners = await nursery.start(serve)
        task_status.started(server)  # ready: the port is bound and accepting


async def get(port: int) -> str:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        response = b""
        while chunk := await stream.receive_some(4096):
            response += chunk
    return response.decode().split("\r\n\r\n", 1)[1]


@trioflow.tool(outputs=["body"])
async def fetch(port: int) -> str:
    return await get(port)


@trioflow.graph_fn(name="clients", outputs=["bodies"])
async def clients(port: int, n: int) -> list[str]:
    results = await trioflow.gather(*(fetch(port=port) for _ in range(n)))
    return [r["body"] for r in results]


async def main() -> None:
    with trio.fail_after(30):
        async with trioflow.open_runtime():
            handle = await http_server()
            server = await handle  # waits until it is ready
            first = await trioflow.run_async(clients, {"port": server.port, "n": 3})
            second = await trioflow.run_async(clients, {"port": server.port, "n": 2})
            print(sorted(first["bodies"]), sorted(second["bodies"]))
            assert sorted(first["bodies"] + second["bodies"]) == [
                f"request {i}" for i in range(1, 6)
            ]  # the counter keeps counting across runs: one instance, one cold start

            other = await (await http_server())  # a second instance beside it
            assert other.port != server.port
            assert await get(other.port) == "request 1"
            assert await get(server.port) == "request 6"
            listeners = server.listeners + other.listeners
    # The runtime closed: both servers were cancelled and their sockets are closed.
    assert starts == 2
    assert all(listener.socket.fileno() == -1 for listener in listeners)
    assert server.open_connections == other.open_connections == 0
    try:
        await get(server.port)
    except OSError:
        print("shut down: connection refused")
    else:  # pragma: no cover
        raise AssertionError("the server is still accepting")


if __name__ == "__main__":
    trio.run(main)
