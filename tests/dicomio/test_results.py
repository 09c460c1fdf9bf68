"""Result objects: valid DICOM (dciodvfy/dcentvfy), readable by dcmtk, equal to the outcome.

The study is a synthetic CT that passes the validators itself, run through the
shipped lesion-seg and lesion-class models; the ECG through ecg-rhythm. What is
checked against the stored outcome is computed by the same run, so a wrong
number, reference or mask in the encoders fails here.
"""

from __future__ import annotations

import errno
import io
import shutil
import subprocess
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from core.config import PipelineConfig, Recommendation, ResultsConfig, SeriesRule
from dicomio.records import Lesion
from dicomio.results.compose import ResultObject, encode_run
from dicomio.results.identity import algorithm_of
from dicomio.results.part10 import to_bytes, to_chunks
from dicomio.results.write import ResultWriter, write_results
from dicomio.volume_in import scan_studies
from inference.package import load_package
from inference.pipeline import PipelineRun, run_pipeline
from storage.spool import Spool
from tests.dicomcheck import validate
from training.synthetic import generate_ct, generate_ecg, generate_longitudinal

ROOT = Path(__file__).resolve().parents[2]
STARTED = datetime(2026, 11, 24, 9, 30, 15, tzinfo=UTC)
CFG = ResultsConfig(manufacturer="ainode tests", device_serial_number="T-1")

needs_tools = pytest.mark.tools("dciodvfy", "dcentvfy", "dsrdump", "dsr2html")


def _run(folder: Path, models: list[str], rule: SeriesRule) -> PipelineRun:
    (series,) = next(iter(scan_studies([folder]).studies.values()))
    loaded = [load_package(ROOT / "models" / m, torch.device("cpu")) for m in models]
    return run_pipeline([series], rule, loaded, batch_size=4, amp=False)


def _lesion(bbox_kji: tuple[tuple[int, int, int], tuple[int, int, int]], voxels: int) -> Lesion:
    """A lesion record for the encoders (measurements that do not matter to the test)."""
    return Lesion(
        label="lesion",
        code=("52988006", "SCT", "Lesion"),
        voxel_count=voxels,
        volume_mm3=100.0,
        centroid_mm=(0.0, 0.0, 0.0),
        longest_diameter_mm=5.0,
        bbox_kji=bbox_kji,
        mean_probability=0.9,
    )


@pytest.fixture(scope="module")
def ct_case(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, PipelineRun, list[ResultObject]]:
    root = tmp_path_factory.mktemp("ct")
    generate_ct(root / "in", 1, 7313)  # a malignant-like case with two lesions
    source = root / "in" / "studies" / "0000"
    run = _run(source, ["lesion-seg", "lesion-class"], SeriesRule(modalities=("CT",)))
    pipeline = PipelineConfig(
        name="ct-lesions",
        series_number=700,
        series_description="AI test",
        recommendations=(
            Recommendation(
                finding="malignant",
                code=("103693007", "SCT", "Diagnostic procedure"),
                text="Consider tissue sampling",
            ),
        ),
    )
    objects = encode_run(run.results, pipeline, CFG, started_at=STARTED)
    out = root / "study"
    shutil.copytree(source, out)
    for obj in objects:
        (out / f"{obj.kind}.dcm").write_bytes(to_bytes(obj.dataset))
    return out, run, objects


def _by_kind(objects: list[ResultObject]) -> dict[str, pydicom.Dataset]:
    return {o.kind: pydicom.dcmread(__import__("io").BytesIO(to_bytes(o.dataset))) for o in objects}


@needs_tools
def test_every_object_passes_dciodvfy_and_dcentvfy(ct_case) -> None:
    folder, _pipeline_run, objects = ct_case
    assert sorted(o.kind for o in objects) == ["PM", "SEG", "SR"]
    result = validate(folder)
    assert result.ok, result.report()
    iods = result.iods()
    assert (iods["SR.dcm"], iods["SEG.dcm"], iods["PM.dcm"]) == (
        "Comprehensive3DSR",
        "Segmentation",
        "ParametricMap",
    )


