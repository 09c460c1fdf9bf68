"""The TID 1500 Imaging Measurement Report: findings and lesions, each drawn on an image.

Every measurement group carries an image region (a SCOORD circle on its key
slice): OHIF crashes on a TID 1500 group without one (standards.md §9). A lesion
gets two groups sharing its Tracking UID: a planar group with its circle and
measurements (what OHIF draws) and a volumetric group referencing its SEG segment
(what AIR consumers follow). A study-level finding is drawn at the attention
map's hot spot, which is also its explanation. Every NUM has a child (its TID
4019 algorithm identification), Verification Flag is UNVERIFIED.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from core.config import Recommendation, ResultsConfig
from dicomio.records import Finding, Lesion
from dicomio.results.identity import (
    Algorithm,
    contributing_equipment,
    device_observer,
    sr_algorithm,
)
from dicomio.results.regions import Region
from dicomio.results.seg import coded
from dicomio.results.sources import SourceSeries, copy_study_context

__all__ = ["FindingEntry", "LesionEntry", "NoteEntry", "encode_report", "procedure_reported"]

_PROCEDURES: dict[str, Code] = {
    "CT": codes.LN.CTUnspecifiedBodyRegion,
    "MR": Code("25056-3", "LN", "MRI unspecified body region"),
    "ECG": Code("11524-6", "LN", "EKG study"),
}
_IMAGING = Code("363679005", "SCT", "Imaging")


@dataclass(frozen=True, slots=True, kw_only=True)
class LesionEntry:
    lesion: Lesion
    number: int
    tracking_uid: str
    region: Region
    algorithm: Algorithm


@dataclass(frozen=True, slots=True, kw_only=True)
class NoteEntry:
    """A measurement group without measurements: what a model says about the series in words.

    A model that declined the series, one that found no lesion, or a guideline's
    follow-up (then ``recommendation`` is its code). ``comment`` is the whole
    sentence the radiologist reads; ``tracking`` (<= 64 characters) names the group.
    """

    algorithm: Algorithm
    finding_code: tuple[str, str, str]
    tracking: str
    comment: str
    recommendation: tuple[str, str, str] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FindingEntry:
    finding: Finding
    region: Region | None
    algorithm: Algorithm
    recommendation: Recommendation | None = None


def procedure_reported(source: Dataset) -> hd.sr.CodedConcept | Code:
    """The imaging procedure that was analysed (not the algorithm)."""
    items = source.get("ProcedureCodeSequence")
    if items:
        item = items[0]
        return hd.sr.CodedConcept(
            value=str(item.CodeValue),
            scheme_designator=str(item.CodingSchemeDesignator),
            meaning=str(item.CodeMeaning),
        )
    return _PROCEDURES.get(str(source.get("Modality", "")).upper(), _IMAGING)


def _circle(region: Region, sources: SourceSeries) -> hd.sr.ImageRegion:
    return hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.CIRCLE,
        graphic_data=np.array(
            [[region.x, region.y], [region.x + region.radius, region.y]], dtype=np.float64
        ),
        source_image=sources.region_source(region.k),
    )


def _lesion_groups(
    entry: LesionEntry, sources: SourceSeries, seg: Dataset | None
) -> list[
    hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
]:
    algo = sr_algorithm(entry.algorithm)
    lesion = entry.lesion
    tracking = hd.sr.TrackingIdentifier(uid=entry.tracking_uid, identifier=f"Lesion {entry.number}")
    kind = coded(lesion.code)
    volume = hd.sr.Measurement(
        name=codes.SCT.Volume,
        value=round(lesion.volume_mm3, 3),
        unit=codes.UCUM.CubicMillimeter,
        algorithm_id=algo,
    )
    groups: list[
        hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
        | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
    ] = [
        hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            referenced_region=_circle(entry.region, sources),
            finding_type=kind,
            measurements=[
                volume,
                hd.sr.Measurement(
                    name=codes.SCT.Diameter,
                    value=round(lesion.longest_diameter_mm, 3),
                    unit=codes.UCUM.Millimeter,
                    algorithm_id=algo,
                ),
                hd.sr.Measurement(
                    name=codes.DCM.Probability,
                    value=round(lesion.mean_probability, 4),
                    unit=codes.UCUM.NoUnits,
                    algorithm_id=algo,
                ),
            ],
        )
    ]
    if seg is not None:  # lesion n is segment n of the SEG
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking,
                referenced_segment=hd.sr.ReferencedSegment(
                    sop_class_uid=seg.SOPClassUID,
                    sop_instance_uid=seg.SOPInstanceUID,
                    segment_number=entry.number,
                    source_series=hd.sr.SourceSeriesForSegmentation(
                        str(sources.first.SeriesInstanceUID)
                    ),
                ),
                finding_type=kind,
                measurements=[volume],
            )
        )
    return groups


def _recommendation(entry: FindingEntry) -> list[hd.sr.QualitativeEvaluation]:
    rec = entry.recommendation
    if rec is None or not entry.finding.positive:
        return []
    return [hd.sr.QualitativeEvaluation(codes.DCM.Recommendation, coded(rec.code))]


def _recommendation_note(entry: FindingEntry) -> str:
    algo = entry.algorithm
    note = f"Decision support by {algo.name} {algo.version}, not verified"
    return f"{note}: {entry.recommendation.text}" if entry.recommendation else note


def _annotate_recommendations(sr: Dataset, notes: dict[str, str]) -> None:
    """Give each Recommendation CODE its decision-support TEXT (highdicom has no slot)."""

    def walk(items: Sequence[Dataset]) -> None:
        for item in items:
            name = item.get("ConceptNameCodeSequence")
            if (
                item.get("ValueType") == "CODE"
                and name
                and name[0].CodeValue == codes.DCM.Recommendation.value
                and item.ConceptCodeSequence[0].CodeValue in notes
            ):
                item.ContentSequence = [
                    hd.sr.TextContentItem(
                        name=codes.DCM.Comment,
                        value=notes[item.ConceptCodeSequence[0].CodeValue],
                        relationship_type=hd.sr.RelationshipTypeValues.HAS_PROPERTIES,
                    )
                ]
            walk(item.get("ContentSequence", []))

    walk(sr.get("ContentSequence", []))


def _finding_group(
    entry: FindingEntry, sources: SourceSeries
) -> (
    hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    | hd.sr.MeasurementsAndQualitativeEvaluations
):
    algo = sr_algorithm(entry.algorithm)
    finding = entry.finding
    tracking = hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"Finding {finding.label}"[:64])
    measurements = [
        hd.sr.Measurement(
            name=codes.DCM.Probability,
            value=round(finding.probability, 4),
            unit=codes.UCUM.NoUnits,
            algorithm_id=algo,
        )
    ]
    evaluations = _recommendation(entry)
    if entry.region is None:  # no image (an ECG): TID 1501
        return hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            finding_type=coded(finding.code),
            measurements=measurements,
            qualitative_evaluations=evaluations or None,
        )
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        referenced_region=_circle(entry.region, sources),
        finding_type=coded(finding.code),
        measurements=measurements,
        qualitative_evaluations=evaluations or None,
    )


def _note_group(entry: NoteEntry) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501: the finding, the algorithm, a Recommendation CODE if any (the Comment follows)."""
    evaluations = (
        [hd.sr.QualitativeEvaluation(codes.DCM.Recommendation, coded(entry.recommendation))]
        if entry.recommendation is not None
        else None
    )
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=entry.tracking),
        finding_type=coded(entry.finding_code),
        algorithm_id=sr_algorithm(entry.algorithm),
        qualitative_evaluations=evaluations,
    )


