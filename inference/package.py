"""Loading a verified model package into torch, once per worker."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from inference.architectures import build
from inference.errors import ModelPackageError, OutputMismatch
from inference.spec import ModelSpec, verify_package

__all__ = ["LoadedModel", "check_outputs", "load_package"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadedModel:
    """A package whose weights are loaded, in eval mode, on its device."""

    spec: ModelSpec
    module: nn.Module
    device: torch.device


def load_package(folder: Path, device: torch.device) -> LoadedModel:
    """Verify the package, build the module and load the weights onto ``device``."""
    spec = verify_package(folder)
    where = folder / "model.toml"
    if spec.format == "torchscript":
        module: nn.Module = _read(
            spec.weights,
            "TorchScript",
            lambda: torch.jit.load(  # type: ignore[no-untyped-call]
                str(spec.weights), map_location=device
            ),
        )
    else:
        try:
            module = build(spec.architecture, spec.parameters)
        except KeyError as exc:
            raise ModelPackageError(f"{where} [model] architecture: {exc.args[0]}") from None
        except TypeError as exc:
            raise ModelPackageError(f"{where} [model.parameters]: {exc}") from None
        state = _read(
            spec.weights,
            "a state dict",
            lambda: torch.load(spec.weights, map_location=device, weights_only=True),
        )
        if not isinstance(state, dict):
            raise ModelPackageError(
                f"{spec.weights}: holds {type(state).__name__}, not a state dict"
            )
        try:
            module.load_state_dict(state)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise ModelPackageError(
                f"{spec.weights}: does not fit architecture {spec.architecture!r} with "
                f"[model.parameters] {spec.parameters}: {first}"
            ) from None
    module.to(device).eval()
    return LoadedModel(spec=spec, module=module, device=device)


T = TypeVar("T")


def _read(path: Path, what: str, load: Callable[[], T]) -> T:
    """Deserialise the weights; any failure of torch's reader is the file's fault."""
    try:
        return load()
    except Exception as exc:  # torch raises pickle, zip, runtime and value errors here
        raise ModelPackageError(
            f"{path}: cannot be loaded as {what} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no detail'})"
        ) from None


def check_outputs(model: LoadedModel, channels: int) -> None:
    """The model's output channels must be its labels, one each (at load and in every job)."""
    labels = len(model.spec.labels)
    if channels != labels:
        raise OutputMismatch(
            f"{model.spec.folder / 'model.toml'}: the model gives {channels} output channel(s); "
            f"[[output.labels]] names {labels}"
        )