@needs_tools
def test_dcmtk_reads_the_report(ct_case, tmp_path: Path) -> None:
    folder, _pipeline_run, _objects = ct_case
    dump = subprocess.run(["dsrdump", str(folder / "SR.dcm")], capture_output=True, text=True)
    assert dump.returncode == 0, dump.stderr
    assert "Imaging Measurement Report" in dump.stdout
    assert "Verification Flag   : UNVERIFIED" in dump.stdout
    html = tmp_path / "sr.html"
    conv = subprocess.run(["dsr2html", str(folder / "SR.dcm"), str(html)], capture_output=True)
    assert conv.returncode == 0 and "Lesion 1" in html.read_text()


def test_report_numbers_and_references_match_the_outcome(ct_case) -> None:
    folder, run, _objects = ct_case
    seg_outcome, class_outcome = run.outcomes
    sr = hd.sr.srread(folder / "SR.dcm")
    seg = hd.seg.segread(folder / "SEG.dcm")
    assert sr.VerificationFlag == "UNVERIFIED" and sr.CompletionFlag == "COMPLETE"
    assert (sr.ContentDate, sr.ContentTime[:6]) == ("20261124", "093015")
    report = sr.content
    planar = report.get_planar_roi_measurement_groups()
    volumetric = report.get_volumetric_roi_measurement_groups()
    lesions = seg_outcome.lesions
    assert len(lesions) == 2 and len(volumetric) == len(lesions)
    # The lesion's planar group and volumetric group share its SEG segment's Tracking UID.
    seg_tracking = {
        n: seg.get_segment_description(n).TrackingUID for n in seg.get_segment_numbers()
    }
    for n, lesion in enumerate(lesions, start=1):
        group = next(g for g in planar if str(g.tracking_identifier) == f"Lesion {n}")
        assert group.tracking_uid == seg_tracking[n]
        values = {m.name.meaning: m.value for m in group.get_measurements()}
        assert values["Volume"] == pytest.approx(lesion.volume_mm3, abs=1e-3)
        assert values["Diameter"] == pytest.approx(lesion.longest_diameter_mm, abs=1e-3)
        vol = next(g for g in volumetric if g.tracking_uid == seg_tracking[n])
        ref = vol.referenced_segment
        assert list(ref.referenced_segment_numbers) == [n]
        assert ref.referenced_sop_instance_uid == seg.SOPInstanceUID
    findings = [g for g in planar if str(g.tracking_identifier).startswith("Finding")]
    assert len(findings) == len(class_outcome.findings)
    for f in class_outcome.findings:
        group = next(g for g in findings if str(g.tracking_identifier) == f"Finding {f.label}")
        (prob,) = group.get_measurements()
        assert prob.value == pytest.approx(f.probability, abs=1e-4)
        assert prob.unit.value == "1"
        assert group.finding_type.value == f.code[0]


def _items(ds: pydicom.Dataset):
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _items(item)


def test_report_follows_what_ohif_needs(ct_case) -> None:
    """standards.md §2.1/§9: tracking ids, a region in every drawn group, a child under each NUM."""
    folder, _pipeline_run, _objects = ct_case
    sr = pydicom.dcmread(folder / "SR.dcm")
    assert sr.ContentSequence[0].ConceptNameCodeSequence[0].CodeValue  # language etc.
    measurements = next(
        i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010"
    )
    for group in measurements.ContentSequence:
        names = [i.ConceptNameCodeSequence[0].CodeValue for i in group.ContentSequence]
        assert "112039" in names and "112040" in names  # Tracking Identifier and UID
        for item in _items(group):
            if item.ValueType == "NUM":
                assert len(item.get("ContentSequence", [])) >= 1
    kinds = [[i.ValueType for i in g.ContentSequence] for g in measurements.ContentSequence]
    planar = [k for k in kinds if "SCOORD" in k]
    assert len(planar) == len(kinds) - 2  # all but the two SEG-referencing lesion groups
    first = measurements.ContentSequence[0]
    assert first.ContentSequence[0].TextValue == "Lesion 1"  # OHIF opens on the first group