def _annotate_notes(sr: Dataset, comments: dict[str, str]) -> None:
    """Give each group named in ``comments`` (by Tracking Identifier) its TEXT Comment
    (highdicom's TID 1501 has no slot for one)."""

    def walk(items: Sequence[Dataset]) -> None:
        for item in items:
            if item.get("ValueType") == "CONTAINER":
                ident = next(
                    (
                        c.TextValue
                        for c in item.get("ContentSequence", [])
                        if c.get("ValueType") == "TEXT"
                        and c.ConceptNameCodeSequence[0].CodeValue == "112039"
                    ),
                    None,
                )
                if ident in comments:
                    item.ContentSequence.append(
                        hd.sr.TextContentItem(
                            name=codes.DCM.Comment,
                            value=comments[ident][:1024],
                            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
                        )
                    )
            walk(item.get("ContentSequence", []))

    walk(sr.get("ContentSequence", []))


def encode_report(
    sources: SourceSeries,
    algorithms: Sequence[Algorithm],
    findings: Sequence[FindingEntry],
    lesions: Sequence[LesionEntry],
    evidence: Sequence[Dataset],
    comparisons: Sequence[Dataset],
    cfg: ResultsConfig,
    *,
    started_at: datetime,
    series_number: int,
    series_description: str,
    images: bool,
    notes: Sequence[NoteEntry] = (),
) -> Dataset:
    """Comprehensive 3D SR (images) or Comprehensive SR (waveforms) with TID 1500 content.

    ``notes``: groups without measurements — a model that declined the series
    or found no lesion, a guideline's follow-up — each with its Comment.

    ``comparisons``: the prior studies' instances a progression model compared
    with; highdicom lists instances of other studies as Pertinent Other Evidence.
    """
    seg = next((d for d in evidence if str(d.Modality) == "SEG"), None)
    # Lesions first: OHIF opens the SR on its first measurement's slice.
    groups: list[object] = []
    for lesion in lesions:
        groups.extend(_lesion_groups(lesion, sources, seg))
    for f in findings:
        groups.append(_finding_group(f, sources))
    groups.extend(_note_group(n) for n in notes)
    # The Image Library and the evidence list the key slices the regions are drawn
    # on, not the whole series: 200 library entries cost seconds and tell nothing.
    regions = [e.region for e in lesions] + [f.region for f in findings if f.region is not None]
    used = sorted({r.k for r in regions})
    key_images = sources.key_images(used) if used else sources.instances
    library = sources.library_images(used) if used else key_images
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_device_context=device_observer(algorithms, cfg)
        ),
        procedure_reported=procedure_reported(sources.first),
        imaging_measurements=groups or None,  # type: ignore[arg-type]
        title=codes.DCM.ImagingMeasurementReport,
        referenced_images=library if images else None,
    )
    document = hd.sr.Comprehensive3DSR if images else hd.sr.ComprehensiveSR
    cited = [*key_images, *evidence, *comparisons]
    (root,) = report  # TID 1500: one root container
    _check_evidence(root, cited)
    built = document(
        evidence=cited,
        content=_root_only(root),
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=cfg.manufacturer,
        institution_name=cfg.institution_name or None,
        series_description=series_description,
        is_complete=True,
        is_final=False,
        is_verified=False,
        contributing_equipment=contributing_equipment(algorithms, cfg),
        content_date=started_at.date(),
        content_time=started_at.time(),
        series_date=started_at.date(),
        series_time=started_at.time(),
    )
    # The document's content is the report's own tree (highdicom copies the root's
    # attributes, not the items), given only now: see _root_only.
    built.ContentSequence = root.ContentSequence
    sr = _plain(built)
    _annotate_recommendations(
        sr,
        {
            f.recommendation.code[0]: _recommendation_note(f)
            for f in findings
            if f.recommendation is not None and f.finding.positive
        },
    )
    _annotate_notes(sr, {n.tracking: n.comment for n in notes})
    copy_study_context(sr, sources.first)
    return sr


