"""Which series a pipeline takes, and which of them each of its models takes.

A pipeline's ``[pipelines.match]`` rules (:class:`core.config.SeriesRule`)
select series from a completed study; a model then takes a selected series
when its kind (waveform or image) and modality fit the package.
"""

from __future__ import annotations

from collections.abc import Sequence

from core.config import SeriesRule
from dicomio.volume_in import is_axial, series_orientation
from inference.package import LoadedModel
from storage.lookup import SeriesInfo

__all__ = ["matches", "model_takes", "select_series", "takes_kind"]

_WAVEFORM_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.9.1.1",  # 12-lead ECG
    "1.2.840.10008.5.1.4.1.1.9.1.2",  # General ECG
    "1.2.840.10008.5.1.4.1.1.9.1.3",  # Ambulatory ECG
    "1.2.840.10008.5.1.4.1.1.9.1.4",  # General 32-bit ECG
}


def matches(series: SeriesInfo, rule: SeriesRule) -> bool:
    """Whether a series satisfies every rule that is set."""
    if rule.modalities and series.modality.upper() not in rule.modalities:
        return False
    if rule.body_parts and series.body_part_examined.upper() not in rule.body_parts:
        return False
    if rule.series_description and not rule.series_description.search(series.series_description):
        return False
    if rule.sop_classes and not set(series.sop_class_uids) & set(rule.sop_classes):
        return False
    if len(series.paths) < rule.min_instances:
        return False
    if rule.axial_only:
        orientation = series_orientation(series.paths[0])
        if orientation is None or not is_axial(*orientation):
            return False
    return True


def select_series(series: Sequence[SeriesInfo], rule: SeriesRule) -> list[SeriesInfo]:
    return [s for s in series if matches(s, rule)]


def takes_kind(model: LoadedModel, series: SeriesInfo) -> bool:
    """A waveform model and a waveform series, or an image model and an image series."""
    is_waveform = bool(set(series.sop_class_uids) & _WAVEFORM_CLASSES)
    return (model.spec.task == "sequence") == is_waveform


def model_takes(model: LoadedModel, series: SeriesInfo) -> bool:
    if not takes_kind(model, series):
        return False
    mods = model.spec.input.modalities
    return not mods or series.modality.upper() in mods