def test_recommendation_is_marked_as_decision_support(ct_case) -> None:
    folder, run, _objects = ct_case
    (malignant,) = [f for f in run.outcomes[1].findings if f.label == "malignant"]
    text = pydicom.dcmread(folder / "SR.dcm")
    found = [
        i
        for i in _items(text)
        if i.ValueType == "CODE" and i.ConceptNameCodeSequence[0].CodeValue == "121075"
    ]
    if malignant.positive:
        (item,) = found
        assert item.ConceptCodeSequence[0].CodeValue == "103693007"
        note = item.ContentSequence[0].TextValue
        assert "Decision support" in note and "not verified" in note
    else:
        assert found == []


def test_segmentation_equals_the_label_map(ct_case) -> None:
    folder, run, _objects = ct_case
    result = run.results[0]
    assert result.lesion_labels is not None
    seg = hd.seg.segread(folder / "SEG.dcm")
    assert seg.SegmentationType == "BINARY"
    assert seg.SeriesInstanceUID != result.outcome.series_instance_uid
    assert seg.StudyInstanceUID == pydicom.dcmread(result.source_paths[0]).StudyInstanceUID
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=list(result.sop_instance_uids),
        segment_numbers=[1, 2],
        assert_missing_frames_are_empty=True,
    )
    expected = np.stack([result.lesion_labels == 1, result.lesion_labels == 2], axis=-1)
    assert np.array_equal(pixels.astype(bool), expected)
    assert seg.SeriesNumber == 701 and seg.ContentLabel == "LESIONS"
    for n, lesion in enumerate(result.outcome.lesions, start=1):  # the model label's code
        kind = seg.get_segment_description(n).SegmentedPropertyTypeCodeSequence[0]
        assert (kind.CodeValue, kind.CodingSchemeDesignator) == lesion.code[:2]


def test_heat_map_is_float_and_equals_the_attention(ct_case) -> None:
    folder, run, _objects = ct_case
    result = run.results[1]
    assert result.attention is not None
    pm = pydicom.dcmread(folder / "PM.dcm")
    assert pm.BitsAllocated == 32 and "FloatPixelData" in pm
    frames = pm.pixel_array
    assert frames.shape == result.attention.shape
    # Frames may be stored in another order: each names its source slice.
    order = {uid: k for k, uid in enumerate(result.sop_instance_uids)}
    for frame, item in zip(frames, pm.PerFrameFunctionalGroupsSequence, strict=True):
        source = item.DerivationImageSequence[0].SourceImageSequence[0]
        k = order[source.ReferencedSOPInstanceUID]
        assert np.allclose(frame, result.attention[k], atol=1e-6)
    assert 0.0 <= frames.min() and frames.max() == pytest.approx(1.0)
    refs = pm.ReferencedSeriesSequence[0]
    assert refs.SeriesInstanceUID == result.outcome.series_instance_uid


def test_provenance_on_every_object(ct_case) -> None:
    _folder, run, objects = ct_case
    source = pydicom.dcmread(run.results[0].source_paths[0])
    algorithms = {algorithm_of(o).device_uid: o for o in run.outcomes}
    for obj in objects:
        ds = obj.dataset
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert ds.PatientID == source.PatientID and ds.PatientName == source.PatientName
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
        ours = [
            i
            for i in ds.ContributingEquipmentSequence
            if i.PurposeOfReferenceCodeSequence[0].CodeValue == "Newcode1"  # AIR algorithm
        ]
        assert ours, f"{obj.kind} names no algorithm"
        for item in ours:
            outcome = algorithms[item.DeviceUID]
            assert item.Manufacturer == "ainode tests"
            assert item.ManufacturerModelName == outcome.model_name
            assert item.SoftwareVersions == outcome.model_version
            assert outcome.model_sha256 in item.ContributionDescription


