"""Running a loaded model on a volume or a waveform: device, AMP, batching, sliding window.

Everything here runs under ``torch.inference_mode``. On CUDA, autocast uses
bfloat16 when the config allows AMP. A CUDA out-of-memory error is retried
with a batch of one, then on a CPU copy of the model: it never crashes the
worker, and the next job runs on the GPU again.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor
from torch.nn import functional as F

from dicomio.records import Volume, Waveform
from inference.orient import orientation_of
from inference.package import LoadedModel, load_package
from inference.preprocess import prepare_history, prepare_waveform, resampled_shape, window

__all__ = [
    "ATTENTION_LEVELS",
    "classify",
    "pick_device",
    "predict_change",
    "predict_sequence",
    "segment",
    "tile_starts",
    "with_oom_fallback",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")


def pick_device(setting: str) -> torch.device:
    """``auto``: CUDA when present, else CPU."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"[inference] device = {setting!r} but no CUDA device is available")
    return torch.device(setting)


def _autocast(device: torch.device, amp: bool) -> torch.autocast:
    enabled = amp and device.type == "cuda"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def _channels_last(module: torch.nn.Module, device: torch.device) -> None:
    """On the CPU, the 3-D weights channels-last (oneDNN's fast path), once, in place.

    The input stays as it is (converting it too was slower here). Measured with
    bench/inference.py: the same output within float rounding.
    """
    if device.type != "cpu" or getattr(module, "_ainode_channels_last", False):
        return
    if all(p.dim() != 4 for p in module.parameters()):  # 4-D weights cannot be "_3d"
        # Ordinary tensors even when called under inference mode (a training run's
        # validation): the module may be trained further.
        with torch.inference_mode(False), torch.no_grad():
            module.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
    module._ainode_channels_last = True  # type: ignore[assignment]


def tile_starts(size: int, patch: int) -> list[int]:
    """Where the sliding window's patches start along an axis of ``size`` voxels: a
    quarter's overlap, the last patch flush with the end."""
    if size <= patch:
        return [0]
    starts = list(range(0, size - patch, max(1, int(patch * 0.75))))
    return [*starts, size - patch]


# At most this many distinct uniform values are served from one pass each; patches
# of any other uniform value go through the network like the rest.
_MAX_UNIFORM_VALUES = 8


def _uniform_value(piece: Tensor, seen: set[float]) -> float | None:
    """The one value every voxel of ``piece`` has, if so and if it is among ``seen``
    or there is room for another (``seen`` grows)."""
    low, high = torch.aminmax(piece)
    if bool(low != high):
        return None
    value = float(low)
    if value not in seen and len(seen) == _MAX_UNIFORM_VALUES:
        return None
    seen.add(value)
    return value


