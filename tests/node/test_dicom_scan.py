"""node.dicom_scan answers only where pydicom would answer the same.

``read_instance_header(fast=True)`` (the scan, pydicom where it declines) must
give what ``fast=False`` (pydicom alone) gives — the same header, or the same
error — on every file of the pydicom corpus, on every truncation of hand-made
datasets with nested sequences and encapsulated pixel data, and on thousands of
random corruptions of them.
"""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pynetdicom.dsutils import split_dataset

from node.dicom_in import _WANTED, read_instance_header
from node.dicom_scan import scan
from storage.records import InstanceHeader
from tests.corpus import corpus_files

IMPLICIT, EXPLICIT, DEFLATED = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99"


def _both(raw: bytes, syntax: str) -> tuple[object, object]:
    """What each way answers: the header, or the error's type and text."""
    answers: list[object] = []
    for fast in (True, False):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                answers.append(read_instance_header(raw, syntax, fast=fast))
        except Exception as exc:
            answers.append((type(exc).__name__, str(exc)))
    return answers[0], answers[1]


def _dataset_bytes(ds: Dataset, *, implicit: bool) -> bytes:
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, implicit
    write_dataset(out, ds)
    return out.getvalue()


def _odd_dataset() -> Dataset:
    """Sequences of undefined length, nested, with defined- and undefined-length items,
    a private sequence, text in another character set, encapsulated pixel data whose
    fragment holds the sequence delimiter's bytes."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = "1.2.3.4.1"
    ds.PatientID = "Müller^7"
    ds.Modality = "OT"
    ds.SeriesNumber = "3"
    inner = Dataset()
    inner.CodeValue, inner.CodingSchemeDesignator, inner.CodeMeaning = "1", "99X", "x"
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.9"
    item.PurposeOfReferenceCodeSequence = Sequence([inner])
    item.PurposeOfReferenceCodeSequence.is_undefined_length = True
    ds.ReferencedImageSequence = Sequence([item, Dataset()])
    ds.ReferencedImageSequence.is_undefined_length = True
    ds.add_new(0x00091010, "LO", "ACME")
    ds.add_new(0x00091011, "SQ", Sequence([Dataset()]))
    ds.Rows, ds.Columns, ds.BitsAllocated = 2, 2, 8
    fragment = b"\x01\x02\xfe\xff\xdd\xe0\x00\x00\x00\x00\x03\x04"
    ds.PixelData = encapsulate([fragment])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ds


def test_scan_reads_the_values_pydicom_reads_from_a_small_instance() -> None:
    raw = _dataset_bytes(_odd_dataset(), implicit=False)
    found = scan(raw, implicit_vr=False, wanted=_WANTED)
    assert found is not None
    assert found[0x00100020] == "Müller^7".encode("latin-1")
    assert found[0x00200011].strip() == b"3"
    assert 0x00080050 not in found  # absent stays absent
    fast, slow = _both(raw, EXPLICIT)
    assert isinstance(fast, InstanceHeader)
    assert fast == slow
    assert fast.patient_id == "Müller^7"


@pytest.mark.parametrize("syntax", [IMPLICIT, EXPLICIT])
def test_every_truncation_gets_the_same_answer_both_ways(syntax: str) -> None:
    ds = _odd_dataset()
    if syntax == IMPLICIT:
        del ds.PixelData  # encapsulated pixel data is never implicit VR
    raw = _dataset_bytes(ds, implicit=syntax == IMPLICIT)
    headers = 0
    for cut in range(len(raw) + 1):
        fast, slow = _both(raw[:cut], syntax)
        assert fast == slow, f"cut at {cut} of {len(raw)}"
        headers += isinstance(fast, InstanceHeader)
    assert headers >= 2  # the whole dataset, and cuts that pydicom reads without complaint


@pytest.mark.parametrize("syntax", [IMPLICIT, EXPLICIT])
def test_random_corruptions_get_the_same_answer_both_ways(syntax: str) -> None:
    ds = _odd_dataset()
    if syntax == IMPLICIT:
        del ds.PixelData
    raw = _dataset_bytes(ds, implicit=syntax == IMPLICIT)
    rng = random.Random(20261128)
    scanned = 0
    for case in range(3000):
        data = bytearray(raw)
        for _ in range(rng.choice((1, 1, 2, 4))):
            data[rng.randrange(len(data))] = rng.choice((0, 0xFF, 0xFE, 0xE0, rng.randrange(256)))
        fast, slow = _both(bytes(data), syntax)
        assert fast == slow, f"case {case}: {bytes(data).hex()}"
        scanned += scan(bytes(data), implicit_vr=syntax == IMPLICIT, wanted=_WANTED) is not None
    assert scanned > 1000  # the scan answered for most (values changed, structure intact)


def test_the_scan_declines_what_pydicom_would_read_differently() -> None:
    raw = _dataset_bytes(_odd_dataset(), implicit=False)
    assert scan(raw + b"\x00" * 4, implicit_vr=False, wanted=_WANTED) is None  # trailing bytes
    assert scan(b"", implicit_vr=False, wanted=_WANTED) is None
    again = Dataset()
    again.PatientID = "other"
    twice = raw + _dataset_bytes(again, implicit=False)
    assert scan(twice, implicit_vr=False, wanted=_WANTED) is None  # a wanted tag twice


def _corpus_datasets() -> list[tuple[str, bytes, str]]:
    cases = []
    for path in corpus_files():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                meta, offset = split_dataset(path)
            syntax = str(meta.TransferSyntaxUID)
        except Exception:  # not Part 10, or no transfer syntax: nothing a C-STORE carries
            continue
        cases.append((path.name, Path(path).read_bytes()[offset:], syntax))
    return cases


def test_every_corpus_file_gets_the_same_answer_both_ways() -> None:
    cases = _corpus_datasets()
    assert len(cases) > 100
    scanned = 0
    for name, raw, syntax in cases:
        fast, slow = _both(raw, syntax)
        assert fast == slow, name
        if syntax not in (DEFLATED, "1.2.840.10008.1.2.2"):
            scanned += scan(raw, implicit_vr=syntax == IMPLICIT, wanted=_WANTED) is not None
    assert scanned > len(cases) // 2  # the scan answered for most of them