def test_device_uid_is_stable_per_model_build(ct_case) -> None:
    _folder, run, _objects = ct_case
    outcome = run.outcomes[0]
    assert algorithm_of(outcome) == algorithm_of(outcome)
    retrained = replace(outcome, model_sha256="0" * 64)
    assert algorithm_of(retrained).device_uid != algorithm_of(outcome).device_uid


@needs_tools
def test_ecg_report_is_valid_and_holds_the_probabilities(tmp_path: Path) -> None:
    generate_ecg(tmp_path / "in", 1, 7302)
    source = tmp_path / "in" / "ecg"
    rule = SeriesRule(sop_classes=("1.2.840.10008.5.1.4.1.1.9.1.1",))
    run = _run(source, ["ecg-rhythm"], rule)
    (obj,) = encode_run(run.results, PipelineConfig(name="ecg"), CFG, started_at=STARTED)
    assert obj.kind == "SR" and obj.sop_class_uid == "1.2.840.10008.5.1.4.1.1.88.33"
    (source_file,) = source.glob("*.dcm")
    (tmp_path / "SR.dcm").write_bytes(to_bytes(obj.dataset))
    shutil.copy(source_file, tmp_path / "ECG.dcm")
    for p in (tmp_path / "in").rglob("*.csv"):
        p.unlink()
    shutil.rmtree(tmp_path / "in")
    result = validate(tmp_path)
    assert result.ok, result.report()
    sr = hd.sr.srread(tmp_path / "SR.dcm")
    groups = sr.content.get_image_measurement_groups()
    probabilities = {str(g.finding_type.meaning): g.get_measurements()[0].value for g in groups}
    assert len(probabilities) == 3
    assert sorted(probabilities.values()) == pytest.approx(
        sorted(f.probability for f in run.outcomes[0].findings), abs=1e-4
    )


def test_heat_map_keeps_the_source_grid_as_ohif_requires() -> None:
    from dicomio.results.identity import Algorithm
    from dicomio.results.pmap import encode_attention_map
    from dicomio.results.sources import SourceSeries
    from tests.dicomgen import ct_slice

    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    sources = [ct_slice(study_uid=study, series_uid=series, index=k, size=256) for k in range(3)]
    attention = np.random.default_rng(0).random((3, 256, 256), dtype=np.float32)
    algo = Algorithm(name="m", version="1", sha256="0" * 64, device_uid="1.2.3")
    pm = encode_attention_map(
        SourceSeries(tuple(sources)),
        attention,
        algo,
        CFG,
        series_number=3,
        series_description="map",
    )
    assert (pm.Rows, pm.Columns, pm.NumberOfFrames) == (256, 256, 3)
    shared = pm.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == [0.8, 0.8]
    # Out-of-range attention is clipped to 0..1 in the map, the caller's array untouched.
    attention[0, 0, :2] = (-0.5, 1.5)
    pm = encode_attention_map(
        SourceSeries(tuple(sources)), attention, algo, CFG, series_number=3, series_description="m"
    )
    assert (attention[0, 0, 0], attention[0, 0, 1]) == (-0.5, 1.5)
    assert 0.0 <= pm.pixel_array.min() and pm.pixel_array.max() <= 1.0


