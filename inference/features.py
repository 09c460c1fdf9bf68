"""A model's own features: the spatial mean of a named layer's output, for the domain check.

Kept apart from :mod:`inference.domain` so that reading a package's domain does not
import torch (``serve`` and its listener processes never load a model).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

__all__ = ["feature_probe", "features_of"]


class _Probe:
    def __init__(self) -> None:
        self.total: Tensor | None = None
        self.count = 0

    def add(self, output: Tensor) -> None:
        pooled = output.detach().float().mean(dim=tuple(range(2, output.ndim))).sum(dim=0).cpu()
        self.total = pooled if self.total is None else self.total + pooled
        self.count += output.shape[0]

    def vector(self) -> npt.NDArray[np.float64] | None:
        if self.total is None or self.count == 0:
            return None
        return (self.total / self.count).numpy().astype(np.float64)


@contextmanager
def feature_probe(module: nn.Module, layer: str | None) -> Iterator[_Probe]:
    """Collect the spatial mean of ``layer``'s output over every call (every window) meanwhile.

    A module without that layer (ONNX, TorchScript) yields a probe with no vector.
    """
    probe = _Probe()
    target = dict(module.named_modules()).get(layer) if layer else None
    if target is None:
        yield probe
        return
    handle = target.register_forward_hook(lambda _m, _i, out: probe.add(out))
    try:
        yield probe
    finally:
        handle.remove()


def features_of(
    module: nn.Module, layer: str, run: Callable[[], object]
) -> npt.NDArray[np.float64] | None:
    """Run ``run()`` with a probe on ``layer``; the features it saw (for building a domain)."""
    with torch.inference_mode(), feature_probe(module, layer) as probe:
        run()
    return probe.vector()
