"""Length-prefixed frames over a child process's pipes (the engine process, the read process).

Each frame is a 4-byte big-endian length and that many bytes; the worker and its children
talk in frames over the child's stdin and stdout, from their event loops.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

__all__ = ["frame", "pipes", "read_frame"]

_HEADER = struct.Struct(">I")


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
    """asyncio streams over a pair of pipe file objects."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), read_from)
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, write_to)
    return reader, asyncio.StreamWriter(transport, protocol, None, loop)
