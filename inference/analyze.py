"""``ainode analyze PATH... --out DIR``: the worker's stages on files, without a network.

For an ML engineer trying a model on a study, or an admin checking a rule:
the same selection, models, post-processing and result encoders as the worker,
reading files instead of the store and writing the result objects to a folder.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from core.config import NodeConfig
from core.errors import PermanentError, describe
from dicomio.results.compose import encode_run
from dicomio.results.part10 import to_bytes
from dicomio.volume_in import patient_and_date, scan_studies
from inference.errors import ModelPackageError
from inference.execute import pick_device
from inference.package import LoadedModel
from inference.pipeline import run_pipeline
from inference.trial import load_and_try
from storage.lookup import PatientHistory, PriorStudy, SeriesInfo

__all__ = ["AnalyzeError", "analyze", "scanned_histories"]

logger = logging.getLogger(__name__)


class AnalyzeError(Exception):
    """Nothing to analyse, or an unknown pipeline name."""


def analyze(
    cfg: NodeConfig,
    paths: Sequence[Path],
    out: Path,
    *,
    pipelines: Sequence[str] | None = None,
) -> int:
    """Run matching pipelines on every study in ``paths``; print findings; 0 if all ran."""
    chosen = [p for p in cfg.pipelines if p.models and (not pipelines or p.name in pipelines)]
    unknown = set(pipelines or ()) - {p.name for p in cfg.pipelines}
    if unknown:
        raise AnalyzeError(f"no pipeline named {', '.join(sorted(unknown))} in {cfg.path}")
    if not chosen:
        raise AnalyzeError(f"no pipeline with models in {cfg.path}")
    try:
        device = pick_device(cfg.inference.device)
    except RuntimeError as exc:
        raise AnalyzeError(str(exc)) from None
    cache: dict[Path, LoadedModel] = {}
    for pipeline in chosen:
        for folder in pipeline.models:
            if folder not in cache:
                try:
                    cache[folder] = load_and_try(folder, device)
                except ModelPackageError as exc:
                    raise AnalyzeError(f"[[pipelines]] {pipeline.name!r}: {exc}") from None
    try:
        scan = scan_studies(paths)
    except FileNotFoundError as exc:
        raise AnalyzeError(str(exc)) from None
    for bad in scan.unreadable:
        print(f"{bad.path}: not read: {bad.reason}", file=sys.stderr)
    studies = scan.studies
    if not studies:
        raise AnalyzeError("no DICOM files found in " + ", ".join(str(p) for p in paths))
    failures = len(scan.unreadable)
    out.mkdir(parents=True, exist_ok=True)
    histories = scanned_histories(studies)
    for study_uid, series in studies.items():
        print(f"study {study_uid}: {len(series)} series")
        for pipeline in chosen:
            models = [cache[m] for m in pipeline.models]
            started_at = datetime.now(UTC)
            try:
                run = run_pipeline(
                    series,
                    pipeline.match,
                    models,
                    batch_size=cfg.inference.batch_size,
                    amp=cfg.inference.amp,
                    history=histories[study_uid],
                    check_domain=pipeline.domain_check,
                    fleischner=pipeline.fleischner,
                )
            except PermanentError as exc:
                print(f"  {pipeline.name}: cannot run: {exc}")
                failures += 1
                continue
            except Exception as exc:  # the edge of a batch run: one study must not stop the rest
                logger.debug("pipeline %s on study %s", pipeline.name, study_uid, exc_info=True)
                print(f"  {pipeline.name}: cannot run: {describe(exc)}")
                failures += 1
                continue
            if run.skipped_reason:
                print(f"  {pipeline.name}: skipped: {run.skipped_reason}")
                continue
            for o in run.outcomes:
                print(f"  {pipeline.name}: {o.model_name} {o.model_version} ({o.task})")
                if o.not_run:
                    print(f"    not run: {o.not_run}")
                if o.declined:
                    print(f"    not analysed: {o.declined}")
                if advice := o.extra.get("recommendation"):
                    print(f"    follow-up (decision support): {advice['statement']}")
                for prior in o.extra.get("priors", []):
                    print(
                        f"    compared with study {prior['study_instance_uid']} of "
                        f"{prior['study_date']} ({prior['days_before']} days before)"
                    )
                for f in o.findings:
                    mark = "POSITIVE" if f.positive else "negative"
                    print(
                        f"    {f.label:16} p={f.probability:.3f} "
                        f"(threshold {f.threshold:.2f}) {mark}"
                    )
                for n, lesion in enumerate(o.lesions, start=1):
                    x, y, z = lesion.centroid_mm
                    print(
                        f"    lesion {n}: {lesion.volume_mm3:9.1f} mm3, longest diameter "
                        f"{lesion.longest_diameter_mm:5.1f} mm, at ({x:.1f}, {y:.1f}, {z:.1f}) mm"
                    )
            try:
                objects = encode_run(run.results, pipeline, cfg.results, started_at=started_at)
            except Exception as exc:  # the edge of a batch run: one study must not stop the rest
                logger.debug("encoding %s results of %s", pipeline.name, study_uid, exc_info=True)
                print(f"  {pipeline.name}: cannot write results: {describe(exc)}")
                failures += 1
                continue
            folder = out / study_uid
            folder.mkdir(parents=True, exist_ok=True)
            for obj in objects:
                path = folder / f"{obj.kind}_{obj.sop_instance_uid}.dcm"
                path.write_bytes(to_bytes(obj.dataset))
                print(f"    wrote {obj.kind}: {path}")
    return 1 if failures else 0


def scanned_histories(studies: dict[str, list[SeriesInfo]]) -> dict[str, PatientHistory]:
    """Each scanned study's priors among the other scanned studies.

    The same rule as the worker's index lookup: same Patient ID, an earlier
    Study Date, newest first; a study without either has no priors, and says why.
    """
    keys = {uid: patient_and_date(series[0].paths[0]) for uid, series in studies.items()}
    out = {}
    for uid, (patient, date) in keys.items():
        earlier = sorted(
            (
                (d, other)
                for other, (p, d) in keys.items()
                if patient and date and p == patient and d and d < date
            ),
            reverse=True,
        )
        priors = tuple(
            PriorStudy(study_instance_uid=other, study_date=d, series=tuple(studies[other]))
            for d, other in earlier
        )
        if not patient:
            reason = "the study has no Patient ID"
        elif not date:
            reason = "the study has no Study Date"
        else:
            reason = "" if priors else "no earlier study of this patient among the inputs"
        out[uid] = PatientHistory(study_date=date, priors=priors, reason=reason)
    return out
