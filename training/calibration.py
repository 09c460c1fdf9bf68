"""Post-hoc calibration of a classifier's logits (Guo et al. 2017), folded into its last layer.

:func:`training.recipes.calibrate` collects the logits of a recipe's cases and
calls these; they know nothing of recipes or data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["Calibration", "fit_temperature", "fit_vector", "fold_into_last_layer"]


@dataclass(frozen=True, slots=True)
class Calibration:
    """What :func:`training.recipes.calibrate` folded into the last layer:
    logits -> scale * logits + shift."""

    method: str
    scale: tuple[float, ...]
    shift: tuple[float, ...]
    cases: int

    def describe(self) -> str:
        if self.method == "temperature":
            return f"temperature scaling, T = {1 / self.scale[0]:.3f} ({self.cases} cases)"
        scale = ", ".join(f"{v:.3f}" for v in self.scale)
        shift = ", ".join(f"{v:.3f}" for v in self.shift)
        return f"vector scaling, scale [{scale}], shift [{shift}] ({self.cases} cases)"


def fit_vector(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per-class scale and shift minimising the NLL (L-BFGS from the identity)."""
    scale = torch.ones(logits.shape[1], requires_grad=True)
    shift = torch.zeros(logits.shape[1], requires_grad=True)
    optimiser = torch.optim.LBFGS([scale, shift], lr=0.5, max_iter=500)

    def closure() -> Tensor:
        optimiser.zero_grad()
        loss = F.cross_entropy(logits * scale + shift, labels)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    optimiser.step(closure)  # type: ignore[no-untyped-call]
    return scale.detach(), shift.detach()


def fit_temperature(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """The temperature T (on a log grid of 0.25-20) minimising the NLL, as scale 1/T, shift 0."""
    grid = torch.exp(torch.linspace(np.log(0.25), np.log(20.0), 200))
    nll = torch.stack([F.cross_entropy(logits / t, labels) for t in grid])
    temperature = float(grid[int(nll.argmin())])
    return torch.full((logits.shape[1],), 1 / temperature), torch.zeros(logits.shape[1])


def fold_into_last_layer(module: nn.Module, scale: Tensor, shift: Tensor) -> None:
    """W' = diag(a) W, b' = a b + c on the final Linear layer: exactly softmax(a z + c)."""
    fc = module.get_submodule(getattr(module, "logits_layer", "fc"))
    assert isinstance(fc, nn.Linear), "classifiers end in a Linear layer (fc, or logits_layer)"
    with torch.no_grad():
        fc.weight.mul_(scale.to(fc.weight)[:, None])
        fc.bias.mul_(scale.to(fc.bias)).add_(shift.to(fc.bias))
