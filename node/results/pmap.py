"""An attention map as a 32-bit float Parametric Map (what OHIF overlays)."""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from node.config import ResultsConfig
from node.results.identity import Algorithm, contributing_equipment
from node.results.sources import copy_study_context

__all__ = ["MAX_MAP_SIZE", "encode_attention_map", "map_grid"]

# In-plane size of the heat map. An attention map is smooth (upsampled from the
# model's input), so a 512x512 source does not need 512x512 float frames: a
# 200-slice CT would make a 210 MB object. Larger sources are sampled every
# n-th pixel; the map keeps its own geometry in the same frame of reference.
MAX_MAP_SIZE = 128


def map_grid(rows: int, cols: int, limit: int = MAX_MAP_SIZE) -> int:
    """The block size (1 = the source grid) that brings rows and cols within ``limit``."""
    return max(1, -(-max(rows, cols) // limit))


def _subsample(values: np.ndarray, factor: int) -> np.ndarray:
    """Every ``factor``-th pixel, starting at the centre of the first block."""
    if factor == 1:
        return values
    offset = factor // 2
    return np.ascontiguousarray(values[:, offset::factor, offset::factor])


def _geometry(sources: Sequence[Dataset], factor: int) -> dict[str, object]:
    """Pixel measures and plane positions of the block-averaged grid."""
    if factor == 1:
        return {}
    orientation = [float(v) for v in sources[0].ImageOrientationPatient]
    row_dir, col_dir = np.array(orientation[:3]), np.array(orientation[3:])
    spacing_row, spacing_col = (float(v) for v in sources[0].PixelSpacing)
    # The first sample is source pixel (factor // 2, factor // 2).
    shift = (factor // 2) * (row_dir * spacing_col + col_dir * spacing_row)
    return {
        "pixel_measures": hd.PixelMeasuresSequence(
            pixel_spacing=(spacing_row * factor, spacing_col * factor),
            slice_thickness=float(sources[0].get("SliceThickness", 1.0) or 1.0),
        ),
        "plane_orientation": hd.PlaneOrientationSequence(
            coordinate_system="PATIENT", image_orientation=orientation
        ),
        "plane_positions": [
            hd.PlanePositionSequence(
                coordinate_system="PATIENT",
                image_position=[float(v) for v in np.array(ds.ImagePositionPatient, float) + shift],
            )
            for ds in sources
        ],
    }


def encode_attention_map(
    sources: Sequence[Dataset],
    attention: npt.NDArray[np.float32],
    algorithm: Algorithm,
    cfg: ResultsConfig,
    *,
    series_number: int,
    series_description: str,
) -> Dataset:
    """``attention`` (0..1, the source grid) as float Parametric Map frames, one per slice.

    Sources wider than :data:`MAX_MAP_SIZE` pixels get a subsampled map.
    """
    factor = map_grid(int(sources[0].Rows), int(sources[0].Columns))
    values = np.clip(_subsample(attention, factor), 0.0, 1.0).astype(np.float32)
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
        source_images=list(sources),
        pixel_array=values,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=cfg.manufacturer,
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
        device_serial_number=cfg.device_serial_number or "1",
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.5, window_width=1.0)],
        series_description=series_description,
        content_label="ATTENTION",
        content_description=f"{algorithm.name} {algorithm.version} attention"[:64],
        contributing_equipment=contributing_equipment([algorithm], cfg),
        **_geometry(sources, factor),  # type: ignore[arg-type]
    )
    copy_study_context(pm, sources[0])
    return pm
