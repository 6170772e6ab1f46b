"""The stdio transport: the SDK's (same claim on fds 0 and 1, same streams), with a reader that caps each
request at `[server] max_request_bytes` while it reads, never holding a longer line, and answers every line."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, BinaryIO

import anyio
import anyio.to_thread

from safe_mcp.faces.wire import PARSE_ERROR, ParseError, dump, envelope, error, load, oversize_error

__all__ = ["guarded_stdio", "read_lines"]

CHUNK = 64 * 1024


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

    async def emit(data: bytes) -> None:
        async with lock:
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
    while True:
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


def _read1(stream: BinaryIO) -> bytes:
    read1 = getattr(stream, "read1", None)
    return bytes(read1(CHUNK) if read1 is not None else stream.read(CHUNK))


def _write(stream: BinaryIO, data: bytes) -> None:
    stream.write(data)
    stream.flush()
