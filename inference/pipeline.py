"""Pipeline stages on records: choose the series, load them, run the models, post-process.

``run_pipeline`` composes the stages top to bottom; the worker calls it and
stores what it returns. Nothing here talks to the database or the network.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from torch import Tensor

from core.config import FleischnerConfig, SeriesRule
from dicomio.errors import InputError, UnsupportedInput
from dicomio.records import Lesion, Outcome, SeriesResult, Volume
from dicomio.volume_in import load_volume, load_waveform
from inference.detect import voxel_probabilities
from inference.domain import (
    Domain,
    check_features,
    check_series,
    check_volume,
)
from inference.execute import (
    classify,
    predict_change,
    predict_sequence,
    with_oom_fallback,
)
from inference.features import feature_probe
from inference.fleischner import advise, measure_nodule
from inference.matching import model_takes, select_series, takes_kind
from inference.package import LoadedModel, check_outputs
from inference.postprocess import findings, label_lesions
from inference.preprocess import days_between, prepare_volume
from inference.spec import ModelSpec
from storage.lookup import PatientHistory, SeriesInfo

__all__ = ["PipelineRun", "run_pipeline"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineRun:
    """What one job produced: results per series and model, or why there were none."""

    results: tuple[SeriesResult, ...]
    skipped_reason: str | None = None

    @property
    def outcomes(self) -> tuple[Outcome, ...]:
        return tuple(r.outcome for r in self.results)


def _timed(timings: dict[str, float], stage: str, start: float) -> float:
    now = time.perf_counter()
    timings[stage] = timings.get(stage, 0.0) + round(now - start, 4)
    return now


def _outcome(spec: ModelSpec, series_uid: str, **results: Any) -> Outcome:
    """An outcome stamped with the model's identity (name, version, weights hash)."""
    return Outcome(
        model_name=spec.name,
        model_version=spec.version,
        model_sha256=spec.sha256,
        task=spec.task,
        series_instance_uid=series_uid,
        **results,
    )


def _declined(spec: ModelSpec, series: SeriesInfo, why: str) -> SeriesResult:
    """No findings: the series lies outside what the model was validated on."""
    logger.info(
        "%s declined series %s: outside its validated input (%s)",
        spec.name,
        series.series_instance_uid,
        why,
    )
    return SeriesResult(
        outcome=_outcome(
            spec,
            series.series_instance_uid,
            declined=f"outside the validated input of {spec.name} ({why})",
        ),
        source_paths=tuple(series.paths),
    )


def _domain(model: LoadedModel, check: bool) -> Domain | None:
    return model.spec.domain.domain if check and model.spec.domain is not None else None


def _volume(series: SeriesInfo, volumes: dict[str, Volume]) -> Volume:
    """A series' volume, read once per job and shared by the models that take it."""
    if series.series_instance_uid not in volumes:
        volumes[series.series_instance_uid] = load_volume(series.paths)
    return volumes[series.series_instance_uid]


@dataclass(frozen=True, slots=True)
class _Prior:
    date: str
    days_before: int
    series: SeriesInfo
    study_instance_uid: str
    prepared: Tensor  # on the model's grid: the full-size volume is freed at once


def _priors(model: LoadedModel, rule: SeriesRule, history: PatientHistory) -> list[_Prior]:
    """Up to ``max_priors`` prior studies, newest first.

    Per prior study the largest series that the pipeline's rules select and the
    model takes; a prior that cannot be read, or whose date is malformed, is
    passed over with a warning (the other models of the job are not failed).
    """
    found: list[_Prior] = []
    for prior in history.priors:
        candidates = [s for s in select_series(prior.series, rule) if model_takes(model, s)]
        if not candidates:
            continue
        best = max(candidates, key=lambda s: len(s.paths))
        try:
            days = days_between(prior.study_date, history.study_date)
            # Not kept in the job's cache: only this model reads priors, and a
            # full-size volume is dropped as soon as it is on the model's grid.
            volume = load_volume(best.paths)
            prepared = prepare_volume(volume, model.spec.input)
            del volume
            found.append(_Prior(prior.study_date, days, best, prior.study_instance_uid, prepared))
        except InputError as exc:
            logger.warning(
                "prior series %s of study %s not usable: %s",
                best.series_instance_uid,
                prior.study_instance_uid,
                exc,
            )
            continue
        if len(found) == model.spec.input.max_priors:
            break
    return found


