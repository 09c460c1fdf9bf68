"""From ainode's volume layout to a foreign model's axis order and back (MONAI's axcodes).

ainode holds a volume as ``[k, j, i]``: slices along the normal, rows along
the column direction, columns along the row direction, in DICOM patient
coordinates (LPS). A MONAI bundle expects ``(X, Y, Z)`` in the orientation
its ``Orientationd(axcodes=...)`` names, e.g. ``"RAS"``: the first axis
increasing towards the patient's Right, the second Anterior, the third
Superior. Each of the volume's three axes is matched to the target letter of
its dominant direction (flipped when it points the other way), so oblique and
non-axial series work as MONAI's own orientation would treat them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor

from dicomio.errors import UnsupportedInput
from dicomio.records import Volume

__all__ = ["Orientation", "orientation_of"]

# Each letter: (LPS axis, direction along it). L, P, S are +x, +y, +z of DICOM's LPS.
_LETTERS = {"L": (0, 1), "R": (0, -1), "P": (1, 1), "A": (1, -1), "S": (2, 1), "I": (2, -1)}


@dataclass(frozen=True, slots=True)
class Orientation:
    """Target axis t holds our axis ``perm[t]``, flipped where ``flips[t]``."""

    perm: tuple[int, int, int]
    flips: tuple[bool, bool, bool]

    def apply(self, x: Tensor) -> Tensor:
        """(N, C, D, H, W) in ainode's layout -> (N, C, X, Y, Z) in the model's."""
        y = x.permute(0, 1, *(2 + a for a in self.perm))
        dims = [2 + t for t, flip in enumerate(self.flips) if flip]
        return y.flip(dims) if dims else y

    def invert(self, y: Tensor) -> Tensor:
        """The model's (N, C, X, Y, Z) -> ainode's (N, C, D, H, W)."""
        dims = [2 + t for t, flip in enumerate(self.flips) if flip]
        y = y.flip(dims) if dims else y
        back = [0, 1, *(2 + self.perm.index(a) for a in range(3))]
        return y.permute(*back)

    def to_ours(self, values: tuple[float, float, float]) -> tuple[float, float, float]:
        """A per-axis quantity given in the model's (X, Y, Z) order, in ours (D, H, W)."""
        ours = [0.0, 0.0, 0.0]
        for t, a in enumerate(self.perm):
            ours[a] = values[t]
        return (ours[0], ours[1], ours[2])


def orientation_of(volume: Volume, axcodes: str) -> Orientation:
    """How to bring ``volume`` into ``axcodes`` (three of L/R, P/A, S/I, one per axis)."""
    codes = axcodes.upper()
    if len(codes) != 3 or sorted(_LETTERS[c][0] for c in codes if c in _LETTERS) != [0, 1, 2]:
        raise UnsupportedInput(f"orientation {axcodes!r} is not three of L/R, P/A, S/I")
    directions = [volume.normal, volume.column_direction, volume.row_direction]  # axes k, j, i
    dominant = [int(np.argmax(np.abs(d))) for d in directions]
    if sorted(dominant) != [0, 1, 2]:
        raise UnsupportedInput("the series' axes are too oblique to orient for this model")
    perm, flips = [], []
    for code in codes:
        lps_axis, sign = _LETTERS[code]
        ours = dominant.index(lps_axis)
        perm.append(ours)
        flips.append(bool(np.sign(directions[ours][lps_axis]) != sign))
    return Orientation(perm=(perm[0], perm[1], perm[2]), flips=(flips[0], flips[1], flips[2]))