def segment(
    model: LoadedModel,
    volume: Volume,
    *,
    batch_size: int,
    amp: bool,
    channels_last: bool = True,
    reuse_uniform: bool = True,
) -> npt.NDArray[np.float32]:
    """Per-label probability maps ``(labels, D, H, W)`` on the volume's own grid.

    A foreign model's orientation (``[input] axcodes``) is applied after
    resampling and undone before the maps go back to the source grid; its
    ``target_spacing`` and ``patch`` are in its own axis order. Sigmoid per
    channel, or softmax over the channels with the background one dropped.
    ``channels_last=False`` and ``reuse_uniform=False`` only for
    bench/inference.py's comparison (every patch through the network as loaded).
    """
    spec = model.spec.input
    source_shape = volume.array.shape
    orient = orientation_of(volume, spec.axcodes) if spec.axcodes else None
    divisor = int(getattr(model.module, "divisor", 1))

    def fit(shape: Sequence[int]) -> tuple[int, ...]:
        patch = spec.patch or tuple(shape)
        return tuple(-(-p // divisor) * divisor for p in patch)

    patch = fit(source_shape)
    if (
        spec.target_spacing is None
        and orient is None
        and min(g - p for g, p in zip(source_shape, patch, strict=True)) >= 0
    ):
        # Each patch windowed as it is cut from the volume (the same arithmetic
        # voxel by voxel): no windowed copy of the whole volume is held.
        grid: tuple[int, ...] = tuple(source_shape)
        pieces = _Pieces(volume.array, patch, spec.window)
    else:
        x = window(volume.array, spec.window)
        if spec.target_spacing is not None:
            target = orient.to_ours(spec.target_spacing) if orient else spec.target_spacing
            x = F.interpolate(x, size=resampled_shape(volume, target), mode="trilinear")
        if orient is not None:
            x = orient.apply(x).contiguous()
        patch = fit(x.shape[2:])
        # Pad to at least one patch in each axis; cropped off again below.
        grid = tuple(x.shape[2:])
        padded = [max(g, p) for g, p in zip(grid, patch, strict=True)]
        x = F.pad(x, [0, padded[2] - grid[2], 0, padded[1] - grid[1], 0, padded[0] - grid[0]])
        pieces = _Pieces(x, patch, None)
        del x
    if channels_last:
        _channels_last(model.module, model.device)
    with torch.inference_mode(), _autocast(model.device, amp):
        out = _window_average(model, pieces, batch_size=batch_size, reuse_uniform=reuse_uniform)
        del pieces
        prob = _activate(out, model.spec.activation, model.spec.background_channel)
        prob = prob[:, :, : grid[0], : grid[1], : grid[2]]
        if orient is not None:
            prob = orient.invert(prob)
        if tuple(prob.shape[2:]) != tuple(source_shape):
            prob = F.interpolate(prob, size=source_shape, mode="trilinear")
        return prob[0].numpy().astype(np.float32, copy=False)


class _Pieces:
    """Patches of a (windowed) input: a tensor ``(1, 1, D, H, W)`` cut as it is, or a
    volume array windowed patch by patch."""

    def __init__(
        self,
        source: Tensor | npt.NDArray[np.float32],
        patch: tuple[int, ...],
        bounds: tuple[float, float] | None,
    ) -> None:
        self.source, self.patch, self.bounds = source, patch, bounds
        self.shape: tuple[int, ...] = tuple(source.shape[-3:])

    def __call__(self, corner: tuple[int, ...]) -> Tensor:
        z, y, w = corner
        pz, py, pw = self.patch
        if isinstance(self.source, Tensor):
            return self.source[:, :, z : z + pz, y : y + py, w : w + pw]
        return window(self.source[z : z + pz, y : y + py, w : w + pw], self.bounds)


def _window_average(
    model: LoadedModel, pieces: _Pieces, *, batch_size: int, reuse_uniform: bool
) -> Tensor:
    """The model's logits over the input (at least one patch in each axis), patch by
    patch with a quarter's overlap, averaged where patches overlap."""
    padded, patch, piece_at = pieces.shape, pieces.patch, pieces
    axis_starts = [tile_starts(n, p) for n, p in zip(padded, patch, strict=True)]
    corners = list(itertools.product(*axis_starts))
    out: Tensor | None = None

    def add(corner: tuple[int, ...], logits: Tensor) -> None:
        nonlocal out
        if out is None:
            out = torch.zeros((1, logits.shape[0], *padded))
        z, y, w = corner
        out[0, :, z : z + patch[0], y : y + patch[1], w : w + patch[2]] += logits

    def run(batch: list[Tensor]) -> Tensor:
        logits: Tensor = model.module(torch.cat(batch).to(model.device))
        return logits.float().cpu()

    # A patch whose input is one value throughout (air or lung clamped by the
    # window, padding) gives the same output wherever it is: the network sees
    # nothing but the patch. One forward pass per such value serves them all.
    uniform: dict[tuple[int, ...], float] = {}
    seen: set[float] = set()
    batch_corners: list[tuple[int, ...]] = []
    batch: list[Tensor] = []
    for n, corner in enumerate(corners):
        piece = piece_at(corner)  # each patch is cut (and windowed) once
        value = _uniform_value(piece, seen) if reuse_uniform else None
        if value is not None:
            uniform[corner] = value
        else:
            batch_corners.append(corner)
            batch.append(piece)
        if batch and (len(batch) == batch_size or n == len(corners) - 1):
            for done, logits in zip(batch_corners, run(batch), strict=True):
                add(done, logits)
            batch_corners, batch = [], []
    values = sorted(seen)
    by_value: dict[float, Tensor] = {}
    for i in range(0, len(values), batch_size):
        some = values[i : i + batch_size]
        by_value.update(zip(some, run([torch.full((1, 1, *patch), v) for v in some]), strict=True))
    for corner, value in uniform.items():
        add(corner, by_value[value])
    assert out is not None
    # The corners are a product of per-axis starts, so the number of patches over a
    # voxel is a product of per-axis counts: divided axis by axis, in place, without
    # a second volume-sized tensor.
    for axis, (size, starts) in enumerate(zip(padded, axis_starts, strict=True)):
        covered = torch.zeros(size)
        for start in starts:
            covered[start : start + patch[axis]] += 1
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = size
        out.div_(covered.view(shape))
    return out


def _activate(logits: Tensor, activation: str, background: int | None) -> Tensor:
    if activation == "sigmoid":
        return logits.sigmoid_()  # in place: no second full-size copy
    prob = torch.softmax(logits, dim=1)
    if background is None:
        return prob
    keep = [c for c in range(prob.shape[1]) if c != background]
    return prob[:, keep]


#: The attention map's values are multiples of 1/ATTENTION_LEVELS. Finer than
#: any colour map shows it (OHIF's has 256 colours), and what makes the 32-bit
#: float map compress: smooth values in steps repeat along every row, so Deflate
#: on the link or a PACS's own storage compression shrinks it about 30-fold
#: (raw floats: by a third). Measured in bench/e2e.py.
ATTENTION_LEVELS = 1024


def classify(
    model: LoadedModel, volume: Volume, *, amp: bool
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32] | None]:
    """Class probabilities (softmax) and, for attention models, the map on the source grid.

    The map is scaled to 0..1 (its peak at 1) in steps of 1/:data:`ATTENTION_LEVELS`.
    """
    spec = model.spec.input
    x = window(volume.array, spec.window)
    source_shape = x.shape[2:]
    if spec.size is not None:
        x = F.interpolate(x, size=spec.size, mode="trilinear")
    _channels_last(model.module, model.device)
    with torch.inference_mode(), _autocast(model.device, amp):
        logits, attention = model.module(x.to(model.device))
    probs = torch.softmax(logits.float(), dim=1)[0].cpu().numpy()
    if attention is None:
        return probs, None
    att = F.interpolate(attention.float().cpu(), size=source_shape, mode="trilinear")[0, 0]
    att = att - att.min()
    peak = float(att.max())
    if peak > 0:
        att.mul_(ATTENTION_LEVELS / peak).round_().mul_(1.0 / ATTENTION_LEVELS)
    return probs, att.numpy().astype(np.float32, copy=False)


def predict_sequence(
    model: LoadedModel, waveform: Waveform, *, amp: bool
) -> npt.NDArray[np.float32]:
    x = prepare_waveform(waveform, model.spec.input)
    with torch.inference_mode(), _autocast(model.device, amp):
        logits, _ = model.module(x.to(model.device))
    return torch.softmax(logits.float(), dim=1)[0].cpu().numpy().astype(np.float32)


def predict_change(
    model: LoadedModel,
    studies: Sequence[Volume | Tensor],
    days_before: Sequence[int],
    *,
    amp: bool,
) -> npt.NDArray[np.float32]:
    """Change-class probabilities of a progression model: priors oldest first, current last.

    A study is a volume or a volume already prepared for this model.
    """
    x, years = prepare_history(studies, days_before, model.spec.input)
    with torch.inference_mode(), _autocast(model.device, amp):
        logits, _ = model.module(x.to(model.device), years.to(model.device))
    return torch.softmax(logits.float(), dim=1)[0].cpu().numpy().astype(np.float32)


def with_oom_fallback(
    run: Callable[[LoadedModel, int], T], model: LoadedModel, batch_size: int
) -> T:
    """Run; on CUDA out-of-memory retry with batch 1, then on the CPU."""
    try:
        return run(model, batch_size)
    except torch.cuda.OutOfMemoryError:
        logger.warning("CUDA out of memory in %s: retrying with batch size 1", model.spec.name)
        torch.cuda.empty_cache()
    try:
        return run(model, 1)
    except torch.cuda.OutOfMemoryError:
        logger.warning(
            "CUDA out of memory again in %s: running this job on the CPU", model.spec.name
        )
        torch.cuda.empty_cache()
    # A CPU copy read from the package: the worker's cached model stays on its GPU
    # (moving it in place would leave every later job with a CPU module behind a
    # LoadedModel that still says CUDA).
    return run(load_package(model.spec.folder, torch.device("cpu")), 1)
