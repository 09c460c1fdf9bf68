"""ONNX models a hospital brings, run by ONNX Runtime behind the same interface as torch's.

A package with ``format = "onnx"`` names a ``.onnx`` file as its weights and
describes its input and outputs in ``model.toml`` like any package. The graph
takes what ainode's own networks take and gives what they give:

==============  ==========================================  ======================
task            inputs                                      outputs
==============  ==========================================  ======================
segmentation    image ``(N, 1, D, H, W)``                   logits ``(N, C, ...)``
classification  image ``(N, 1, D, H, W)``                   logits ``(N, K)``
                                                            [, attention
                                                            ``(N, 1, d, h, w)``]
sequence        leads ``(N, L, T)``                         logits ``(N, K)``
progression     studies ``(N, S, 1, D, H, W)``, years       logits ``(N, K)``
                ``(N, S)``
==============  ==========================================  ======================

Inputs are given in the graph's input order. ONNX Runtime runs on the CPU, or
with its CUDA provider when the worker's device is CUDA and the provider is
installed (``onnxruntime-gpu``); otherwise the CPU, said once in the log.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor, nn

from inference.errors import ModelPackageError

__all__ = ["OnnxModule"]

logger = logging.getLogger(__name__)


class OnnxModule(nn.Module):
    """An ONNX Runtime session that is called like the torch module it replaces."""

    def __init__(self, path: Path, device: torch.device, *, task: str) -> None:
        super().__init__()
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" in ort.get_available_providers():
                index = device.index or 0
                cuda = ("CUDAExecutionProvider", {"device_id": index})
                providers = [cuda, *providers]  # type: ignore[list-item]
            else:
                logger.warning(
                    "%s: ONNX Runtime has no CUDA provider here (install onnxruntime-gpu); "
                    "running on the CPU",
                    path.name,
                )
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # ONNX Runtime raises its own (pybind) error types
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelPackageError(f"{path}: not a loadable ONNX model ({first})") from None
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.task = task
        self.device = device

    def forward(self, *args: Tensor) -> Any:
        if len(args) != len(self.inputs):
            raise ValueError(
                f"the ONNX graph takes {len(self.inputs)} input(s) "
                f"({', '.join(self.inputs)}); a {self.task} model is given {len(args)}"
            )
        feed = {
            name: arg.detach().float().cpu().numpy()
            for name, arg in zip(self.inputs, args, strict=True)
        }
        results = [torch.from_numpy(np.asarray(r)) for r in self.session.run(None, feed)]
        if self.task == "segmentation":
            return results[0]
        attention = results[1] if len(results) > 1 and self.task == "classification" else None
        return results[0], attention
