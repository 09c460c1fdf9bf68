"""One training loop for every model family.

AdamW with a cosine learning-rate schedule, early stopping on a validation
metric (higher is better), a checkpoint after every epoch that ``fit`` resumes
from, fixed seeds, bfloat16 autocast on CUDA, and a progress line per epoch
(epoch, loss, metric, time left).
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["TrainConfig", "TrainResult", "fit", "seed_everything"]

Item = TypeVar("Item")


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainConfig:
    epochs: int = 20
    batch_size: int = 8
    lr: float = 3e-3
    weight_decay: float = 1e-4
    patience: int = 6
    seed: int = 0
    device: str = "cpu"
    amp: bool = True
    checkpoint: Path | None = None
    progress: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainResult:
    best_metric: float
    best_epoch: int
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _progress(
    epoch: int, total: int, loss: float, metric: float, started: float, done: int
) -> None:
    per_epoch = (time.monotonic() - started) / max(1, done)
    left = int(per_epoch * (total - epoch))
    print(
        f"  epoch {epoch:3d}/{total}  loss {loss:.4f}  val {metric:.4f}  "
        f"left {left // 60}:{left % 60:02d}",
        file=sys.stderr,
        flush=True,
    )


def fit(
    module: nn.Module,
    train: Sequence[Item],
    *,
    loss_fn: Callable[[nn.Module, list[Item], torch.device], Tensor],
    validate: Callable[[nn.Module], float],
    cfg: TrainConfig,
) -> TrainResult:
    """Train ``module`` in place; on return it holds the best validated weights."""
    seed_everything(cfg.seed)
    device = torch.device(cfg.device)
    module.to(device)
    optimizer = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * math.ceil(len(train) / cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps))
    start_epoch, best, best_epoch = 1, -math.inf, 0
    best_state: dict[str, Any] = {k: v.detach().clone() for k, v in module.state_dict().items()}
    history: list[dict[str, float]] = []
    if cfg.checkpoint is not None and cfg.checkpoint.exists():
        state = torch.load(cfg.checkpoint, map_location=device, weights_only=False)
        module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best, best_epoch = state["epoch"] + 1, state["best"], state["best_epoch"]
        best_state, history = state["best_state"], state["history"]
        random.setstate(state["python_rng"])
        torch.set_rng_state(state["torch_rng"])
    order_rng = random.Random(cfg.seed)
    started = time.monotonic()
    autocast = torch.autocast(
        device_type=device.type, dtype=torch.bfloat16, enabled=cfg.amp and device.type == "cuda"
    )
    epoch = start_epoch - 1
    for epoch in range(start_epoch, cfg.epochs + 1):
        module.train()
        indices = list(range(len(train)))
        order_rng.shuffle(indices)
        losses = []
        for i in range(0, len(indices), cfg.batch_size):
            batch = [train[j] for j in indices[i : i + cfg.batch_size]]
            with autocast:
                loss = loss_fn(module, batch, device)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            nn.utils.clip_grad_norm_(module.parameters(), 5.0)
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
        module.eval()
        with torch.inference_mode():
            metric = float(validate(module))
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), "val": metric})
        if metric > best:
            best, best_epoch = metric, epoch
            best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        if cfg.progress:
            _progress(
                epoch, cfg.epochs, history[-1]["loss"], metric, started, epoch - start_epoch + 1
            )
        if cfg.checkpoint is not None:
            torch.save(
                {
                    "model": module.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "epoch": epoch,
                    "best": best,
                    "best_epoch": best_epoch,
                    "best_state": best_state,
                    "history": history,
                    "python_rng": random.getstate(),
                    "torch_rng": torch.get_rng_state(),
                },
                cfg.checkpoint,
            )
        if epoch - best_epoch >= cfg.patience:
            break
    module.load_state_dict(best_state)
    module.eval()
    return TrainResult(best_metric=best, best_epoch=best_epoch, epochs_run=epoch, history=history)
