"""The stdio reader gives the same lines whatever stdin is: a pipe (waited on by the event loop) or a file (read
from worker threads): split at newlines however the bytes arrive, an oversize line reported once and dropped, a
last line without its newline still delivered."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from typing import BinaryIO

import anyio
import pytest

from safe_mcp.faces.stdio_guard import _pollable_fd, read_lines

pytestmark = pytest.mark.anyio

CAP = 100
PIECES = [b'{"a":1}\n{"b"', b':2}\n', b"x" * 150, b"y" * 150 + b"\n", b"\n", b'{"c":3}\n{"tail":true}']
EXPECTED = [b'{"a":1}', b'{"b":2}', ("oversize", b"x" * 150), b'{"c":3}', b'{"tail":true}']


async def _collect(stream: BinaryIO) -> list[object]:
    got: list[object] = []

    async def on_line(line: bytes) -> None:
        if line.strip():
            got.append(line)

    async def on_oversize(head: bytes) -> None:
        got.append(("oversize", head[:150]))

    with anyio.fail_after(10):
        await read_lines(stream, CAP, on_line, on_oversize)
    return got


async def test_a_pipe_is_read_by_the_event_loop_and_gives_every_line() -> None:
    r, w = os.pipe()

    def feed() -> None:
        for piece in PIECES:  # in separate writes, with pauses: lines arrive split across reads
            os.write(w, piece)
            time.sleep(0.02)
        os.close(w)

    with os.fdopen(r, "rb") as stream:
        assert _pollable_fd(stream) == r
        writer = threading.Thread(target=feed)
        writer.start()
        got = await _collect(stream)
        writer.join()
    assert got == EXPECTED


async def test_a_file_is_read_from_threads_and_gives_the_same_lines() -> None:
    with tempfile.TemporaryFile() as f:
        f.write(b"".join(PIECES))
        f.seek(0)
        assert _pollable_fd(f) is None  # a regular file cannot be polled
        assert await _collect(f) == EXPECTED
