"""An attention map as a 32-bit float Parametric Map (what OHIF overlays)."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from core.config import ResultsConfig
from dicomio.results.identity import Algorithm, derived_object
from dicomio.results.sources import SourceSeries, copy_study_context

__all__ = ["encode_attention_map"]


def encode_attention_map(
    sources: SourceSeries,
    attention: npt.NDArray[np.float32],
    algorithm: Algorithm,
    cfg: ResultsConfig,
    *,
    series_number: int,
    series_description: str,
) -> Dataset:
    """``attention`` (0..1, the source grid) as float Parametric Map frames, one per slice.

    The map keeps the source's Rows and Columns and one frame per source slice:
    OHIF 3.13 refuses a map of another size ("different geometry dimensions ...
    not yet supported") and fails on one with fewer frames ("Invalid typed array
    length"), both checked with ohif_snapshot.sh. So a 200-slice 512x512 CT gets
    a 210 MB map.
    """
    values = attention.astype(np.float32, copy=False)
    if values.size and (values.min() < 0.0 or values.max() > 1.0):  # a copy only if needed
        values = np.clip(values, 0.0, 1.0)
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="ATTENTION",
        lut_explanation=f"{algorithm.name} attention 0..1"[:64],
        unit=codes.UCUM.NoUnits,
        value_range=(0.0, 1.0),
        slope=1.0,
        intercept=0.0,
        quantity_definition=codes.DCM.Saliency,
    )
    pm = hd.pm.ParametricMap(
        source_images=sources.instances,
        pixel_array=sources.in_frame_order(values),
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.5, window_width=1.0)],
        content_label="ATTENTION",
        content_description=f"{algorithm.name} {algorithm.version} attention"[:64],
        **derived_object(  # type: ignore[arg-type]
            algorithm, cfg, series_number=series_number, series_description=series_description
        ),
    )
    copy_study_context(pm, sources.first)
    return pm
