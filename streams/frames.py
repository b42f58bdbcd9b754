"""Length-prefixed frames over a child process's pipes (the engine process, the read process).

Each frame is a 4-byte big-endian length and that many bytes; the worker and its children
talk in frames over the child's stdin and stdout, from their event loops.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import struct
from typing import Any

__all__ = ["frame", "pipes", "read_frame"]

_HEADER = struct.Struct(">I")

#: The capacity asked of each pipe (Linux's default is 64 KiB, and 1 MiB is what an
#: unprivileged process may ask by default, ``/proc/sys/fs/pipe-max-size``). A read's 10 MB
#: document or a refresh's exposition of a few MB crossed a 64 KiB pipe in some 160 turns
#: of both processes' event loops, each waiting for its process to be scheduled again on a
#: busy host: 35 - 120 ms for a document; a sixteenth of the turns with 1 MiB.
PIPE_BYTES = 1 << 20


def frame(body: bytes) -> bytes:
    """``body`` as one frame."""
    return _HEADER.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> bytes | None:
    """One frame from an asyncio stream; ``None`` at end of stream."""
    try:
        (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
        return await reader.readexactly(size)
    except asyncio.IncompleteReadError:
        return None


async def pipes(read_from: Any, write_to: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """asyncio streams over a pair of pipe file objects, each pipe asked to hold
    :data:`PIPE_BYTES` (kept as it is where the system refuses)."""
    for pipe in (read_from, write_to):
        with contextlib.suppress(OSError, AttributeError, ValueError):
            fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), read_from)
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, write_to)
    return reader, asyncio.StreamWriter(transport, protocol, None, loop)
