"""A result dataset as a DICOM Part 10 file: whole, or as chunks that share the pixels.

A 200-slice heat map is 210 MB of float pixels. ``to_chunks`` encodes
everything but the pixel data with pydicom and hands the pixel value on as it
is (no copy into an encoder's buffer and out again), so the writer streams it
to disk; ``b"".join(to_chunks(ds)) == to_bytes(ds)``, byte for byte.
"""

from __future__ import annotations

import io
import struct

from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import ExplicitVRLittleEndian

__all__ = ["to_bytes", "to_chunks"]

# Native (not encapsulated) pixel data elements; each is the last element of its object.
_PIXELS = (Tag(0x7FE0, 0x0008), Tag(0x7FE0, 0x0009), Tag(0x7FE0, 0x0010))


def to_bytes(dataset: Dataset) -> bytes:
    """The object as a DICOM Part 10 file."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def to_chunks(dataset: Dataset) -> list[bytes | memoryview]:
    """The Part 10 file as chunks: the encoded rest, the pixel element's header, its value.

    Only for Explicit VR Little Endian with native pixel data as the last element;
    anything else comes back as one chunk from :func:`to_bytes`.
    """
    tag = _trailing_pixels(dataset)
    if tag is None:
        return [to_bytes(dataset)]
    value = dataset[tag].value
    rest = Dataset()  # the other elements, shared, not copied; the dataset is left as it is
    for element in dataset:
        if element.tag != tag:
            rest.add(element)
    rest.file_meta = dataset.file_meta
    rest.preamble = getattr(dataset, "preamble", None)
    head = to_bytes(rest)
    pad = b"\x00" if len(value) % 2 else b""  # as pydicom pads an odd-length value
    header = struct.pack(
        "<HH2sHI", tag.group, tag.element, dataset[tag].VR.encode("ascii"), 0, len(value) + len(pad)
    )
    return [head, header, memoryview(value), pad] if pad else [head, header, memoryview(value)]


def _trailing_pixels(dataset: Dataset) -> BaseTag | None:
    meta = getattr(dataset, "file_meta", None)
    if meta is None or meta.get("TransferSyntaxUID") != ExplicitVRLittleEndian:
        return None
    present = [tag for tag in _PIXELS if tag in dataset]
    if len(present) != 1 or max(dataset.keys()) != present[0]:
        return None
    element = dataset[present[0]]
    if element.is_undefined_length or not isinstance(element.value, bytes):
        return None
    if element.VR not in ("OB", "OW", "OF", "OD"):
        return None
    return present[0]
