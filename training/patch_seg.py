"""Lesion segmentation trained on patches of whole scans, the scans held on the device.

Each scan is windowed and resampled to the model's ``target_spacing`` exactly as
``inference.execute.segment`` does before its sliding window; its ground truth
follows on the same grid. Every step draws a batch of patches:

- ``lesion_share`` centred on a lesion, each lesion of the set equally likely
  whatever its size (a 5 mm nodule is drawn as often as a 30 mm mass, though it
  has 200 times fewer voxels);
- ``hard_share`` centred on one of the model's own current false positives
  (mined every ``mine_every`` steps on the training scans: vessels seen end-on,
  airway walls, rib tips — what it confuses with a lesion), once mining began;
- the rest anywhere in the body.

Patches are mirrored and augmented on the device (contrast, brightness,
correlated noise, blur or sharpening, lower resolution), the nnU-Net family of
augmentations, so that kernels, noise levels and pixel sizes the training
generator never drew are less of a surprise. Loss: binary cross-entropy plus soft Dice
over the whole batch (or, with ``dice="lesion"``, half of it per lesion-holding patch);
AdamW, linear warm-up then cosine decay; bf16 autocast on CUDA. On a CPU the same
seed gives the same weights, bit for bit (tested). On CUDA, with deterministic
algorithms on, ``scripts/seg_sweep.py`` checks it each lease: on an H200 (torch
2.11, 2026-12-04) two 30-step runs gave identical weights, although PyTorch warns
that max pooling's backward pass has no deterministic CUDA kernel.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from scipy import ndimage
from torch import Tensor, nn
from torch.nn import functional as F

from inference import preprocess
from inference.execute import tile_starts

__all__ = ["PatchSchedule", "SegScan", "grid_scan", "train_patches"]

#: Windowed value from which a voxel counts as body (about -930 HU in [-1000, 400]).
_BODY = 0.05
#: Lesion voxels kept per lesion, body voxels and mined false positives kept per scan.
_PER_LESION, _BODY_POINTS, _HARD_POINTS = 64, 4096, 256


@dataclass(frozen=True, slots=True)
class PatchSchedule:
    steps: int
    batch: int
    lr: float
    lesion_share: float = 0.5
    hard_share: float = 0.25
    mine_from: int = 400  # first step at which false positives are mined
    mine_every: int = 400
    mine_scans: int = 48  # training scans searched per mining round
    warmup: int = 200
    weight_decay: float = 1e-4
    #: "batch": soft Dice over the whole batch; "lesion": half of it over the whole batch,
    #: half averaged over the patches that hold lesion voxels, each patch's Dice on its own,
    #: so a patch centred on a 5 mm nodule weighs as much as one on a 30 mm mass.
    dice: str = "batch"

    def __post_init__(self) -> None:
        if self.dice not in ("batch", "lesion"):
            raise ValueError(f"PatchSchedule.dice must be 'batch' or 'lesion', not {self.dice!r}")


@dataclass(frozen=True, slots=True)
class SegScan:
    """One training scan on the model's grid, on the training device."""

    image: Tensor  # (D, H, W) float16 in [0, 1], padded to at least one patch
    mask: Tensor  # (D, H, W) uint8
    lesions: tuple[Tensor, ...]  # per lesion: (n, 3) long voxel indices
    body: Tensor  # (m, 3) long