def _run_progression(
    model: LoadedModel,
    series: SeriesInfo,
    rule: SeriesRule,
    history: PatientHistory | None,
    *,
    amp: bool,
    volumes: dict[str, Volume],
    check_domain: bool,
) -> SeriesResult:
    spec = model.spec
    uid = series.series_instance_uid
    timings: dict[str, float] = {}
    t = time.perf_counter()

    def not_run(why: str) -> SeriesResult:
        return SeriesResult(
            outcome=_outcome(spec, uid, not_run=why), source_paths=tuple(series.paths)
        )

    domain = _domain(model, check_domain)
    if domain is not None and (
        why := check_series(domain, series.modality, series.body_part_examined)
    ):
        return _declined(spec, series, why)
    if history is None or not history.priors:
        return not_run(history.reason if history is not None else "no patient history")
    volume = _volume(series, volumes)
    if domain is not None and (why := check_volume(domain, volume)):
        return _declined(spec, series, why)
    priors = _priors(model, rule, history)[::-1]  # oldest first
    t = _timed(timings, "read", t)
    if not priors:
        return not_run("no prior study of this patient has a usable series the model takes")
    probs = with_oom_fallback(
        lambda m, _b: predict_change(
            m,
            [*(p.prepared for p in priors), volume],
            [p.days_before for p in priors] + [0],
            amp=amp,
        ),
        model,
        1,
    )
    t = _timed(timings, "forward", t)
    check_outputs(model, len(probs))
    result = findings(list(probs), spec.labels)
    _timed(timings, "postprocess", t)
    compared = [
        {
            "study_instance_uid": p.study_instance_uid,
            "series_instance_uid": p.series.series_instance_uid,
            "study_date": p.date,
            "days_before": p.days_before,
        }
        for p in priors
    ]
    return SeriesResult(
        outcome=_outcome(spec, uid, findings=result, timings_s=timings, extra={"priors": compared}),
        source_paths=tuple(series.paths),
        sop_instance_uids=volume.sop_instance_uids,
        frame_numbers=volume.frame_numbers,
        source_headers=volume.headers,
        comparison_paths=tuple(path for p in priors for path in p.series.paths),
    )


def _run_model(
    model: LoadedModel,
    series: SeriesInfo,
    *,
    batch_size: int,
    amp: bool,
    volumes: dict[str, Volume],
    check_domain: bool,
    fleischner: FleischnerConfig | None = None,
) -> SeriesResult:
    spec = model.spec
    paths, series_uid = series.paths, series.series_instance_uid
    sources = tuple(paths)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    extra: dict[str, object] = {}
    if spec.task == "sequence":
        waveform = load_waveform(paths[0])
        t = _timed(timings, "read", t)
        probs = with_oom_fallback(lambda m, _b: predict_sequence(m, waveform, amp=amp), model, 1)
        t = _timed(timings, "forward", t)
        check_outputs(model, len(probs))
        result = findings(list(probs), spec.labels)
        _timed(timings, "postprocess", t)
        return SeriesResult(
            outcome=_outcome(spec, series_uid, findings=result, timings_s=timings),
            source_paths=sources,
            sop_instance_uids=(waveform.sop_instance_uid,),
        )
    domain = _domain(model, check_domain)
    if domain is not None and (
        why := check_series(domain, series.modality, series.body_part_examined)
    ):
        return _declined(spec, series, why)
    volume = _volume(series, volumes)
    t = _timed(timings, "read", t)
    if domain is not None and (why := check_volume(domain, volume)):
        return _declined(spec, series, why)
    layer = domain.features.layer if domain is not None and domain.features else None
    if spec.task in ("segmentation", "detection"):
        with feature_probe(model.module, layer) as probe:
            prob = with_oom_fallback(
                lambda m, b: voxel_probabilities(m, volume, batch_size=b, amp=amp),
                model,
                batch_size,
            )
        t = _timed(timings, "forward", t)
        if domain is not None and (why := check_features(domain, probe.vector())):
            return _declined(spec, series, why)
        found: list[Lesion] = []
        label_map: npt.NDArray[np.uint16] | None = None
        check_outputs(model, prob.shape[0])
        for channel, label in enumerate(spec.labels):
            channel_lesions, channel_map = label_lesions(prob[channel], volume, label)
            if label_map is None:  # one channel (the usual case): no copy at all
                label_map = channel_map
            else:  # numbered after the lesions of the channels before
                np.copyto(label_map, channel_map + len(found), where=channel_map > 0)
            found.extend(channel_lesions)
        if fleischner is not None and label_map is not None:
            nodules = [
                {"lesion": n, **measure_nodule(volume, label_map, lesion, n)}
                for n, lesion in enumerate(found, start=1)
                if lesion.label in fleischner.labels
            ]
            if nodules:
                advice = advise(nodules, fleischner.risk)
                extra["nodules"] = nodules
                extra["recommendation"] = {
                    "code": list(advice.code) if advice.code else None,
                    "statement": advice.statement,
                }
        _timed(timings, "postprocess", t)
        return SeriesResult(
            outcome=_outcome(
                spec, series_uid, lesions=tuple(found), timings_s=timings, extra=extra
            ),
            source_paths=sources,
            sop_instance_uids=volume.sop_instance_uids,
            frame_numbers=volume.frame_numbers,
            source_headers=volume.headers,
            lesion_labels=label_map,
        )
    with feature_probe(model.module, layer) as probe:
        probs, attention = with_oom_fallback(lambda m, _b: classify(m, volume, amp=amp), model, 1)
    t = _timed(timings, "forward", t)
    if domain is not None and (why := check_features(domain, probe.vector())):
        return _declined(spec, series, why)
    check_outputs(model, len(probs))
    result = findings(list(probs), spec.labels)
    if attention is not None:
        k, j, i = _peak(attention)
        extra["attention_peak_kji"] = [k, j, i]
        extra["attention_peak_mm"] = [float(v) for v in volume.to_patient([k, j, i])]
    _timed(timings, "postprocess", t)
    return SeriesResult(
        outcome=_outcome(spec, series_uid, findings=result, timings_s=timings, extra=extra),
        source_paths=sources,
        sop_instance_uids=volume.sop_instance_uids,
        frame_numbers=volume.frame_numbers,
        source_headers=volume.headers,
        attention=attention,
    )


