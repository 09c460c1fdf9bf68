"""node.deflate: chunks deflated on their own threads are one stream that inflates to the source."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest

from node.deflate import deflate_stream


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = inflater.decompress(data) + inflater.flush()
    assert inflater.eof and not inflater.unused_data  # one stream, ended by its final block
    return out


def _source(size: int) -> bytes:
    # A smooth float map with noise in its low bits: compressible, never uniform.
    values = np.linspace(0.0, 1.0, size // 4, dtype=np.float32)
    noise = np.random.default_rng(3).integers(0, 8, size // 4).astype(np.float32) / 1024
    return (values + noise).tobytes() + b"\x01\x02\x03"[: size % 4]


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("size", [0, 1, 4096, 4096 * 5, 4096 * 5 + 7])
def test_the_chunks_are_one_stream_of_the_source(size: int, threads: int) -> None:
    source = _source(size)
    sink = io.BytesIO()
    written = deflate_stream(io.BytesIO(source), sink, threads=threads, chunk_bytes=4096)
    assert written == len(sink.getvalue())
    assert _inflate(sink.getvalue()) == source


def test_it_deflates_from_where_the_source_stands_and_in_order() -> None:
    head, body = b"H" * 132, _source(40_000)
    source = io.BytesIO(head + body)
    source.seek(len(head))
    sink = io.BytesIO()
    deflate_stream(source, sink, threads=4, chunk_bytes=1000)  # 40 chunks, 4 at a time
    assert _inflate(sink.getvalue()) == body
    assert len(sink.getvalue()) < len(body)
