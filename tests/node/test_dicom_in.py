from __future__ import annotations

import struct
import warnings

import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID

from node.dicom_in import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    file_meta_bytes,
    read_instance_header,
)


@pytest.mark.parametrize(
    ("sop_class", "sop", "ts", "ae"),
    [
        ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.840.10008.1.2.1", "CT1"),
        ("1.2.840.10008.5.1.4.1.1.4", "1.2.3.45", "1.2.840.10008.1.2.4.90", "MODALITY_01"),
        ("1.2.840.10008.5.1.4.1.1.9.1.1", "1.2", "1.2.840.10008.1.2", ""),
    ],
)
def test_file_meta_matches_pydicom_encoder(sop_class: str, sop: str, ts: str, ae: str) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop)
    meta.TransferSyntaxUID = UID(ts)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    if ae:
        meta.SourceApplicationEntityTitle = ae
    expected = DicomBytesIO()
    expected.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(expected, meta, enforce_standard=True)
    ours = file_meta_bytes(
        sop_class_uid=sop_class, sop_instance_uid=sop, transfer_syntax_uid=ts, source_ae_title=ae
    )
    assert ours == expected.getvalue()


def test_odd_values_neither_warn_nor_fail_and_text_is_decoded() -> None:
    """A DS with too many digits, a UI with a bad character, a Latin-1 Patient ID."""
    raw = _dataset(
        [
            ((0x0008, 0x0005), b"CS", b"ISO_IR 100"),
            ((0x0008, 0x0016), b"UI", b"1.2.840.10008.5.1.4.1.1.2\x00"),
            ((0x0008, 0x0018), b"UI", b"1.2.3.4\x00"),
            ((0x0008, 0x0060), b"CS", b"CT"),
            ((0x0010, 0x0020), b"LO", "MÜLLER-7".encode("latin-1")),
            ((0x0018, 0x0050), b"DS", b"1.2345678901234567"),  # 18 chars: invalid DS
            ((0x0020, 0x000D), b"UI", b"1.2.3\x00"),
            ((0x0020, 0x000E), b"UI", b"1.2.3.x "),  # invalid character
        ]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        header = read_instance_header(raw, "1.2.840.10008.1.2.1")
    assert header.patient_id == "MÜLLER-7"
    assert header.series_instance_uid == "1.2.3.x"  # refused later by the UID check
    assert header.sop_instance_uid == "1.2.3.4" and header.modality == "CT"


def _dataset(elements: list[tuple[tuple[int, int], bytes, bytes]]) -> bytes:
    out = b""
    for (group, elem), vr, value in elements:
        if len(value) % 2:
            value += b" "
        out += struct.pack("<HH2sH", group, elem, vr, len(value)) + value
    return out
