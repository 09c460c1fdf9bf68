"""DICOM in and out, below inference, training and the node.

Series -> volumes and waveforms (:mod:`dicomio.volume_in`), segmentation
ground truth (:mod:`dicomio.seg_in`), the records they produce
(:mod:`dicomio.records`), and the result objects (:mod:`dicomio.results`: the
one place highdicom lives).
"""

__all__: list[str] = []
