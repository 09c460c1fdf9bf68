"""SEG frames a PACS can serve one by one, whatever the matrix.

A BINARY SEG packs one bit per pixel with no padding between frames, so when rows x
columns is not a multiple of 8 every frame after the first starts mid-byte. Orthanc (the
Debian 1.10 the tests run) answers such a frame's ``/frames/N/raw`` with 400, and OHIF,
which loads SEG frames through DICOMweb, then never shows the overlay (seen with
``ohif_snapshot.sh`` on the demo's 215 x 215 chest CT). The encoder writes those as a
pseudo-binary FRACTIONAL SEG instead; this asks the real Orthanc for every frame.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from dicomio.results.identity import Algorithm
from dicomio.results.seg import PALETTE_RGB, encode_segmentation
from dicomio.results.sources import SourceSeries
from dicomio.seg_in import load_seg_mask
from dicomio.volume_in import load_volume
from tests.dicomgen import manual_seg
from tests.dicomio.test_results import CFG, _lesion
from tests.peers import Orthanc
from tests.phantoms import write_series

ALGORITHM = Algorithm(name="m", version="1", sha256="0" * 64, device_uid="1.2.3")


def _case(tmp_path: Path, size: int) -> tuple[list[Path], np.ndarray, pydicom.Dataset]:
    """A ``size`` x ``size`` CT of 6 slices, two lesions on slices 1-3, and their SEG."""
    paths = write_series(tmp_path / f"ct{size}", np.zeros((6, size, size)), (2.0, 1.5, 1.5))
    labels = np.zeros((6, size, size), np.uint16)
    labels[1:4, 10:20, 12:21] = 1
    labels[2:4, 40:47, 30:33] = 2
    sources = SourceSeries(tuple(pydicom.dcmread(p) for p in paths))
    seg = encode_segmentation(
        sources,
        labels,
        [_lesion(((1, 10, 12), (3, 19, 20)), 270), _lesion(((2, 40, 30), (3, 46, 32)), 42)],
        [pydicom.uid.generate_uid(), pydicom.uid.generate_uid()],
        ALGORITHM,
        CFG,
        series_number=5,
        series_description="lesions",
    )
    return paths, labels, seg


@pytest.mark.parametrize(("size", "kind"), [(64, "BINARY"), (63, "FRACTIONAL")])
def test_the_seg_type_follows_the_byte_alignment_and_reads_back(
    tmp_path: Path, size: int, kind: str
) -> None:
    paths, labels, seg = _case(tmp_path, size)
    assert seg.SegmentationType == kind
    if kind == "FRACTIONAL":  # pseudo-binary: only 0 and the maximum, what OHIF accepts
        assert seg.SegmentationFractionalType == "OCCUPANCY" and seg.BitsAllocated == 8
        assert set(np.unique(seg.pixel_array)) == {0, int(seg.MaximumFractionalValue)}
    seg.save_as(tmp_path / "seg.dcm")
    volume = load_volume(paths)
    for n in (1, 2):
        mask = load_seg_mask(tmp_path / "seg.dcm", volume, {n})
        assert np.array_equal(mask, labels == n)
    colours = [
        hd.color.CIELabColor.from_dicom_value(s.RecommendedDisplayCIELabValue).to_rgb()
        for s in seg.SegmentSequence
    ]
    assert colours == list(PALETTE_RGB[:2])


@pytest.mark.network
def test_orthanc_serves_every_frame_of_a_seg_on_an_odd_matrix(
    orthanc: Orthanc, tmp_path: Path
) -> None:
    paths, labels, seg = _case(tmp_path, 63)
    seg.save_as(tmp_path / "ours.dcm")
    # the same frames as BINARY, the object the encoder used to write: the control
    binary = manual_seg([pydicom.dcmread(p) for p in paths[1:4]], labels[1:4] > 0)
    binary.save_as(tmp_path / "binary.dcm")
    orthanc.upload([tmp_path / "ours.dcm", tmp_path / "binary.dcm"])

    def frame_status(ds: pydicom.Dataset, frame: int) -> tuple[int, int]:
        (found,) = orthanc.post(
            "/tools/find", {"Level": "Instance", "Query": {"SOPInstanceUID": ds.SOPInstanceUID}}
        )
        url = f"http://127.0.0.1:{orthanc.http_port}/instances/{found}/frames/{frame}/raw"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return r.status, len(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, 0

    assert frame_status(binary, 1)[0] == 400  # why the encoder changed (Orthanc 1.10)
    for frame in range(int(seg.NumberOfFrames)):
        assert frame_status(seg, frame) == (200, 63 * 63)
