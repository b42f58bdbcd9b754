"""Frames over a child's pipes: what crosses them, and the pipes' capacity."""

from __future__ import annotations

import asyncio
import fcntl
import os

from deskpulse.streams.frames import PIPE_BYTES, frame, pipes, read_frame


def test_a_document_of_megabytes_crosses_a_pipe_pair_whole_in_frames_of_its_own() -> None:
    """Two frames, one of 10 MB, written to one pipe and read from the other end in
    order and whole; both pipes hold :data:`PIPE_BYTES` once :func:`pipes` took them (a
    64 KiB pipe costs a large document some 160 turns of both event loops)."""
    big = os.urandom(10_000_000)

    async def scenario() -> tuple[list[bytes | None], list[int]]:
        down_r, down_w = os.pipe()
        up_r, up_w = os.pipe()
        with (
            os.fdopen(down_r, "rb", buffering=0) as read_down,
            os.fdopen(up_w, "wb", buffering=0) as write_up,
            os.fdopen(up_r, "rb", buffering=0) as read_up,
            os.fdopen(down_w, "wb", buffering=0) as write_down,
        ):
            reader, _ = await pipes(read_down, write_up)
            _, writer = await pipes(read_up, write_down)
            sizes = [fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) for fd in (down_r, up_w)]
            writer.write(frame(b"first") + frame(big))
            got = [await read_frame(reader), await read_frame(reader)]
            writer.close()
            got.append(await read_frame(reader))  # the end of the stream
            return got, sizes

    got, sizes = asyncio.run(scenario())
    assert got[0] == b"first"
    assert got[1] == big
    assert got[2] is None
    assert sizes == [PIPE_BYTES, PIPE_BYTES]