def _root_only(root: Dataset) -> Dataset:
    """The report's root container without its items.

    highdicom's SR constructor deep-copies the whole content tree to parse it into
    ``sr.content`` and searches it for references to check the evidence: with 20 lesions
    about 0.9 s of the SR's 1.2 s, for a parsed tree nothing here reads. Given the root
    alone it does neither; the document then takes the report's items (the same
    elements highdicom would have set: it copies the root's attributes, not a copy of
    them), ``_check_evidence`` keeps its check, and the tests compare the bytes with
    highdicom's own construction.
    """
    bare = Dataset()
    for element in root:
        if element.keyword != "ContentSequence":
            bare.add(element)
    bare.ContentSequence = []
    return bare


def _plain(sr: Dataset) -> Dataset:
    """The document as a plain dataset: its highdicom ``content`` would hold the root only."""
    plain = Dataset()
    for element in sr:
        plain.add(element)
    plain.file_meta = sr.file_meta
    plain.preamble = getattr(sr, "preamble", None)
    return plain


def _check_evidence(root: Dataset, evidence: Sequence[Dataset]) -> None:
    """Every instance an IMAGE or COMPOSITE item cites is among the evidence (highdicom's
    check, on the report's datasets rather than a parsed copy)."""
    have = {str(d.SOPInstanceUID) for d in evidence}
    missing: set[str] = set()

    def walk(items: Sequence[Dataset]) -> None:
        for item in items:
            if item.get("ValueType") in ("IMAGE", "COMPOSITE"):
                uid = str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
                if uid not in have:
                    missing.add(uid)
            walk(item.get("ContentSequence", []))

    walk(root.ContentSequence)
    if missing:
        raise ValueError(f"the report cites instances it lists no evidence for: {sorted(missing)}")
