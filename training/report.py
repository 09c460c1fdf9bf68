"""Evaluation reports: JSON, Markdown, and PNG plots (ROC, calibration, confusion, Dice)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

__all__ = ["write_report"]


def _roc(ax: Any, labels: list[int], probs: np.ndarray, names: list[str]) -> None:
    for c, name in enumerate(names):
        y = np.asarray(labels) == c
        if y.all() or not y.any():
            continue
        order = np.argsort(-probs[:, c])
        tpr = np.concatenate([[0], np.cumsum(y[order]) / y.sum()])
        fpr = np.concatenate([[0], np.cumsum(~y[order]) / (~y).sum()])
        ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (one vs rest)")
    ax.legend(loc="lower right")


def write_report(folder: Path, name: str, report: dict[str, Any], classes: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report, indent=2))
    lines = [f"# {name}: held-out evaluation", ""]
    for key, value in report.items():
        if key in ("probabilities", "labels", "dice_all", "reliability", "per_case"):
            continue
        lines.append(f"- **{key}**: {json.dumps(value)}")
    (folder / "report.md").write_text("\n".join(lines) + "\n")
    if "dice_all" in report:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.hist(report["dice_all"], bins=20, range=(0, 1))
        ax.set(xlabel="Dice per scan", ylabel="scans", title=f"{name}: Dice distribution")
        fig.tight_layout()
        fig.savefig(folder / "dice.png", dpi=100)
        plt.close(fig)
        return
    probs = np.asarray(report["probabilities"])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    _roc(axes[0], report["labels"], probs, classes)
    rel = report["reliability"]
    used = np.asarray(rel["count"]) > 0
    axes[1].plot([0, 1], [0, 1], "k:", lw=0.8)
    axes[1].plot(np.asarray(rel["confidence"])[used], np.asarray(rel["accuracy"])[used], "o-")
    axes[1].set(
        xlabel="confidence", ylabel="accuracy", title=f"reliability (ECE {report['ece']:.3f})"
    )
    cm = np.asarray(report["confusion_matrix"])
    axes[2].imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        axes[2].text(j, i, str(v), ha="center", va="center")
    axes[2].set(
        xticks=range(len(classes)),
        yticks=range(len(classes)),
        xticklabels=classes,
        yticklabels=classes,
        xlabel="predicted",
        ylabel="true",
        title="confusion matrix",
    )
    fig.tight_layout()
    fig.savefig(folder / "evaluation.png", dpi=100)
    plt.close(fig)
