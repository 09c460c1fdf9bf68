"""Reading received datasets with pydicom: the header the index needs, and file meta.

Nothing here decodes pixel data: the node stores the dataset bytes exactly as
received and reads only the attributes it indexes.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from functools import partial
from io import BytesIO
from typing import Any

from pydicom.charset import python_encoding
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
)

from node.dicom_scan import scan
from node.errors import MalformedDataset, MissingAttribute
from storage.records import InstanceHeader

__all__ = [
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "decode_dataset",
    "file_meta_bytes",
    "read_instance_header",
]

#: ainode's Implementation Class UID (a 2.25 UUID-derived UID, fixed forever).
IMPLEMENTATION_CLASS_UID = "2.25.230811597091623041690644274148045364484"
IMPLEMENTATION_VERSION_NAME = "AINODE_0_1"

_UNDEFINED_LENGTH = 0xFFFFFFFF

_REQUIRED = (
    ("SOPClassUID", 0x00080016, "(0008,0016) SOP Class UID"),
    ("SOPInstanceUID", 0x00080018, "(0008,0018) SOP Instance UID"),
    ("StudyInstanceUID", 0x0020000D, "(0020,000D) Study Instance UID"),
    ("SeriesInstanceUID", 0x0020000E, "(0020,000E) Series Instance UID"),
)
_OPTIONAL = {
    "patient_id": (0x00100020, 64),
    "issuer_of_patient_id": (0x00100021, 64),
    "accession_number": (0x00080050, 64),
    "study_date": (0x00080020, 8),
    "study_description": (0x00081030, 64),
    "modality": (0x00080060, 16),
    "body_part_examined": (0x00180015, 64),
    "series_description": (0x0008103E, 64),
    "series_number": (0x00200011, 12),
    "instance_number": (0x00200013, 12),
}


def _inflate(raw: bytes) -> bytes:
    try:
        return zlib.decompressobj(-zlib.MAX_WBITS).decompress(raw)
    except zlib.error as exc:
        raise MalformedDataset(f"deflated dataset does not inflate: {exc}") from None


_CHARSET = 0x00080005


def _codec(charset: str) -> str:
    """Python's codec for the first Specific Character Set term (default: ASCII/Latin-1).

    ISO 2022 code extensions (escape sequences) are decoded with the first
    term only, with replacement characters: enough to index, never to fail.
    """
    first = charset.split("\\")[0].strip() if charset else ""
    return python_encoding.get(first, "iso8859")


def _decoded(value: Any, codec: str) -> str:
    """An attribute's value as text, straight from the raw bytes.

    The node stores what it receives byte for byte and reads only a few
    attributes: odd values elsewhere (a UI with a bad character, a DS with too
    many digits) must neither warn per instance nor fail the store, and
    pydicom's global reading mode is not ours to switch. So values are
    decoded here, never converted (and validated) by pydicom; the UIDs the
    node relies on are checked in node.receive.
    """
    if value is None:
        return ""
    if isinstance(value, bytes):
        text = value.decode(codec, errors="replace")
    elif isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        text = "\\".join(str(v) for v in value)
    else:
        text = str(value)
    return text.strip(" \x00")


def _text(ds: Dataset, tag: int, codec: str) -> str:
    elem = ds.get_item(tag)
    return _decoded(None if elem is None else elem.value, codec)


def _check_complete(ds: Dataset) -> None:
    """pydicom reads a short value without complaint: a truncated dataset must not pass."""
    for elem in ds.elements():
        if isinstance(elem, RawDataElement) and elem.length != _UNDEFINED_LENGTH:
            got = len(elem.value) if elem.value is not None else 0
            if got < elem.length:
                raise MalformedDataset(
                    f"dataset truncated in ({elem.tag.group:04X},{elem.tag.element:04X}): "
                    f"{got} of {elem.length} bytes"
                )


def decode_dataset(raw: bytes, transfer_syntax_uid: str) -> Dataset:
    """Dataset bytes as received in ``transfer_syntax_uid`` (deflated ones inflated first);
    values stay raw until read. Raises MalformedDataset, or pydicom's errors, on bad bytes."""
    data = _inflate(raw) if transfer_syntax_uid == DeflatedExplicitVRLittleEndian else raw
    return _read(data, transfer_syntax_uid)