def test_segmentation_keeps_the_largest_lesions_and_only_their_slices() -> None:
    from dicomio.results.identity import Algorithm
    from dicomio.results.seg import MAX_SEGMENTS, encode_segmentation
    from dicomio.results.sources import SourceSeries
    from tests.dicomgen import ct_slice

    extra = 3
    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    slices = 2 * (MAX_SEGMENTS + extra)
    sources = [ct_slice(study_uid=study, series_uid=series, index=k) for k in range(slices)]
    labels = np.zeros((slices, 64, 64), dtype=np.uint16)
    for n in range(1, MAX_SEGMENTS + extra + 1):  # lesion n on slice 2n - 1, the rest empty
        labels[2 * n - 1, 10:20, 10:20] = n
    lesions = [
        _lesion(((2 * n - 1, 10, 10), (2 * n - 1, 19, 19)), voxels=100)
        for n in range(1, MAX_SEGMENTS + extra + 1)
    ]
    seg = encode_segmentation(
        SourceSeries(tuple(sources)),
        labels,
        lesions,
        [pydicom.uid.generate_uid() for _ in range(MAX_SEGMENTS)],
        Algorithm(name="m", version="1", sha256="0" * 64, device_uid="1.2.3"),
        CFG,
        series_number=5,
        series_description="lesions",
    )
    assert len(seg.SegmentSequence) == MAX_SEGMENTS
    cited = {
        item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        for item in seg.PerFrameFunctionalGroupsSequence
    }
    assert cited == {sources[2 * n - 1].SOPInstanceUID for n in range(1, MAX_SEGMENTS + 1)}
    referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    assert len(referenced) == MAX_SEGMENTS  # not the slices of the lesions left out


def test_written_files_equal_pydicom_encoding_with_pixels_streamed(ct_case, tmp_path: Path) -> None:
    """The writer hands the pixel value on as it is; the file is what pydicom writes."""
    _, _, objects = ct_case
    spool = Spool(tmp_path / "data")
    spool.prepare()
    for obj, written in zip(objects, write_results(objects, spool), strict=True):
        chunks = to_chunks(obj.dataset)
        assert len(chunks) == (1 if obj.kind == "SR" else 3)  # SEG and map: pixels apart
        assert written.path.read_bytes() == to_bytes(obj.dataset)
        assert written.size_bytes == written.path.stat().st_size


def test_chunks_pad_an_odd_pixel_value_and_fall_back_where_they_cannot_stream() -> None:
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

    ds = pydicom.Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.3", "1.2.3.4"
    ds.PixelData = b"\x01\x02\x03"  # odd: pydicom pads it with a zero byte
    ds["PixelData"].VR = "OB"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    chunks = to_chunks(ds)
    assert len(chunks) == 4 and b"".join(chunks) == to_bytes(ds)
    assert "PixelData" in ds and ds.PixelData == b"\x01\x02\x03"  # the dataset is as it was
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    assert to_chunks(ds) == [to_bytes(ds)]
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.add_new(0xFFFCFFFC, "OB", b"\x00\x00")  # something after the pixels
    assert to_chunks(ds) == [to_bytes(ds)]


@needs_tools
def test_enhanced_multiframe_source_gets_frame_references(tmp_path: Path) -> None:
    """An enhanced CT (one file, frames) — pydicom-data's eCT_Supplemental.dcm."""
    from pydicom.data import get_testdata_file

    from dicomio.records import Finding, Outcome, SeriesResult
    from dicomio.volume_in import load_volume

    source = Path(get_testdata_file("eCT_Supplemental.dcm", download=False))
    volume = load_volume([source])
    assert sorted(volume.frame_numbers) == [1, 2]
    labels = np.zeros(volume.array.shape, np.uint16)
    labels[1, 200:240, 200:240] = 1  # a lesion on the second slice along the normal
    attention = np.zeros(volume.array.shape, np.float32)
    attention[1, 100, 100] = 1.0
    lesion = _lesion(((1, 200, 200), (1, 239, 239)), voxels=1600)
    common = {
        "series_instance_uid": volume.series_instance_uid,
        "model_version": "1",
    }
    seg_outcome = Outcome(
        model_name="s", model_sha256="0" * 64, task="segmentation", lesions=(lesion,), **common
    )
    finding = Finding(
        label="m", code=("1", "SCT", "x"), probability=0.9, threshold=0.5, positive=True
    )
    cls_outcome = Outcome(
        model_name="c", model_sha256="1" * 64, task="classification", findings=(finding,), **common
    )
    grid = {
        "source_paths": (source,),
        "sop_instance_uids": volume.sop_instance_uids,
        "frame_numbers": volume.frame_numbers,
    }
    objects = encode_run(
        [
            SeriesResult(outcome=seg_outcome, lesion_labels=labels, **grid),
            SeriesResult(outcome=cls_outcome, attention=attention, **grid),
        ],
        PipelineConfig(name="p"),
        CFG,
        started_at=STARTED,
    )
    for obj in objects:
        (tmp_path / f"{obj.kind}.dcm").write_bytes(to_bytes(obj.dataset))
    result = validate(tmp_path, entity=False)
    assert result.ok, result.report()
    # The SEG's one frame names the source frame that holds slice 1.
    seg = pydicom.dcmread(tmp_path / "SEG.dcm")
    (frame,) = seg.PerFrameFunctionalGroupsSequence
    ref = frame.DerivationImageSequence[0].SourceImageSequence[0]
    assert ref.ReferencedFrameNumber == volume.frame_numbers[1]
    # The map's frames follow the source's frame order.
    pm = pydicom.dcmread(tmp_path / "PM.dcm")
    peak_frame = int(np.argmax(pm.pixel_array.reshape(2, -1).max(axis=1))) + 1
    assert peak_frame == volume.frame_numbers[1]
    # The SR's circles name their frame.
    sr = pydicom.dcmread(tmp_path / "SR.dcm")
    frames = {
        int(i.ReferencedSOPSequence[0].ReferencedFrameNumber)
        for i in _items(sr)
        if i.ValueType == "IMAGE" and "ReferencedFrameNumber" in i.ReferencedSOPSequence[0]
    }
    assert frames == {volume.frame_numbers[1]}


