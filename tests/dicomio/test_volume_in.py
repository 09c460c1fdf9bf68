"""Series -> volume: ordering, geometry, rescale, decoding, and refusals."""

from __future__ import annotations

import os
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from core.errors import PermanentError
from core.retry import RetryPolicy
from dicomio.errors import InconsistentSeries, MissingData
from dicomio.volume_in import is_axial, load_volume, load_waveform, scan_studies, series_files
from inference.preprocess import prepare_waveform
from inference.spec import InputSpec
from tests.dicomgen import ct_slice


def _oblique_series(folder: Path, *, count: int = 6) -> tuple[list[Path], dict]:
    """Slices tilted 30 degrees about x, spacing 0.7 x 0.9 mm, 2.5 mm apart."""
    folder.mkdir()
    angle = np.deg2rad(30)
    row = np.array([1.0, 0.0, 0.0])
    col = np.array([0.0, np.cos(angle), np.sin(angle)])
    normal = np.cross(row, col)
    origin = np.array([-10.0, 5.0, 30.0])
    study, series = generate_uid(), generate_uid()
    paths = []
    for k in range(count):
        ds = ct_slice(study_uid=study, series_uid=series, index=k, size=8)
        ds.Rows, ds.Columns = 8, 10
        ds.PixelData = (np.arange(80, dtype="<u2") + 100 * k).tobytes()
        ds.PixelSpacing = [0.9, 0.7]  # row spacing (between rows), column spacing
        ds.ImageOrientationPatient = [*row, *col]
        ds.ImagePositionPatient = list(origin + 2.5 * k * normal)
        ds.InstanceNumber = count - k  # deliberately reversed: must not be used
        ds.RescaleSlope, ds.RescaleIntercept = 2, -1000
        path = folder / f"{generate_uid()}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    random.Random(3).shuffle(paths)
    return paths, {"row": row, "col": col, "normal": normal, "origin": origin}


def test_geometry_matches_hand_computation(tmp_path: Path) -> None:
    paths, g = _oblique_series(tmp_path / "s")
    v = load_volume(paths)
    assert v.array.shape == (6, 8, 10)
    assert v.spacing == pytest.approx((2.5, 0.9, 0.7))
    # Voxel (k, j, i) = origin + i*0.7*row + j*0.9*col + k*2.5*normal, by hand:
    for k, j, i in [(0, 0, 0), (5, 7, 9), (2, 3, 4)]:
        expected = g["origin"] + i * 0.7 * g["row"] + j * 0.9 * g["col"] + k * 2.5 * g["normal"]
        assert v.to_patient([k, j, i]) == pytest.approx(expected)
    # Order by position along the normal, rescale applied: slice k holds 2*(raw) - 1000.
    raw = np.arange(80).reshape(8, 10)
    for k in range(6):
        assert np.array_equal(v.array[k], 2 * (raw + 100 * k) - 1000.0)
    assert not is_axial(v.row_direction, v.column_direction)


def _series(tmp_path: Path, count: int, tweak=None) -> list[Path]:
    study, series = generate_uid(), generate_uid()
    paths = []
    for k in range(count):
        ds = ct_slice(study_uid=study, series_uid=series, index=k, size=8)
        if tweak:
            tweak(k, ds)
        path = tmp_path / f"{k}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@pytest.mark.parametrize(
    ("tweak", "count", "message"),
    [
        (None, 1, "single slice: a volume needs at least 2"),
        (
            lambda k, ds: setattr(ds, "ImagePositionPatient", [0, 0, 0 if k < 2 else -1.25 * k]),
            4,
            "duplicate slice position",
        ),
        (
            lambda k, ds: setattr(
                ds, "ImagePositionPatient", [0, 0, -1.25 * k - (5 if k > 2 else 0)]
            ),
            5,
            "gap or uneven spacing",
        ),
        (
            lambda k, ds: setattr(
                ds, "ImageOrientationPatient", [0, 1, 0, 0, 0, -1] if k == 2 else [1, 0, 0, 0, 1, 0]
            ),
            4,
            "mixed orientations",
        ),
    ],
)
def test_inconsistent_series_fail_with_reason(tmp_path: Path, tweak, count, message) -> None:
    with pytest.raises(InconsistentSeries, match=message):
        load_volume(_series(tmp_path, count, tweak))


