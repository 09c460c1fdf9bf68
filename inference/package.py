"""Loading a verified model package into torch, once per worker."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from inference.architectures import build
from inference.errors import ModelPackageError, OutputMismatch
from inference.modelspec import ModelSpec
from inference.spec import verify_package

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
    if spec.format == "onnx":
        # ONNX Runtime is loaded only by workers that run an ONNX package.
        from inference.onnx_model import OnnxModule

        module: nn.Module = OnnxModule(spec.weights, device, task=spec.task)
    elif spec.format in ("torchscript", "monai_bundle"):
        module = _read(spec.weights, "TorchScript", lambda: _load_torchscript(spec.weights, device))
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


def _load_torchscript(path: Path, device: torch.device) -> nn.Module:
    # torch >= 2.10 calls TorchScript deprecated; it is still what MONAI bundles and
    # many hospitals' exports are, so loading it is a choice, not an accident.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.* is deprecated")
        module: nn.Module = torch.jit.load(str(path), map_location=device)  # type: ignore[no-untyped-call]
    return module


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
    """The model's output channels must be its labels, one each (at load and in every job).

    ``channels`` counts what the execution functions return: a softmax's
    background channel is already dropped.
    """
    labels = len(model.spec.labels)
    if channels != labels:
        raise OutputMismatch(
            f"{model.spec.folder / 'model.toml'}: the model gives {channels} output channel(s); "
            f"[[output.labels]] names {labels}"
        )
