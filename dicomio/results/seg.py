"""Lesions as a Segmentation: one segment per lesion, parallel to the source.

BINARY where each frame fills whole bytes. A BINARY frame of rows x columns not a
multiple of 8 starts mid-byte; Orthanc's DICOMweb answers 400 to such a frame and
OHIF 3.13 then never shows the SEG (seen with ``ohif_snapshot.sh`` on a 215 x 215
CT). Those get a pseudo-binary FRACTIONAL SEG (occupancy, pixels 0 or the
Maximum Fractional Value), one byte per pixel, which both display.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from core.config import ResultsConfig
from dicomio.records import Lesion
from dicomio.results.identity import Algorithm, derived_object, segment_algorithm
from dicomio.results.sources import SourceSeries, copy_study_context

__all__ = ["MAX_SEGMENTS", "PALETTE_RGB", "coded", "encode_segmentation", "segmentation_type"]

# Each segment's Recommended Display CIELab Value, in turn: saturated colours that stand
# out on grey CT through a viewer's translucent fill (OHIF's default palette is pale), none
# green (OHIF draws SR measurements in green).
PALETTE_RGB = (
    (255, 0, 0),
    (255, 230, 0),
    (255, 0, 255),
    (255, 128, 0),
    (0, 200, 255),
    (128, 64, 255),
)

# A model that sprays hundreds of specks should not make an unreadable SEG or
# SR: they report the largest lesions (the stored outcome keeps all of them).
MAX_SEGMENTS = 20


def coded(code: tuple[str, str, str]) -> hd.sr.CodedConcept:
    """A (value, scheme, meaning) code from a model package as a coded concept."""
    value, scheme, meaning = code
    return hd.sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def segmentation_type(rows: int, columns: int) -> hd.seg.SegmentationTypeValues:
    """BINARY when a frame's bits fill whole bytes, else pseudo-binary FRACTIONAL."""
    if rows * columns % 8 == 0:
        return hd.seg.SegmentationTypeValues.BINARY
    return hd.seg.SegmentationTypeValues.FRACTIONAL


def encode_segmentation(
    sources: SourceSeries,
    labels: npt.NDArray[np.uint16],
    lesions: Sequence[Lesion],
    tracking_uids: Sequence[str],
    algorithm: Algorithm,
    cfg: ResultsConfig,
    *,
    series_number: int,
    series_description: str,
) -> Dataset:
    """A SEG of ``lesions`` (``labels == n`` is lesion n), empty frames omitted."""
    count = min(len(lesions), MAX_SEGMENTS)
    if count == 0:
        raise ValueError("a segmentation needs at least one lesion")
    algo = segment_algorithm(algorithm, cfg)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n,
            segment_label=f"Lesion {n}",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=coded(lesions[n - 1].code),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algo,
            tracking_uid=tracking_uids[n - 1],
            tracking_id=f"Lesion {n}",
            display_color=hd.color.CIELabColor.from_rgb(*PALETTE_RGB[(n - 1) % len(PALETTE_RGB)]),
        )
        for n in range(1, count + 1)
    ]

    def kept(array: npt.NDArray[np.uint16]) -> npt.NDArray[np.uint16]:
        """``array`` (a copy of the labels) without the lesions past ``count``."""
        if count < len(lesions):
            array[array > count] = 0
        return array

    if sources.frames:  # one multi-frame source: every frame, in its own order
        images, pixels = sources.instances, kept(sources.in_frame_order(labels).astype(np.uint16))
    else:
        # Only the slices a lesion touches: the SEG omits empty frames anyway, and
        # highdicom's checks cost time per frame (a 200-slice CT, two lesions).
        def touched(array: npt.NDArray[np.uint16]) -> npt.NDArray[np.intp]:
            return np.flatnonzero(array.reshape(array.shape[0], -1).any(axis=1))

        some = touched(labels)  # slices with any lesion, then those with a reported one
        pixels = kept(labels[some])
        inside = touched(pixels)
        images, pixels = [sources.slices[int(k)] for k in some[inside]], pixels[inside]
    seg = hd.seg.Segmentation(
        source_images=images,
        # A label map (value n = segment n): lesions never overlap, and stacking
        # one 0/1 array per segment would cost frames x rows x columns x segments.
        pixel_array=pixels.astype(np.uint8),
        segmentation_type=segmentation_type(int(labels.shape[-2]), int(labels.shape[-1])),
        fractional_type=hd.seg.SegmentationFractionalTypeValues.OCCUPANCY,
        segment_descriptions=descriptions,
        content_label="LESIONS",
        content_description=f"{algorithm.name} {algorithm.version}"[:64],
        omit_empty_frames=True,
        **derived_object(  # type: ignore[arg-type]
            algorithm, cfg, series_number=series_number, series_description=series_description
        ),
    )
    copy_study_context(seg, sources.first)
    return seg