def test_mixed_sizes_fail(tmp_path: Path) -> None:
    paths = _series(tmp_path, 3)
    ds = dcmread(paths[1])
    ds.Rows, ds.Columns = 4, 16
    ds.save_as(paths[1], enforce_file_format=True)
    with pytest.raises(InconsistentSeries, match="mixed image sizes: 8x8 and 4x16"):
        load_volume(paths)


@pytest.mark.parametrize("name", ["MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"])
def test_compressed_series_equals_pydicom_decode(tmp_path: Path, name: str) -> None:
    source = get_testdata_file(name, download=False)
    assert source is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        template = dcmread(source)
        expected = template.pixel_array.astype(np.float32) * float(
            template.get("RescaleSlope", 1)
        ) + float(template.get("RescaleIntercept", 0))
    paths = []
    for k in range(3):  # same compressed frame at three positions: a small series
        ds = dcmread(source)
        ds.SOPInstanceUID = generate_uid()
        ds.ImagePositionPatient = [0.0, 0.0, 5.0 * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        path = tmp_path / f"{k}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert dcmread(path).file_meta.TransferSyntaxUID == template.file_meta.TransferSyntaxUID
        paths.append(path)
    v = load_volume(paths)
    for k in range(3):
        assert np.array_equal(v.array[k], expected)


def test_ecg_loads_in_millivolts() -> None:
    path = Path(get_testdata_file("waveform_ecg.dcm", download=False))
    w = load_waveform(path)
    ds = dcmread(path)
    mux = ds.WaveformSequence[0]
    assert w.data.shape == (12, 10000)
    assert w.sampling_hz == 1000.0
    assert w.units == "mV"
    assert w.lead_names[0] == "Lead I (Einthoven)" and len(set(w.lead_names)) == 12
    # By hand: raw int16 * sensitivity (uV) * correction + baseline, then uV -> mV.
    raw = np.frombuffer(mux.WaveformData, dtype="<i2").reshape(-1, 12)
    for c, channel in enumerate(mux.ChannelDefinitionSequence):
        uv = raw[:, c] * float(channel.ChannelSensitivity) * float(
            channel.ChannelSensitivityCorrectionFactor
        ) + float(channel.ChannelBaseline)
        assert w.data[c] == pytest.approx(uv / 1000.0, abs=1e-6)


def _drop(keyword: str, at: int = 1):
    def tweak(k: int, ds) -> None:
        if k == at:
            delattr(ds, keyword)

    return tweak


@pytest.mark.parametrize(
    ("tweak", "message"),
    [
        (_drop("Rows"), r"1.dcm: no \(0028,0010\) Rows"),
        (_drop("Columns", at=0), r"0.dcm: no \(0028,0011\) Columns"),
        (_drop("SOPInstanceUID", at=2), r"2.dcm: no \(0008,0018\) SOP Instance UID"),
        (
            lambda k, ds: setattr(ds, "RescaleSlope", "9.876543"),  # made 'abc' in the file below
            r"Rescale Slope 'abc' is not a number",
        ),
    ],
)
def test_missing_or_unusable_attributes_are_permanent_with_a_reason(
    tmp_path: Path, tweak, message
) -> None:
    """Retrying cannot fix these: a PermanentError naming the file and the attribute."""
    paths = _series(tmp_path, 3, tweak)
    for path in paths:  # pydicom will not write an invalid DS: edit the bytes
        path.write_bytes(path.read_bytes().replace(b"9.876543", b"abc     "))
    with pytest.raises(PermanentError, match=message) as info:
        load_volume(paths)
    assert not RetryPolicy().retryable(info.value)


def test_ecg_without_a_lead_the_model_needs_is_permanent() -> None:
    w = load_waveform(Path(get_testdata_file("waveform_ecg.dcm", download=False)))
    spec = InputSpec(leads=("Lead I (Einthoven)", "Lead V7"))
    with pytest.raises(MissingData, match="lacks the lead\\(s\\) the model needs: Lead V7"):
        prepare_waveform(w, spec)


def test_enhanced_multiframe_rescales_each_frame_with_its_own_values(tmp_path: Path) -> None:
    """Per-frame Pixel Value Transformation: frame 2 has slope 2 and intercept -50."""
    source = get_testdata_file("eCT_Supplemental.dcm", download=False)
    assert source is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dcmread(source)
        raw = ds.pixel_array.astype(np.float32)
        frames = ds.PerFrameFunctionalGroupsSequence
        for i, frame in enumerate(frames):
            pvt = Dataset()
            pvt.RescaleSlope = 1 + i
            pvt.RescaleIntercept = -50 * i
            pvt.RescaleType = "HU"
            frame.PixelValueTransformationSequence = [pvt]
        shared = ds.SharedFunctionalGroupsSequence[0]
        if "PixelValueTransformationSequence" in shared:
            del shared.PixelValueTransformationSequence
        path = tmp_path / "enhanced.dcm"
        ds.save_as(path, enforce_file_format=True)
    v = load_volume([path])
    by_frame = dict(zip(v.frame_numbers, v.array, strict=True))
    for i in range(len(frames)):
        assert np.array_equal(by_frame[i + 1], raw[i] * (1 + i) - 50 * i)


def _mixed_folder(tmp_path: Path) -> tuple[Path, list[Path], dict[str, Path]]:
    """Good slices, a text file, a truncated DICOM header and a file nobody may read."""
    folder = tmp_path / "in"
    folder.mkdir()
    good = _series(folder, 3)
    (folder / "README.txt").write_text("not DICOM: skipped without a word")
    truncated = folder / "truncated.dcm"
    truncated.write_bytes(good[0].read_bytes()[:200])
    locked = folder / "locked.dcm"
    locked.write_bytes(good[1].read_bytes())
    locked.chmod(0)
    garbage = folder / "garbage.dcm"
    garbage.write_bytes(b"\0" * 128 + b"DICM" + bytes(range(256)) * 4)
    return folder, good, {"truncated": truncated, "locked": locked, "garbage": garbage}


def _can_read_anything() -> bool:
    return os.geteuid() == 0  # root ignores file permissions


def test_scanners_report_unreadable_files_and_skip_only_non_dicom(tmp_path: Path) -> None:
    folder, good, bad = _mixed_folder(tmp_path)
    for scan in (series_files(folder), scan_studies([folder])):
        reported = {u.path: u.reason for u in scan.unreadable}
        assert folder / "README.txt" not in reported
        assert "truncated header" in reported[bad["truncated"]]
        assert bad["garbage"] in reported
        if not _can_read_anything():
            assert "Permission denied" in reported[bad["locked"]]
    assert sorted(next(iter(series_files(folder).series.values()))) >= sorted(good)


def test_a_file_that_cannot_be_opened_is_reported(tmp_path: Path, monkeypatch) -> None:
    """The permission case for machines where tests run as root (which reads anything)."""
    import dicomio.volume_in as volume_in

    paths = _series(tmp_path, 2)
    real = volume_in.dcmread

    def dcmread_denied(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if Path(path) == paths[0]:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(volume_in, "dcmread", dcmread_denied)
    scan = series_files(tmp_path)
    assert [(u.path, u.reason) for u in scan.unreadable] == [
        (paths[0], "cannot read: Permission denied")
    ]