def test_progression_report_cites_its_priors_and_holds_the_probabilities(tmp_path: Path) -> None:
    """A follow-up study with two priors of the same patient through lesion-change."""
    from inference.analyze import scanned_histories

    generate_longitudinal(tmp_path / "in", 1, 7401)
    studies = scan_studies([tmp_path / "in"]).studies
    histories = scanned_histories(studies)
    current = max(histories, key=lambda uid: len(histories[uid].priors))
    history = histories[current]
    assert len(history.priors) >= 2
    model = load_package(ROOT / "models" / "lesion-change", torch.device("cpu"))
    rule = SeriesRule(modalities=("CT",))
    run = run_pipeline(studies[current], rule, [model], batch_size=1, amp=False, history=history)
    (outcome,) = run.outcomes
    used = history.priors[:2]  # the package's max_priors, newest first
    assert [p["study_instance_uid"] for p in outcome.extra["priors"]] == [
        p.study_instance_uid for p in reversed(used)
    ]
    assert all(p["days_before"] > 0 for p in outcome.extra["priors"])
    (obj,) = encode_run(run.results, PipelineConfig(name="change"), CFG, started_at=STARTED)
    assert obj.kind == "SR"
    out = tmp_path / "study"
    shutil.copytree(studies[current][0].paths[0].parent, out)
    (out / "SR.dcm").write_bytes(to_bytes(obj.dataset))
    result = validate(out)
    assert result.ok, result.report()
    sr = pydicom.dcmread(out / "SR.dcm")
    # The priors compared with are the report's Pertinent Other Evidence, instance by instance.
    other = {item.StudyInstanceUID for item in sr.PertinentOtherEvidenceSequence}
    assert other == {p.study_instance_uid for p in used}
    cited = {
        inst.ReferencedSOPInstanceUID
        for item in sr.PertinentOtherEvidenceSequence
        for series in item.ReferencedSeriesSequence
        for inst in series.ReferencedSOPSequence
    }
    assert len(cited) == sum(len(p.series[0].paths) for p in used)
    groups = hd.sr.srread(out / "SR.dcm").content.get_planar_roi_measurement_groups()
    probabilities = {str(g.finding_type.value): g.get_measurements()[0].value for g in groups}
    assert probabilities == pytest.approx(
        {f.code[0]: f.probability for f in outcome.findings}, abs=1e-4
    )
    # The patient's first study has no prior: the model says why and nothing is written.
    first = min(histories, key=lambda uid: histories[uid].study_date)
    run = run_pipeline(
        studies[first], rule, [model], batch_size=1, amp=False, history=histories[first]
    )
    assert run.outcomes[0].not_run == "no earlier study of this patient among the inputs"
    assert encode_run(run.results, PipelineConfig(name="change"), CFG, started_at=STARTED) == []


