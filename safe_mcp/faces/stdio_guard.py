"""The stdio transport: the SDK's (same claim on fds 0 and 1, same streams), with a reader that caps each
request at `[server] max_request_bytes` while it reads, never holding a longer line, and answers every line."""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, BinaryIO

import anyio
import anyio.to_thread

from safe_mcp.faces.wire import PARSE_ERROR, ParseError, dump, envelope, error, load, oversize_error

__all__ = ["guarded_stdio", "read_lines"]

CHUNK = 64 * 1024
SMALL_WRITE = 4096
"""Answers up to this size go straight to a polled-writable pipe (PIPE_BUF: written whole, never blocking)."""


@asynccontextmanager
async def guarded_stdio(max_bytes: int) -> AsyncIterator[tuple[Any, Any]]:
    """The SDK's stdio transport (same claim on fds 0 and 1), reading in chunks and answering every line."""
    from mcp.server.stdio import _claim_fd, _open_stdin_diversion, _open_stdout_diversion
    from mcp.shared._context_streams import create_context_streams
    from mcp.shared.message import SessionMessage

    stdin, restore_in = _claim_fd(0, sys.stdin, "rb", _open_stdin_diversion)
    stdout, restore_out = _claim_fd(1, sys.stdout, "wb", _open_stdout_diversion)
    read_writer, read_stream = create_context_streams[SessionMessage | Exception](0)
    write_stream, write_reader = create_context_streams[SessionMessage](0)
    lock = anyio.Lock()
    written = anyio.Event()

    out_fd = _pollable_fd(stdout)

    async def emit(data: bytes) -> None:
        async with lock:
            if out_fd is not None and len(data) <= SMALL_WRITE:
                # A pipe that polls writable takes a write this small whole (PIPE_BUF atomicity): no thread hop.
                await anyio.wait_writable(out_fd)
                _write_fd(out_fd, data)
            else:
                await anyio.to_thread.run_sync(_write, stdout, data, abandon_on_cancel=True)

    async def answer(obj: dict[str, Any]) -> None:
        await emit(json.dumps(obj).encode("utf-8") + b"\n")

    async def on_line(line: bytes) -> None:
        if not line.strip():
            return
        try:
            text = line.decode("utf-8")
            # A big line (deeply nested, say) is parsed off the event loop so other requests keep moving.
            obj = load(text) if len(line) < CHUNK else await anyio.to_thread.run_sync(load, text)
        except UnicodeDecodeError:
            await answer(error(PARSE_ERROR, "Parse error: not UTF-8"))
            return
        except ParseError as exc:
            await answer(error(PARSE_ERROR, f"Parse error: {exc}"))
            return
        message, problem = envelope(obj)
        if problem is not None:
            await answer(problem)
            return
        await read_writer.send(SessionMessage(message))

    async def reader() -> None:
        async with read_writer:
            await read_lines(stdin, max_bytes, on_line, lambda head: answer(oversize_error(max_bytes, head)))

    async def writer() -> None:
        try:
            async with write_reader:
                async for session_message in write_reader:
                    await emit(dump(session_message.message))
        finally:
            written.set()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            tg.start_soon(writer)
            yield read_stream, write_stream
            with anyio.move_on_after(2):
                await written.wait()
            tg.cancel_scope.cancel()
    finally:
        for restore in (restore_out, restore_in):
            if restore is not None:
                restore()


async def read_lines(stream: BinaryIO, max_bytes: int, on_line: Callable[[bytes], Awaitable[None]],
                     on_oversize: Callable[[bytes], Awaitable[None]]) -> None:
    """Feed each newline-terminated line of `stream` to `on_line`; a line past `max_bytes` is discarded as it
    arrives (never buffered) and reported once to `on_oversize` with its first bytes."""
    buf = bytearray()
    head: bytes | None = None  # set while discarding an oversize line
    fd = _pollable_fd(stream)
    while True:
        if fd is not None:
            # The event loop waits on the pipe itself: no worker thread per read (each costs a wake-up).
            await anyio.wait_readable(fd)
            try:
                chunk = os.read(fd, CHUNK)
            except BlockingIOError:
                continue
        else:
            chunk = await anyio.to_thread.run_sync(_read1, stream, abandon_on_cancel=True)
        if not chunk:  # EOF: a last line without its newline still counts
            if head is not None:
                await on_oversize(head)
            elif buf:
                await on_line(bytes(buf))
            return
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            piece = chunk[start:] if nl < 0 else chunk[start:nl]
            if head is None and len(buf) + len(piece) > max_bytes:
                head = bytes(buf[:512] + piece[:512])[:512]
                buf.clear()
            elif head is None:
                buf += piece
            if nl < 0:
                break
            if head is not None:
                await on_oversize(head)
                head = None
            else:
                line = bytes(buf)
                buf.clear()
                await on_line(line)
            start = nl + 1


def _pollable_fd(stream: BinaryIO) -> int | None:
    """The descriptor under `stream` when the event loop can wait on it (a pipe or a socket, on POSIX); else None,
    and the stream is served from worker threads. Reading the descriptor directly is sound because nothing reads
    the claimed stream before the server does, so its buffer is empty."""
    if sys.platform == "win32":
        return None
    try:
        fd = stream.fileno()
        mode = os.fstat(fd).st_mode
    except (AttributeError, OSError, ValueError):
        return None
    return fd if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) else None


def _write_fd(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:  # a non-blocking pipe that filled after polling writable: finish it waiting
            import select

            select.select([], [fd], [])


def _read1(stream: BinaryIO) -> bytes:
    read1 = getattr(stream, "read1", None)
    return bytes(read1(CHUNK) if read1 is not None else stream.read(CHUNK))


def _write(stream: BinaryIO, data: bytes) -> None:
    stream.write(data)
    stream.flush()
