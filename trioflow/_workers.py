"""trio-parallel's worker processes, driven with one trip through the scheduler per call.

`WorkerContext.run_sync` makes five to seven trips through Trio's scheduler per call: one to
take the limiter, one before each write and each read of the pipes, and a shielded one after
each message read. With many calls in flight the Trio process is the bottleneck (the workers
wait for it), and those trips were about a third of its time per call. `DirectWorkers` drives
the same worker processes, taken from and given back to the same `WorkerContext` (which starts
them, and shuts them down when it closes), over the same pipes and wire format
(`multiprocessing.Connection`'s), but writes a job with one `os.write` and waits for its reply
with `wait_readable`: one trip per call, which is also its checkpoint.

It relies on trio-parallel's internals: the context's `_worker_cache` and `_worker_class`, a
worker's `_send_pipe`, `_recv_pipe`, `start()`, `kill()` and `wait()`, and the wire format. They
are checked before use (`DirectWorkers.of`), and only trio-parallel versions read and tested
against (`VERIFIED`) are driven directly: with another version, or on Windows (whose pipes
differ), `ProcessExecutor` calls the context's own `run_sync`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.metadata
import os
import struct
import sys
from pickle import HIGHEST_PROTOCOL
from typing import Any

import attrs
import trio

from ._slots import release_token, take_free_token

__all__ = ["DirectWorkers"]

_LENGTH = struct.Struct("!i")  # a message's length (`multiprocessing.Connection`'s header)
_LONG_LENGTH = struct.Struct("!Q")  # after a length of -1: the length of a message over 2 GiB
_LONG_HEADER = _LENGTH.pack(-1)
_READ = 1 << 16
# The trio-parallel releases whose workers this module was written and tested against.
VERIFIED = ("1.3.",)


@functools.cache
def _verified_version() -> bool:
    try:
        version = importlib.metadata.version("trio-parallel")
    except importlib.metadata.PackageNotFoundError:
        return False
    return version.startswith(VERIFIED)


@attrs.define(eq=False)
class DirectWorkers:
    """`run_sync` of a trio-parallel `WorkerContext`, with one scheduler trip per call."""

    context: Any  # trio_parallel.WorkerContext (open)
    dumps: Any  # cloudpickle's (trio-parallel's workers load with cloudpickle when it is there)
    loads: Any
    broken: type[Exception]  # trio-parallel's BrokenWorkerProcessError

    @classmethod
    def of(cls, context: Any) -> DirectWorkers | None:
        """A pool on `context`'s workers, or None if this trio-parallel cannot be driven
        directly (then use `context.run_sync`)."""
        if sys.platform == "win32" or not _verified_version():
            return None
        try:
            cloudpickle = importlib.import_module("cloudpickle")
            proc = importlib.import_module("trio_parallel._proc")
        except ImportError:
            return None
        broken = getattr(proc, "BrokenWorkerProcessError", None)
        worker_class = getattr(proc, "SpawnProcWorker", None)
        needed = ("_worker_cache", "_worker_class", "idle_timeout", "init", "retire")
        if broken is None or worker_class is None:
            return None
        if not all(hasattr(context, name) for name in needed):
            return None
        if not issubclass(context._worker_class, worker_class):
            return None
        return cls(context, cloudpickle.dumps, cloudpickle.loads, broken)

    @trio.lowlevel.enable_ki_protection
    async def run_sync(
        self,
        sync_fn: Any,
        *args: Any,
        kill_on_cancel: bool = False,
        limiter: trio.CapacityLimiter,
    ) -> Any:
        """Run `sync_fn(*args)` in a worker process: `WorkerContext.run_sync`'s contract.

        A call cancelled while it waits for a worker takes none. Once sent, a cancel kills
        the worker with `kill_on_cancel`, or else waits for the call to finish."""
        await _checkpoint_if_cancelled()
        task = trio.lowlevel.current_task()
        if not take_free_token(limiter, task):
            await limiter.acquire_on_behalf_of(task)
        try:
            while True:
                worker = await self._take()
                try:
                    job = self.dumps((sync_fn, args), protocol=HIGHEST_PROTOCOL)
                except BaseException:
                    self.context._worker_cache.append(worker)  # (nothing was sent)
                    raise
                if kill_on_cancel:
                    reply = await self._exchange(worker, job)
                else:
                    with trio.CancelScope(shield=True):
                        reply = await self._exchange(worker, job)
                if reply is not None:
                    self.context._worker_cache.append(worker)
                    return reply.unwrap()
                # The worker had exited (retired, or killed while idle): take another.
                await _checkpoint_if_cancelled()
        finally:
            release_token(limiter, task)

    async def _take(self) -> Any:
        """An idle worker of the context (trio-parallel's `SpawnProcWorker`), or a new one,
        started."""
        context = self.context
        try:
            return context._worker_cache.pop()
        except IndexError:
            worker = context._worker_class(context.idle_timeout, context.init, context.retire)
            await worker.start()
            return worker

    async def _exchange(self, worker: Any, job: bytes) -> Any:
        """Send `job` to `worker` and return its reply (an `Outcome`), or None if the worker
        had exited before it could take the job. Anything else that goes wrong on the way (a
        cancel included) leaves the worker mid-message: it is killed, and waited for."""
        try:
            n = len(job)
            # (over 2 GiB: a length of -1, then the long length)
            header = _LENGTH.pack(n) if n <= 0x7FFFFFFF else _LONG_HEADER + _LONG_LENGTH.pack(n)
            try:
                await _write(worker._send_pipe.fileno(), header + job)
            except BrokenPipeError:  # it had exited: nothing was sent
                with trio.CancelScope(shield=True):
                    await worker.wait()
                return None
            reply = await _read_message(worker._recv_pipe.fileno())
            if reply is None:
                raise self.broken("Worker died unexpectedly:", worker.proc)
            result = self.loads(reply)
        except BaseException:
            worker.kill()
            with trio.CancelScope(shield=True):
                await worker.wait()
            raise
        if result is None:  # trio-parallel's word for "retired on its idle timeout"
            with trio.CancelScope(shield=True):
                await worker.wait()
        return result


async def _write(fd: int, data: bytes) -> None:
    """Write all of `data` to a non-blocking pipe: at once if it fits (it mostly does)."""
    try:
        sent = os.write(fd, data)
    except BlockingIOError:
        sent = 0
    if sent == len(data):
        return
    with memoryview(data) as view:
        while sent < len(data):
            await trio.lowlevel.wait_writable(fd)
            with contextlib.suppress(BlockingIOError):
                sent += os.write(fd, view[sent:])


async def _read_message(fd: int) -> memoryview | None:
    """Read one message (a length, then that many bytes) from a non-blocking pipe; None at
    end of file (the writer exited)."""
    buffer = bytearray()
    found: tuple[int, int] | None = None  # where the message starts, and its length
    while True:
        await trio.lowlevel.wait_readable(fd)
        while True:  # read what is there
            try:
                data = os.read(fd, _READ if found is None else max(_READ, sum(found) - len(buffer)))
            except BlockingIOError:
                break
            if not data:
                return None
            buffer += data
            if found is None:
                found = _header(buffer)
            if found is not None and len(buffer) >= sum(found):
                if len(buffer) > sum(found):
                    raise RuntimeError("a trio-parallel worker sent more than one reply")
                return memoryview(buffer)[found[0] :]


def _header(buffer: bytearray) -> tuple[int, int] | None:
    """Where a message starts in `buffer` and its length, once its header has arrived."""
    if len(buffer) < 4:
        return None
    (size,) = _LENGTH.unpack_from(buffer)
    if size != -1:
        return 4, size
    if len(buffer) < 12:  # pragma: no cover (a message over 2 GiB)
        return None
    return 12, _LONG_LENGTH.unpack_from(buffer, 4)[0]


_checkpoint_if_cancelled = trio.lowlevel.checkpoint_if_cancelled