def test_write_results_is_all_or_nothing(ct_case, tmp_path: Path) -> None:
    """A disk that fills up after the first object: no partial set of results is left."""
    _, _, objects = ct_case

    class FillsUp(Spool):
        writes = 0

        def write(self, path: Path, chunks) -> int:
            FillsUp.writes += 1
            if FillsUp.writes > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(path, chunks)

    spool = FillsUp(tmp_path / "data")
    spool.prepare()
    with pytest.raises(OSError, match="No space left"):
        write_results(objects, spool)
    assert FillsUp.writes == 2
    assert [p for p in (tmp_path / "data").rglob("*") if p.is_file()] == []


def test_objects_are_handed_on_as_soon_as_each_is_complete(ct_case) -> None:
    _, run, _ = ct_case
    ready: list[ResultObject] = []
    objects = encode_run(
        run.results, PipelineConfig(name="ct"), CFG, started_at=STARTED, ready=ready.append
    )
    # The segmentation (lesion-seg) and the map (lesion-class's attention) in the
    # order the models ran; the report that cites both comes last, but first in the list.
    assert [o.kind for o in ready] == ["SEG", "PM", "SR"]
    assert [o.kind for o in objects] == ["SR", "SEG", "PM"]
    assert {id(o) for o in ready} == {id(o) for o in objects}


def test_writer_removes_what_it_wrote_when_the_encoding_fails(ct_case, tmp_path: Path) -> None:
    """The worker writes each object while the next is encoded: a failure after some are
    written (the report cannot be encoded) leaves no file behind."""
    _, _, objects = ct_case
    spool = Spool(tmp_path / "data")
    spool.prepare()
    with pytest.raises(ValueError, match="report failed"), ResultWriter(spool) as writer:
        for obj in objects[1:]:
            writer.submit(obj)
        assert len(writer.finish()) == len(objects) - 1  # on disk now
        raise ValueError("report failed")
    assert [p for p in (tmp_path / "data").rglob("*") if p.is_file()] == []


def test_private_coding_schemes_are_declared_once() -> None:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from dicomio.results.identity import declare_private_schemes

    def code(value: str, scheme: str) -> Dataset:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, value
        return item

    ds = Dataset()
    ds.ConceptNameCodeSequence = Sequence([code("126000", "DCM")])
    inner = Dataset()
    inner.ConceptCodeSequence = Sequence([code("FL17-SM3", "99AINODE"), code("X", "99MYHOSP")])
    ds.ContentSequence = Sequence([inner, Dataset()])
    ds.ContentSequence[1].ConceptCodeSequence = Sequence([code("52988006", "SCT")])
    declare_private_schemes(ds)
    declare_private_schemes(ds)  # a second pass adds nothing
    items = {str(i.CodingSchemeDesignator): i for i in ds.CodingSchemeIdentificationSequence}
    assert sorted(items) == ["99AINODE", "99MYHOSP"]  # DCM and SCT are standard: not listed
    assert "ainode" in items["99AINODE"].CodingSchemeName
    assert items["99AINODE"].CodingSchemeResponsibleOrganization == "ainode project"
    assert "CodingSchemeName" not in items["99MYHOSP"]  # a package's own scheme: designator only


def test_private_schemes_are_found_in_a_dataset_read_from_a_file() -> None:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from dicomio.results.identity import declare_private_schemes

    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "FL17-SM3", "99AINODE", "x"
    inner = Dataset()
    inner.ConceptCodeSequence = Sequence([item])
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.88.34", "1.2.3.4"
    ds.ContentSequence = Sequence([inner])
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    read = pydicom.dcmread(io.BytesIO(to_bytes(ds)))  # raw, not yet converted elements
    declare_private_schemes(read)
    assert [str(i.CodingSchemeDesignator) for i in read.CodingSchemeIdentificationSequence] == [
        "99AINODE"
    ]


