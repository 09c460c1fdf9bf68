"""Training the second stage of the candidate detector: the small 3-D CNN
(``inference.architectures.CandidateNet``) that scores each candidate's patches
(``inference.patches.patches``) as lesion or not. 209 k parameters; a step of 64 patches
takes about 0.25 s on two CPU cores, so it trains where the U-Net cannot."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor
from torch.nn import functional as F

from inference.architectures import CandidateNet

__all__ = ["CandidateSchedule", "train_candidates", "widened"]


@dataclass(frozen=True, slots=True)
class CandidateSchedule:
    steps: int = 2500
    batch: int = 64
    lr: float = 1e-3
    positive_share: float = 0.5
    warmup: int = 100
    weight_decay: float = 1e-4
    noise: float = 0.02  # largest standard deviation of the added noise (window units)
    hard_share: float = 0.25  # of each batch: mined false positives, when there are any


def _augment(x: Tensor, gen: torch.Generator, noise: float) -> Tensor:
    """Mirrored on each axis, y/x swapped, contrast, brightness and noise, per batch."""
    flips = [d for d in (2, 3, 4) if torch.rand(1, generator=gen).item() < 0.5]
    if flips:
        x = torch.flip(x, flips)
    if torch.rand(1, generator=gen).item() < 0.5:
        x = x.transpose(3, 4)
    n = x.shape[0]
    contrast = 1 + 0.2 * (torch.rand(n, 1, 1, 1, 1, generator=gen) - 0.5)
    shift = 0.04 * (torch.rand(n, 1, 1, 1, 1, generator=gen) - 0.5)
    sigma = noise * torch.rand(n, 1, 1, 1, 1, generator=gen)
    x = x * contrast + shift + sigma * torch.randn(x.shape, generator=gen)
    return x.clamp(0, 1)


def train_candidates(
    positives: npt.NDArray[np.float16],
    negatives: npt.NDArray[np.float16],
    schedule: CandidateSchedule,
    *,
    seed: int,
    hard: npt.NDArray[np.float16] | None = None,
    start: CandidateNet | None = None,
    log_every: int = 250,
) -> CandidateNet:
    """Fit a ``CandidateNet`` (from ``start``'s weights, if given) on lesion and non-lesion
    patches; each batch holds ``positive_share`` lesion patches and, with ``hard`` (the
    false positives of an earlier round, mined on the training scans), ``hard_share`` of
    those. AdamW, linear warm-up then cosine decay; CPU."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = CandidateNet(channels=positives.shape[1])
    if start is not None:
        net.load_state_dict(start.state_dict())
    net.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
    opt = torch.optim.AdamW(net.parameters(), lr=schedule.lr, weight_decay=schedule.weight_decay)
    pos, neg = torch.from_numpy(positives), torch.from_numpy(negatives)
    mined = torch.from_numpy(hard) if hard is not None and len(hard) else None
    n_pos = round(schedule.batch * schedule.positive_share)
    n_hard = round(schedule.batch * schedule.hard_share) if mined is not None else 0
    n_neg = schedule.batch - n_pos - n_hard
    running = 0.0
    net.train()
    for step in range(schedule.steps):
        lr = schedule.lr * min(1.0, (step + 1) / schedule.warmup)
        lr *= 0.5 * (1 + math.cos(math.pi * step / schedule.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        i = torch.randint(len(pos), (n_pos,), generator=gen)
        j = torch.randint(len(neg), (n_neg,), generator=gen)
        parts = [pos[i], neg[j]]
        if mined is not None:
            parts.append(mined[torch.randint(len(mined), (n_hard,), generator=gen)])
        x = _augment(torch.cat(parts).float(), gen, schedule.noise)
        y = torch.cat([torch.ones(n_pos), torch.zeros(schedule.batch - n_pos)])
        loss = F.binary_cross_entropy_with_logits(
            net(x.contiguous(memory_format=torch.channels_last_3d)), y
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        value = float(loss.detach())
        running = 0.98 * running + 0.02 * value if step else value
        if log_every and (step + 1) % log_every == 0:
            print(f"step {step + 1}/{schedule.steps} loss {running:.4f} lr {lr:.2e}", flush=True)
    net.eval()
    return net


def widened(net: CandidateNet, have: Sequence[str], want: Sequence[str]) -> CandidateNet:
    """``net``, trained on the patch views ``have`` (``inference.patches.CHANNELS``), taking
    the views ``want``: each view it had keeps its first layer's weights, each new one starts
    at zero, so it scores exactly as before until training moves them."""
    dropped = [v for v in have if v not in want]
    if dropped:
        raise ValueError(f"widened: {dropped} would be dropped (want {list(want)})")
    state = net.state_dict()
    first = next(k for k, v in state.items() if v.ndim == 5)  # the first convolution
    old = state[first]
    new = torch.zeros((old.shape[0], len(want), *old.shape[2:]), dtype=old.dtype)
    for i, view in enumerate(have):
        new[:, list(want).index(view)] = old[:, i]
    state[first] = new
    wide = CandidateNet(channels=len(want), base=old.shape[0])
    wide.load_state_dict(state)
    return wide.eval()