def _read(data: bytes, transfer_syntax_uid: str) -> Dataset:
    """Dataset bytes, inflated already, as pydicom reads them (values raw until read)."""
    return read_dataset(
        BytesIO(data),
        is_implicit_VR=transfer_syntax_uid == ImplicitVRLittleEndian,
        is_little_endian=transfer_syntax_uid != ExplicitVRBigEndian,
    )


_WANTED = frozenset(
    [_CHARSET, *(tag for _, tag, _ in _REQUIRED), *(tag for tag, _ in _OPTIONAL.values())]
)


def _header(
    value: Callable[[int, str], str], transfer_syntax_uid: str
) -> tuple[InstanceHeader, dict[str, str]]:
    """The header from ``value(tag, codec)``, and the required UIDs by keyword."""
    codec = _codec(value(_CHARSET, "ascii"))
    values = {kw: value(tag, "ascii") for kw, tag, _ in _REQUIRED}
    header = InstanceHeader(
        sop_class_uid=values["SOPClassUID"],
        sop_instance_uid=values["SOPInstanceUID"],
        study_instance_uid=values["StudyInstanceUID"],
        series_instance_uid=values["SeriesInstanceUID"],
        transfer_syntax_uid=transfer_syntax_uid,
        **{field: value(tag, codec)[:limit] for field, (tag, limit) in _OPTIONAL.items()},
    )
    return header, values


def read_instance_header(
    raw: bytes, transfer_syntax_uid: str, *, fast: bool = True
) -> InstanceHeader:
    """Parse a received dataset and return what the index keeps.

    ``fast``: first try :func:`node.dicom_scan.scan`, which answers for the common
    case with the values pydicom would read; pydicom reads whatever it declines.

    Raises
    ------
    MalformedDataset
        The bytes are not a dataset in ``transfer_syntax_uid``.
    MissingAttribute
        A UID the node needs is absent or empty.
    """
    try:
        data = _inflate(raw) if transfer_syntax_uid == DeflatedExplicitVRLittleEndian else raw
        found = None
        if fast and transfer_syntax_uid != ExplicitVRBigEndian:
            found = scan(
                data, implicit_vr=transfer_syntax_uid == ImplicitVRLittleEndian, wanted=_WANTED
            )
        if found is not None:
            header, values = _header(lambda tag, codec: _decoded(found.get(tag), codec),
                                     transfer_syntax_uid)  # fmt: skip
        else:
            ds = _read(data, transfer_syntax_uid)
            if len(ds) == 0:
                raise MalformedDataset("empty dataset")
            _check_complete(ds)
            header, values = _header(partial(_text, ds), transfer_syntax_uid)
    except MalformedDataset:
        raise
    except Exception as exc:  # pydicom raises many types on corrupt input
        raise MalformedDataset(f"cannot parse dataset: {type(exc).__name__}: {exc}") from None
    for keyword, _, name in _REQUIRED:
        if not values[keyword]:
            raise MissingAttribute(f"missing {name}")
    return header


def _element(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    """One Explicit VR Little Endian element with a 2-byte length (PS3.5 7.1.2)."""
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def _padded(text: str, pad: bytes) -> bytes:
    raw = text.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


def file_meta_bytes(
    *, sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, source_ae_title: str
) -> bytes:
    """The Part 10 preamble, prefix and File Meta Information (PS3.10 7.1).

    Packed directly rather than through pydicom's writer: it runs for every
    received instance, and pydicom's generic encoder costs ~1 ms here. The
    test suite checks the bytes against pydicom's ``write_file_meta_info``.
    """
    body = b"".join(
        [
            # (0002,0001) File Meta Information Version: OB, 4-byte length.
            struct.pack("<HH2sHI", 2, 1, b"OB", 0, 2) + b"\x00\x01",
            _element(2, 0x0002, b"UI", _padded(sop_class_uid, b"\x00")),
            _element(2, 0x0003, b"UI", _padded(sop_instance_uid, b"\x00")),
            _element(2, 0x0010, b"UI", _padded(transfer_syntax_uid, b"\x00")),
            _element(2, 0x0012, b"UI", _padded(IMPLEMENTATION_CLASS_UID, b"\x00")),
            _element(2, 0x0013, b"SH", _padded(IMPLEMENTATION_VERSION_NAME, b" ")),
            _element(2, 0x0016, b"AE", _padded(source_ae_title, b" ")) if source_ae_title else b"",
        ]
    )
    group_length = _element(2, 0x0000, b"UL", struct.pack("<I", len(body)))
    return b"\x00" * 128 + b"DICM" + group_length + body