def grid_scan(
    hu: npt.NDArray[np.float32],
    mask: npt.NDArray[np.bool_],
    spacing: Sequence[float],
    *,
    window: Sequence[float],
    target: Sequence[float],
    patch: Sequence[int],
    device: torch.device,
    seed: int,
) -> SegScan:
    """A scan windowed and resampled as the worker does (``inference.execute.segment``)."""
    x = preprocess.window(hu, (float(window[0]), float(window[1]))).to(device)
    y = torch.from_numpy(mask.astype(np.float32)).to(device)[None, None]
    size = preprocess.resampled_size(hu.shape, spacing, target)
    x = F.interpolate(x, size=size, mode="trilinear")[0, 0]
    y = F.interpolate(y, size=size, mode="trilinear")[0, 0] >= 0.5
    pad = [max(0, p - n) for p, n in zip(patch, x.shape, strict=True)]
    x = F.pad(x, [0, pad[2], 0, pad[1], 0, pad[0]])
    y = F.pad(y, [0, pad[2], 0, pad[1], 0, pad[0]])
    rng = np.random.default_rng(seed)

    def some(points: Tensor, n: int) -> Tensor:
        if len(points) > n:
            keep = np.sort(rng.choice(len(points), n, replace=False))
            points = points[torch.from_numpy(keep).to(points.device)]
        return points.to(device)

    labelled, count = ndimage.label(y.cpu().numpy(), structure=np.ones((3, 3, 3), bool))
    where = torch.from_numpy(labelled.astype(np.int32)).to(device)
    lesions = tuple(some(torch.nonzero(where == k), _PER_LESION) for k in range(1, count + 1))
    return SegScan(
        image=x.to(torch.float16),
        mask=y.to(torch.uint8),
        lesions=lesions,
        body=some(torch.nonzero(x >= _BODY), _BODY_POINTS),
    )


def _cut(volume: Tensor, corner: Sequence[int], patch: Sequence[int]) -> Tensor:
    z, y, x = corner
    return volume[z : z + patch[0], y : y + patch[1], x : x + patch[2]]