def _peak(attention: npt.NDArray[np.float32]) -> tuple[int, int, int]:
    """Voxel index (k, j, i) of the attention map's hot spot."""
    k, j, i = np.unravel_index(int(attention.argmax()), attention.shape)
    return int(k), int(j), int(i)


def run_pipeline(
    series: Sequence[SeriesInfo],
    rule: SeriesRule,
    models: Sequence[LoadedModel],
    *,
    batch_size: int,
    amp: bool,
    history: PatientHistory | None = None,
    check_domain: bool = True,
    fleischner: FleischnerConfig | None = None,
) -> PipelineRun:
    """Run every model on every series it takes, among the series the rule selects.

    A progression model also needs the patient's ``history``: it compares the
    series with the same kind of series in the newest prior studies; without
    any, its outcome says why it did not run. A model whose package records its
    validated input domain declines a series outside it (``check_domain``), and
    a series the rules select but no model takes by modality is declined by
    the pipeline's models of its kind, each saying what it was made for.
    With ``fleischner``, the lesions of its labels are measured as the
    Fleischner 2017 table asks (``outcome.extra["nodules"]``) and the table's
    follow-up is looked up (``outcome.extra["recommendation"]``).
    """
    chosen = select_series(series, rule)
    if not chosen:
        return PipelineRun(results=(), skipped_reason="no series matches the pipeline's rules")
    outcomes = []
    volumes: dict[str, Volume] = {}
    for s in chosen:
        takers = [m for m in models if model_takes(m, s)]
        if not takers:
            for model in (m for m in models if takes_kind(m, s)):
                made_for = ", ".join(model.spec.input.modalities)
                why = f"modality {s.modality or 'none'}; made for {made_for}"
                outcomes.append(_declined(model.spec, s, why))
        for model in takers:
            if model.spec.task == "progression":
                outcomes.append(
                    _run_progression(
                        model, s, rule, history, amp=amp, volumes=volumes, check_domain=check_domain
                    )
                )
            else:
                outcomes.append(
                    _run_model(
                        model,
                        s,
                        batch_size=batch_size,
                        amp=amp,
                        volumes=volumes,
                        check_domain=check_domain,
                        fleischner=fleischner,
                    )
                )
    if not outcomes:
        raise UnsupportedInput(
            f"no model of the pipeline takes the matching series "
            f"({', '.join(s.modality or '?' for s in chosen)})"
        )
    return PipelineRun(results=tuple(outcomes))
