"""The built-in services every context has: channel, memory, artifacts and kv.

Each is small, lazy and offline: nothing is created before a node asks for it, nothing touches
the network. `channel()` sends messages out of a run (to the log and to subscribers),
`memory()` is a per-run event log, `artifacts()` a content-addressed store on local disk, and
`kv()` a small in-memory key-value store shared by the runs of one runtime.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from ._errors import ServiceError

__all__ = [
    "ArtifactStore",
    "Channel",
    "ChannelMessage",
    "KeyValueStore",
    "MemoryEvent",
    "MessageHub",
    "RunMemory",
]

_log = logging.getLogger("trioflow.channel")


@attrs.frozen
class ChannelMessage:
    """One message a node sent out of its run."""

    run_id: str
    graph_id: str
    node_id: str
    text: str
    at: float  # trio clock


@attrs.define(eq=False)
class MessageHub:
    """Fans channel messages out to every subscriber of one runtime."""

    _subscribers: list[trio.MemorySendChannel[ChannelMessage]] = attrs.field(factory=list)

    def publish(self, message: ChannelMessage) -> None:
        for send in list(self._subscribers):
            try:
                send.send_nowait(message)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                self._subscribers.remove(send)

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[trio.MemoryReceiveChannel[ChannelMessage]]:
        """Receive every message sent while the block is open: `async for m in messages`."""
        send, receive = trio.open_memory_channel[ChannelMessage](float("inf"))
        self._subscribers.append(send)
        try:
            async with receive:
                yield receive
        finally:
            if send in self._subscribers:
                self._subscribers.remove(send)
            await send.aclose()


@attrs.define(eq=False)
class Channel:
    """`context.channel()`: messages out of a run, to the log and to subscribers."""

    hub: MessageHub
    run_id: str
    graph_id: str
    node_id: str

    async def send_text(self, text: str) -> None:
        """Send one text message."""
        message = ChannelMessage(
            self.run_id, self.graph_id, self.node_id, str(text), trio.current_time()
        )
        _log.info("[%s/%s] %s", self.run_id, self.node_id, message.text)
        self.hub.publish(message)
        await trio.lowlevel.checkpoint()


@attrs.frozen
class MemoryEvent:
    """One entry of a run's memory."""

    kind: str
    data: Any
    node_id: str
    at: float


@attrs.define(eq=False)
class RunMemory:
    """`context.memory()`: an append-only event log for one run, with simple queries."""

    run_id: str
    _events: list[MemoryEvent] = attrs.field(factory=list)

    def record(self, kind: str, data: Any = None, *, node_id: str = "") -> MemoryEvent:
        """Append an event (kind, data) stamped with the node and the Trio clock."""
        if not isinstance(kind, str) or not kind:
            raise ServiceError(f"memory event kind must be a non-empty string, got {kind!r}")
        event = MemoryEvent(kind, data, node_id, trio.current_time())
        self._events.append(event)
        return event

    def events(self, kind: str | None = None, *, node_id: str | None = None) -> list[MemoryEvent]:
        """Events in order, optionally only of one kind and/or from one node."""
        return [
            e
            for e in self._events
            if (kind is None or e.kind == kind) and (node_id is None or e.node_id == node_id)
        ]

    def last(self, kind: str) -> MemoryEvent | None:
        """The most recent event of a kind, or None."""
        for event in reversed(self._events):
            if event.kind == kind:
                return event
        return None

    def __len__(self) -> int:
        return len(self._events)


@attrs.define(eq=False)
class NodeMemory:
    """The memory of a run as seen from one node: records are stamped with its id."""

    memory: RunMemory
    node_id: str

    async def record(self, kind: str, data: Any = None) -> MemoryEvent:
        event = self.memory.record(kind, data, node_id=self.node_id)
        await trio.lowlevel.checkpoint()
        return event

    def events(self, kind: str | None = None, *, node_id: str | None = None) -> list[MemoryEvent]:
        return self.memory.events(kind, node_id=node_id)

    def last(self, kind: str) -> MemoryEvent | None:
        return self.memory.last(kind)


_CAS = "cas://sha256/"


@attrs.define(eq=False)
class ArtifactStore:
    """`context.artifacts()`: a content-addressed store on local disk.

    `put` stores bytes (or a file's content) once under its sha256 and returns
    `cas://sha256/<hex>`; writes are atomic (a temp file renamed into place).
    """

    root: Path

    def path(self, uri: str) -> Path:
        """The local file holding an artifact."""
        if not isinstance(uri, str) or not uri.startswith(_CAS):
            raise ServiceError(f"not an artifact URI: {uri!r}; expected {_CAS}<hex>")
        digest = uri.removeprefix(_CAS)
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ServiceError(f"bad sha256 in artifact URI {uri!r}")
        return self.root / digest[:2] / digest[2:]

    async def put(self, source: bytes | str | os.PathLike[str]) -> str:
        """Store bytes, or the content of the file at a path; returns its `cas://` URI."""
        if isinstance(source, bytes | bytearray | memoryview):
            data = bytes(source)
        else:
            data = await trio.Path(source).read_bytes()
        uri = _CAS + hashlib.sha256(data).hexdigest()
        await trio.to_thread.run_sync(self._write_once, self.path(uri), data)
        return uri

    @staticmethod
    def _write_once(target: Path, data: bytes) -> None:
        if target.exists():
            return  # content-addressed: same bytes, same file; never stored twice
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        except BaseException:
            os.unlink(tmp)
            raise

    async def get(self, uri: str) -> bytes:
        """The bytes of an artifact; `ServiceError` if it is not in the store."""
        target = self.path(uri)
        try:
            return await trio.Path(target).read_bytes()
        except FileNotFoundError:
            raise ServiceError(f"artifact {uri!r} is not in the store at {self.root}") from None


@attrs.define(eq=False)
class KeyValueStore:
    """`context.kv()`: a small in-memory key-value store, one per runtime."""

    _data: dict[str, Any] = attrs.field(factory=dict)

    async def get(self, key: str, default: Any = None) -> Any:
        await trio.lowlevel.checkpoint()
        return self._data.get(key, default)

    async def set(self, key: str, value: Any) -> None:
        await trio.lowlevel.checkpoint()
        self._data[key] = value

    async def delete(self, key: str) -> None:
        await trio.lowlevel.checkpoint()
        self._data.pop(key, None)
