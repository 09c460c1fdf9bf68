"""Raw deflate (RFC 1951) of a stream on several cores: independent chunks, one valid stream.

What Deflated Explicit VR Little Endian carries after the File Meta Information.
Each chunk is compressed on its own thread (zlib releases the GIL) and ends with
a sync flush — an empty stored block, byte-aligned, not final — and the last
one with the final block, so the chunks written one after another are a single
deflate stream that any inflater reads (what ``pigz`` does). The chunks share
no dictionary: a little ratio is lost at each 4 MiB border.

Level 3 (zlib's fast strategy): the 210 MB attention map of a 200-slice CT
deflates to 7.0 MB in 0.27 s on two threads, against 5.0 MB in 1.34 s at
zlib's default level on one (README, Speed).
"""

from __future__ import annotations

import os
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

__all__ = ["CHUNK_BYTES", "LEVEL", "deflate_stream"]


class Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


class Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...


CHUNK_BYTES = 1 << 22
LEVEL = 3


def _deflate(chunk: bytes, last: bool) -> bytes:
    compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(chunk) + compressor.flush(
        zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH
    )


def deflate_stream(
    source: Readable,
    sink: Writable,
    *,
    threads: int | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> int:
    """Write the rest of ``source`` raw-deflated into ``sink``; the bytes written.

    At most ``threads`` + 1 chunks are held at a time (default: the machine's
    cores, at most 4), so memory does not grow with the file.
    """
    workers = threads or min(4, os.cpu_count() or 1)
    written = 0
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="deflate") as pool:
        pending: deque[Future[bytes]] = deque()
        chunk = source.read(chunk_bytes)
        while True:
            following = source.read(chunk_bytes) if chunk else b""
            last = not following
            pending.append(pool.submit(_deflate, chunk, last))
            while pending and (last or len(pending) >= workers):
                out = pending.popleft().result()
                sink.write(out)
                written += len(out)
            if last:
                return written
            chunk = following
