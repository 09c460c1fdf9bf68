from __future__ import annotations

import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID

from node.dicom_in import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, file_meta_bytes


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