def test_report_is_the_document_highdicom_builds_byte_for_byte(ct_case, monkeypatch) -> None:
    """encode_report hands highdicom the report's root alone (no deep copy of 20 lesions'
    content) and gives the document its items afterwards: the same bytes as highdicom's own
    construction from the whole report, UIDs drawn in the same order (the clock's two
    readings, when the instance and its contribution were made, set equal)."""
    from itertools import count

    import dicomio.results.sr as sr_module

    _folder, run, _objects = ct_case
    pipeline = PipelineConfig(name="ct-lesions", series_number=700)
    made = hd.UID

    def encoded() -> bytes:
        numbers = count(1)
        monkeypatch.setattr(hd, "UID", lambda: made(f"1.2.826.0.1.3680043.10.1.{next(numbers)}"))
        objects = encode_run(run.results, pipeline, CFG, started_at=STARTED)
        sr = next(o for o in objects if o.kind == "SR").dataset
        sr.InstanceCreationDate, sr.InstanceCreationTime = "20261124", "093015"
        for item in sr.ContributingEquipmentSequence:
            item.ContributionDateTime = "20261124093015"
        return to_bytes(sr)

    ours = encoded()
    monkeypatch.setattr(sr_module, "_root_only", lambda root: root)  # highdicom copies it all
    assert encoded() == ours
    sr = pydicom.dcmread(io.BytesIO(ours))
    assert len(sr.ContentSequence) > 3 and sr.CurrentRequestedProcedureEvidenceSequence


def test_a_report_citing_an_instance_without_evidence_is_refused() -> None:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from dicomio.results.sr import _check_evidence

    image = Dataset()
    image.ValueType = "IMAGE"
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", "1.2.9"
    image.ReferencedSOPSequence = Sequence([ref])
    group = Dataset()
    group.ValueType = "CONTAINER"
    group.ContentSequence = Sequence([image])
    root = Dataset()
    root.ContentSequence = Sequence([group])
    cited = Dataset()
    cited.SOPInstanceUID = "1.2.9"
    _check_evidence(root, [cited])
    with pytest.raises(ValueError, match=r"no evidence for: \['1.2.9'\]"):
        _check_evidence(root, [])


def test_warm_up_loads_highdicoms_standard_tables() -> None:
    from highdicom import _standard_utils as standard

    from dicomio.results.warm import TABLE_LOADERS, warm_up

    loaders = [getattr(standard, name) for name in TABLE_LOADERS]
    for loader in loaders:
        loader.cache_clear()
    warm_up()
    assert [loader.cache_info().currsize for loader in loaders] == [1, 1, 1]


def test_encoders_use_the_headers_read_for_the_volume(ct_case, tmp_path: Path) -> None:
    """The source headers read to build the volume reach the encoders: the files are not
    read a second time (gone, the same objects come out; without the headers they are read)."""
    _out, run, objects = ct_case
    results = run.results
    assert all(len(r.source_headers) == len(r.source_paths) for r in results)
    assert all("PixelData" not in h for r in results for h in r.source_headers)
    gone = tuple(tmp_path / p.name for p in results[0].source_paths)  # never written
    moved = [replace(r, source_paths=gone) for r in results]
    pipeline = PipelineConfig(name="ct-lesions")
    again = _by_kind(encode_run(moved, pipeline, CFG, started_at=STARTED))
    before = _by_kind(objects)
    for kind in ("SEG", "PM"):
        assert [i.ReferencedSOPInstanceUID for i in again[kind].ReferencedSeriesSequence[0]
                .ReferencedInstanceSequence] == [
            i.ReferencedSOPInstanceUID
            for i in before[kind].ReferencedSeriesSequence[0].ReferencedInstanceSequence
        ]  # fmt: skip
    without = [replace(r, source_paths=gone, source_headers=()) for r in results]
    with pytest.raises(FileNotFoundError):
        encode_run(without, pipeline, CFG, started_at=STARTED)
