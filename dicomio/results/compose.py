"""One job's results -> its DICOM objects: per source series one SR, a SEG, a heat map.

``encode_run`` is the stage the worker and ``ainode analyze`` share; it reads
nothing but the source headers and returns datasets; writing is the caller's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import highdicom as hd
from pydicom.dataset import Dataset

from core.config import PipelineConfig, ResultsConfig
from dicomio.records import SeriesResult
from dicomio.results.identity import Algorithm, algorithm_of, declare_private_schemes
from dicomio.results.pmap import encode_attention_map
from dicomio.results.regions import Region, hotspot_region, lesion_regions, whole_slice_region
from dicomio.results.seg import MAX_SEGMENTS, encode_segmentation
from dicomio.results.sources import read_headers, read_sources
from dicomio.results.sr import FindingEntry, LesionEntry, NoteEntry, encode_report

__all__ = ["ResultObject", "encode_run"]

_UNDETERMINED = ("373068000", "SCT", "Undetermined")  # the finding of a declined series
_LESION = ("52988006", "SCT", "Lesion")  # what a segmentation found none of

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class ResultObject:
    """One DICOM result object, ready to write and send."""

    kind: str  # "SR", "SEG" or "PM"
    dataset: Dataset
    source_series_instance_uid: str

    @property
    def sop_instance_uid(self) -> str:
        return str(self.dataset.SOPInstanceUID)

    @property
    def sop_class_uid(self) -> str:
        return str(self.dataset.SOPClassUID)

    @property
    def study_instance_uid(self) -> str:
        return str(self.dataset.StudyInstanceUID)

    @property
    def series_instance_uid(self) -> str:
        return str(self.dataset.SeriesInstanceUID)


def _description(pipeline: PipelineConfig, what: str) -> str:
    base = pipeline.series_description or f"AI {pipeline.name}"
    return f"{base} {what}"[:64]


def _series_results(
    results: Sequence[SeriesResult],
    pipeline: PipelineConfig,
    cfg: ResultsConfig,
    started_at: datetime,
    ready: Callable[[ResultObject], None],
) -> list[ResultObject]:
    first = next((r for r in results if r.sop_instance_uids), results[0])
    sources = read_sources(
        first.source_paths, first.sop_instance_uids, first.frame_numbers, first.source_headers
    )
    series_uid = str(sources.first.SeriesInstanceUID)
    images = "Rows" in sources.first
    algorithms: list[Algorithm] = []
    objects: list[ResultObject] = []
    findings: list[FindingEntry] = []
    lesions: list[LesionEntry] = []
    comparisons: list[Dataset] = []
    recommendations = {r.finding: r for r in pipeline.recommendations}
    notes: list[NoteEntry] = []
    for result in results:
        outcome = result.outcome
        algo = algorithm_of(outcome)
        algorithms.append(algo)
        if outcome.declined:
            notes.append(
                NoteEntry(
                    algorithm=algo,
                    finding_code=_UNDETERMINED,
                    tracking=f"Not analysed by {algo.name}"[:64],
                    comment=f"Not analysed: {outcome.declined}",
                )
            )
            continue
        comparisons.extend(read_headers(result.comparison_paths))
        region: Region | None = None
        if result.attention is not None:
            spacing = sources.pixel_spacing_mm()
            region = hotspot_region(result.attention, spacing)
            pm = encode_attention_map(
                sources,
                result.attention,
                algo,
                cfg,
                series_number=pipeline.series_number + 2,
                series_description=_description(pipeline, "attention map"),
            )
            objects.append(
                _done(ResultObject(kind="PM", dataset=pm, source_series_instance_uid=series_uid))
            )
            ready(objects[-1])
        elif images and outcome.findings:
            rows, cols = int(sources.first.Rows), int(sources.first.Columns)
            region = whole_slice_region((len(sources.slices), rows, cols))
        findings.extend(
            FindingEntry(
                finding=f,
                region=region,
                algorithm=algo,
                recommendation=recommendations.get(f.label),
            )
            for f in outcome.findings
        )
        if result.lesion_labels is not None and outcome.lesions:
            uids = [hd.UID() for _ in outcome.lesions[:MAX_SEGMENTS]]
            seg = encode_segmentation(
                sources,
                result.lesion_labels,
                outcome.lesions,
                uids,
                algo,
                cfg,
                series_number=pipeline.series_number + 1,
                series_description=_description(pipeline, "lesions"),
            )
            objects.append(
                _done(ResultObject(kind="SEG", dataset=seg, source_series_instance_uid=series_uid))
            )
            ready(objects[-1])
            regions = lesion_regions(result.lesion_labels, len(uids))
            lesions.extend(
                LesionEntry(
                    lesion=lesion,
                    number=n,
                    tracking_uid=uids[n - 1],
                    region=regions[n - 1],
                    algorithm=algo,
                )
                for n, lesion in enumerate(outcome.lesions[:MAX_SEGMENTS], start=1)
            )
            if len(outcome.lesions) > MAX_SEGMENTS:
                logger.warning(
                    "series %s: %d lesions found; the SR and SEG report the %d largest",
                    series_uid,
                    len(outcome.lesions),
                    MAX_SEGMENTS,
                )
    notes.extend(_guidance(results, pipeline))
    sr = encode_report(
        sources,
        algorithms,
        findings,
        lesions,
        [o.dataset for o in objects],
        comparisons,
        cfg,
        started_at=started_at,
        series_number=pipeline.series_number,
        series_description=_description(pipeline, "report"),
        images=images,
        notes=notes,
    )
    report = _done(ResultObject(kind="SR", dataset=sr, source_series_instance_uid=series_uid))
    ready(report)
    return [report, *objects]


def _done(obj: ResultObject) -> ResultObject:
    """A finished object: its private coding schemes declared; nothing changes it after."""
    declare_private_schemes(obj.dataset)
    return obj


def _guidance(results: Sequence[SeriesResult], pipeline: PipelineConfig) -> list[NoteEntry]:
    """Per segmentation model: the guideline follow-up it carries (Fleischner 2017), or, when
    it found no lesion, that statement (a report must say the AI looked and found nothing)."""
    notes = []
    for result in results:
        outcome = result.outcome
        algo = algorithm_of(outcome)
        looked = outcome.task in ("segmentation", "detection") and not outcome.declined
        if looked and not outcome.lesions:
            notes.append(
                NoteEntry(
                    algorithm=algo,
                    finding_code=_LESION,
                    tracking=f"No lesion found by {outcome.model_name}"[:64],
                    comment=f"{algo.name} {algo.version}: no lesion found",
                )
            )
        advice = outcome.extra.get("recommendation")
        if pipeline.fleischner is None or not advice:
            continue
        # The pipeline records advice only with the nodules it was derived from.
        first = outcome.lesions[int(outcome.extra["nodules"][0]["lesion"]) - 1]
        code = advice.get("code")
        notes.append(
            NoteEntry(
                algorithm=algo,
                finding_code=first.code,
                tracking=f"Fleischner 2017 follow-up ({outcome.model_name})"[:64],
                comment=f"Decision support by {algo.name} {algo.version}, not verified: "
                f"{advice['statement']}",
                recommendation=(code[0], code[1], code[2]) if code else None,
            )
        )
    return notes


def encode_run(
    results: Sequence[SeriesResult],
    pipeline: PipelineConfig,
    cfg: ResultsConfig,
    *,
    started_at: datetime,
    ready: Callable[[ResultObject], None] | None = None,
) -> list[ResultObject]:
    """All result objects of one pipeline run, grouped per source series (SR first).

    ``ready`` is called with each object as soon as it is complete (a heat map
    and a segmentation before the report that cites them), so a writer can
    store one while the next is encoded.

    A model that did not run (a progression model without priors) adds nothing;
    a model that declined the series adds nothing unless the pipeline says
    ``report_declined``: then the SR says it looked and why it declined. A
    series where no model ran gets no objects.
    """
    by_series: dict[str, list[SeriesResult]] = {}
    for result in results:
        if result.outcome.not_run or (result.outcome.declined and not pipeline.report_declined):
            continue
        by_series.setdefault(result.outcome.series_instance_uid, []).append(result)
    objects: list[ResultObject] = []
    for series_results in by_series.values():
        objects.extend(_series_results(series_results, pipeline, cfg, started_at, ready or _ignore))
    return objects


def _ignore(_obj: ResultObject) -> None:
    pass
