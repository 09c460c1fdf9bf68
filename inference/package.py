"""Loading a verified model package into torch, once per worker."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from inference.architectures import build
from inference.errors import ModelPackageError
from inference.spec import ModelSpec, verify_package

__all__ = ["LoadedModel", "load_package"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadedModel:
    """A package whose weights are loaded, in eval mode, on its device."""

    spec: ModelSpec
    module: nn.Module
    device: torch.device


def load_package(folder: Path, device: torch.device) -> LoadedModel:
    """Verify the package, build the module and load the weights onto ``device``."""
    spec = verify_package(folder)
    try:
        if spec.format == "torchscript":
            module: nn.Module = torch.jit.load(str(spec.weights), map_location=device)  # type: ignore[no-untyped-call]
        else:
            module = build(spec.architecture, spec.parameters)
            state = torch.load(spec.weights, map_location=device, weights_only=True)
            module.load_state_dict(state)
    except (KeyError, TypeError, RuntimeError) as exc:
        raise ModelPackageError(f"{folder / 'model.toml'} [model]: {exc}") from None
    module.to(device).eval()
    return LoadedModel(spec=spec, module=module, device=device)