def _corner(
    centre: Tensor, shape: Sequence[int], patch: Sequence[int], jitter: Tensor
) -> list[int]:
    return [
        int(min(max(0, int(c) + int(j) - p // 2), n - p))
        for c, j, n, p in zip(centre.tolist(), jitter.tolist(), shape, patch, strict=True)
    ]


class _Sampler:
    """Draws each step's patch centres (CPU generator: the same on every device)."""

    def __init__(self, scans: Sequence[SegScan], schedule: PatchSchedule, seed: int) -> None:
        self.scans, self.schedule = scans, schedule
        self.g = torch.Generator().manual_seed(seed)
        self.lesions = [(i, k) for i, s in enumerate(scans) for k in range(len(s.lesions))]
        self.hard: dict[int, Tensor] = {}

    def _int(self, n: int) -> int:
        return int(torch.randint(n, (1,), generator=self.g))

    def centres(self) -> list[tuple[int, Tensor]]:
        out = []
        for _ in range(self.schedule.batch):
            u = float(torch.rand(1, generator=self.g))
            if self.lesions and u < self.schedule.lesion_share:
                i, k = self.lesions[self._int(len(self.lesions))]
                pool = self.scans[i].lesions[k]
            elif self.hard and u < self.schedule.lesion_share + self.schedule.hard_share:
                keys = sorted(self.hard)
                i = keys[self._int(len(keys))]
                pool = self.hard[i]
            else:
                i = self._int(len(self.scans))
                pool = self.scans[i].body
            if len(pool) == 0:
                out.append((i, torch.tensor(self.scans[i].image.shape) // 2))
            else:
                out.append((i, pool[self._int(len(pool))].cpu()))
        return out


def _augment(x: Tensor, g: torch.Generator, dg: torch.Generator) -> Tensor:
    """Per-patch intensity and resolution augmentation of windowed CT (batch, 1, D, H, W).

    Window [-1000, 400] HU: 40 HU soft tissue sits at 0.742; 1 HU is 1/1400.
    """
    n = x.shape[0]

    def u(lo: float, hi: float) -> Tensor:
        return torch.empty(n, 1, 1, 1, 1).uniform_(lo, hi, generator=g).to(x.device)

    def p(prob: float) -> Tensor:
        return (torch.rand(n, 1, 1, 1, 1, generator=g) < prob).to(x.device, x.dtype)

    centre = 1040 / 1400
    x = centre + (x - centre) * u(0.75, 1.25) + u(-25, 25) / 1400
    # Blur or sharpen in-plane (reconstruction kernels).
    blurred = _gauss_plane(x, 1.0)
    x = x + p(0.5) * u(-0.7, 0.9) * (x - blurred)
    # Lower resolution: down and up again (larger pixels, thicker slices).
    low = p(0.25)
    if bool(low.any()):
        f = float(torch.empty(1).uniform_(0.45, 0.8, generator=g))
        size = [max(2, int(s * f)) for s in x.shape[2:]]
        coarse = F.interpolate(
            F.interpolate(x, size=size, mode="trilinear"), x.shape[2:], mode="trilinear"
        )
        x = low * coarse + (1 - low) * x
    # Correlated noise of up to 40 HU, soft or sharp texture.
    white = torch.randn(x.shape, generator=dg, device=x.device, dtype=x.dtype)
    texture = _gauss_plane(white, float(torch.empty(1).uniform_(0.4, 1.3, generator=g)))
    texture = texture - p(0.5) * _gauss_plane(white, 2.5)
    texture = texture / texture.std(dim=(1, 2, 3, 4), keepdim=True).clamp_min(1e-6)
    x = x + texture * u(0, 40) / 1400
    return x.clamp(0, 1)


def _gauss_plane(x: Tensor, sigma: float) -> Tensor:
    """Gaussian smoothing of (batch, 1, D, H, W) in H and W."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    x = F.conv3d(F.pad(x, [0, 0, radius, radius, 0, 0], mode="replicate"), k.view(1, 1, 1, -1, 1))
    return F.conv3d(
        F.pad(x, [radius, radius, 0, 0, 0, 0], mode="replicate"), k.view(1, 1, 1, 1, -1)
    )


def _batch(
    scans: Sequence[SegScan],
    centres: list[tuple[int, Tensor]],
    patch: Sequence[int],
    g: torch.Generator,
) -> tuple[Tensor, Tensor]:
    xs, ys = [], []
    for i, centre in centres:
        s = scans[i]
        jitter = torch.stack(
            [torch.randint(-(p // 4), p // 4 + 1, (1,), generator=g)[0] for p in patch]
        )
        corner = _corner(centre, s.image.shape, patch, jitter)
        x, y = _cut(s.image, corner, patch), _cut(s.mask, corner, patch)
        flips = [d for d in (0, 2) if float(torch.rand(1, generator=g)) < 0.5]
        if flips:
            x, y = x.flip(flips), y.flip(flips)
        xs.append(x)
        ys.append(y)
    return torch.stack(xs)[:, None].float(), torch.stack(ys)[:, None].float()


def _tiles(shape: Sequence[int], patch: Sequence[int]) -> list[tuple[int, ...]]:
    """The worker's sliding-window corners (``inference.execute``) over a gridded scan."""
    return list(itertools.product(*(tile_starts(n, p) for n, p in zip(shape, patch, strict=True))))


@torch.inference_mode()
def predict_grid(module: nn.Module, image: Tensor, patch: Sequence[int], batch: int = 8) -> Tensor:
    """Probabilities over a gridded scan, tile by tile with a quarter's overlap (as the worker)."""
    out = torch.zeros(image.shape, device=image.device)
    hits = torch.zeros(image.shape, device=image.device)
    corners = _tiles(image.shape, patch)
    amp = image.device.type == "cuda"
    for k in range(0, len(corners), batch):
        chunk = corners[k : k + batch]
        x = torch.stack([_cut(image, c, patch) for c in chunk])[:, None].float()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            logits = module(x).float()
        for c, lg in zip(chunk, logits[:, 0], strict=True):
            _cut(out, c, patch).add_(lg)
            _cut(hits, c, patch).add_(1)
    return torch.sigmoid(out / hits)


def _mine(
    module: nn.Module,
    scans: Sequence[SegScan],
    picks: Sequence[int],
    patch: Sequence[int],
    g: torch.Generator,
) -> dict[int, Tensor]:
    """Voxels the model calls lesion (p >= 0.5) at least 2 voxels away from every lesion."""
    module.eval()
    found: dict[int, Tensor] = {}
    for i in picks:
        s = scans[i]
        prob = predict_grid(module, s.image, patch)
        near = F.max_pool3d(s.mask[None, None].float(), 5, stride=1, padding=2)[0, 0] > 0
        points = torch.nonzero((prob >= 0.5) & ~near)
        if len(points):
            if len(points) > _HARD_POINTS:
                pick = torch.randperm(len(points), generator=g)[:_HARD_POINTS]
                points = points[pick.to(points.device)]
            found[i] = points
    module.train()
    return found


def _loss(logits: Tensor, target: Tensor, dice: str = "batch") -> Tensor:
    """BCE plus soft Dice over the whole batch (a lesion-free patch's few false voxels cost
    in proportion, not a whole patch's Dice of 0). With ``dice="lesion"`` half the Dice term
    is each lesion-holding patch's own Dice, averaged: in a batch Dice a missed 5 mm nodule
    (a few dozen voxels) is lost among a 30 mm mass's thousands."""
    p = torch.sigmoid(logits)
    batch = 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
    bce = F.binary_cross_entropy_with_logits(logits, target)
    if dice == "batch":
        return bce + batch
    dims = tuple(range(1, target.dim()))
    held = target.sum(dim=dims)
    own = 1 - (2 * (p * target).sum(dim=dims) + 1) / (p.sum(dim=dims) + held + 1)
    has = held > 0
    per_patch = own[has].mean() if bool(has.any()) else batch
    return bce + 0.5 * batch + 0.5 * per_patch


def train_patches(
    module: nn.Module,
    scans: Sequence[SegScan],
    schedule: PatchSchedule,
    patch: Sequence[int],
    *,
    seed: int,
    log: Callable[[str], None] = print,
    deadline: float | None = None,
) -> nn.Module:
    """Train ``module`` in place on the device the scans are on; return it in eval mode."""
    device = scans[0].image.device
    torch.manual_seed(seed)
    module.to(device).train()
    head = module.get_submodule("head")
    assert isinstance(head, nn.Conv3d) and head.bias is not None
    with torch.no_grad():  # start at a 1 % lesion probability (Lin et al. 2017), not 50 %
        head.bias.fill_(math.log(0.01 / 0.99))
    opt = torch.optim.AdamW(module.parameters(), lr=schedule.lr, weight_decay=schedule.weight_decay)

    def rate(step: int) -> float:
        if step < schedule.warmup:
            return (step + 1) / schedule.warmup
        t = (step - schedule.warmup) / max(1, schedule.steps - schedule.warmup)
        return 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, rate)
    sampler = _Sampler(scans, schedule, seed)
    g = torch.Generator().manual_seed(seed + 1)
    dg = torch.Generator(device=device).manual_seed(seed + 2)
    amp = device.type == "cuda"
    started, running = time.perf_counter(), 0.0
    for step in range(schedule.steps):
        if deadline is not None and time.time() > deadline:
            log(f"stopped at step {step} of {schedule.steps}: out of time")
            break
        if step >= schedule.mine_from and (step - schedule.mine_from) % schedule.mine_every == 0:
            picks = torch.randperm(len(scans), generator=g)[: schedule.mine_scans].tolist()
            sampler.hard.update(_mine(module, scans, sorted(picks), patch, g))
        x, y = _batch(scans, sampler.centres(), patch, g)
        x = _augment(x, g, dg)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            logits = module(x)
        loss = _loss(logits.float(), y, schedule.dice)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        sched.step()
        value = float(loss.detach())
        running = 0.98 * running + 0.02 * value if step else value
        if step % 200 == 0 or step == schedule.steps - 1:
            hard = sum(len(v) for v in sampler.hard.values())
            log(
                f"step {step}/{schedule.steps} loss {running:.4f} lr {sched.get_last_lr()[0]:.2e}"
                f" hard points {hard} ({time.perf_counter() - started:.0f} s)"
            )
    return module.eval()
