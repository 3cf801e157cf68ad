"""Figures of the study (matplotlib/seaborn); every function returns a Figure and shows nothing itself."""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib.patches

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from skinseg.data.isic import ATTRIBUTES
from skinseg.overlay import ATTRIBUTE_COLOURS, overlay

LABELS = [a.replace("_", " ") for a in ATTRIBUTES]


def _colours() -> list[tuple[float, float, float]]:
    return [tuple(c / 255 for c in rgb) for rgb in ATTRIBUTE_COLOURS]


def prevalence_pies(stats: dict, splits: Sequence[str] = ("train", "val")):
    """One pie per split: share of each attribute among the images' attribute occurrences (with counts)."""
    splits = [s for s in splits if "prevalence" in stats.get(s, {})]
    fig, axes = plt.subplots(1, len(splits), figsize=(5 * len(splits), 4.5), squeeze=False)
    for ax, split in zip(axes[0], splits):
        counts = [stats[split]["prevalence"][a] for a in ATTRIBUTES]
        ax.pie(counts, labels=[f"{lab}\n{n}" for lab, n in zip(LABELS, counts)], colors=_colours(),
               autopct=lambda p: f"{p:.0f}%" if p >= 3 else "", startangle=90, counterclock=False)
        ax.set_title(f"{split}: images with each attribute (n = {stats[split]['images']})")
    fig.tight_layout()
    return fig


def pixel_fraction_bars(stats: dict):
    """Mean fraction of an image's pixels covered by each attribute, per split (log scale)."""
    rows = [{"split": s, "attribute": lab, "percent of pixels": 100 * v["pixel_fraction"][a]}
            for s, v in stats.items() if "pixel_fraction" in v for a, lab in zip(ATTRIBUTES, LABELS)]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    sns.barplot(pd.DataFrame(rows), x="attribute", y="percent of pixels", hue="split", ax=ax)
    ax.set_yscale("log")
    ax.set_title("Mean share of image pixels per attribute")
    fig.tight_layout()
    return fig


def cooccurrence_heatmap(present: np.ndarray, title: str = "train"):
    """P(column attribute present | row attribute present), with the diagonal = prevalence."""
    present = np.asarray(present, dtype=float)
    counts = present.T @ present
    cond = counts / np.maximum(np.diag(counts)[:, None], 1)
    np.fill_diagonal(cond, present.mean(0))
    fig, ax = plt.subplots(figsize=(6.5, 5))
    sns.heatmap(pd.DataFrame(cond, index=LABELS, columns=LABELS), annot=True, fmt=".2f", cmap="mako_r",
                vmin=0, vmax=1, ax=ax)
    ax.set_title(f"Attribute co-occurrence ({title}): P(column | row); diagonal: prevalence")
    fig.tight_layout()
    return fig


def size_distribution(sizes: dict[str, np.ndarray]):
    """Scatter of original image width x height per split (sizes: split -> N x 2 array of (height, width))."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for split, hw in sizes.items():
        hw = np.asarray(hw)
        ax.scatter(hw[:, 1], hw[:, 0], s=10, alpha=0.5, label=f"{split} ({len(hw)})")
    ax.set_xlabel("width (px)")
    ax.set_ylabel("height (px)")
    ax.set_title("Original image sizes")
    ax.legend()
    fig.tight_layout()
    return fig


def example_grid(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], ids: Sequence[str], cols: int = 4,
                 alpha: float = 0.5):
    """Images with their five masks overlaid, one fixed colour per attribute, with a legend."""
    rows = int(np.ceil(len(images) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, m, image_id in zip(axes.flat, images, masks, ids):
        ax.imshow(overlay(image, m, alpha=alpha))
        present = [lab for lab, mm in zip(LABELS, m) if mm.any()]
        ax.set_title(f"{image_id}\n{', '.join(present) or 'no attribute'}", fontsize=8)
    _legend(fig)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def _legend(fig, loc: str = "lower center") -> None:
    handles = [matplotlib.patches.Patch(color=c, label=lab) for c, lab in zip(_colours(), LABELS)]
    fig.legend(handles=handles, loc=loc, ncol=5, frameon=False)


def model_table_figure(stages: dict[str, list[tuple[str, int, int]]]):
    """Each model's stages as a U: channels (bar height, log) per stage name, annotated with resolution."""
    fig, axes = plt.subplots(len(stages), 1, figsize=(11, 2.6 * len(stages)), squeeze=False)
    for ax, (name, rows) in zip(axes[:, 0], stages.items()):
        labels = [r[0] for r in rows]
        channels = [r[1] for r in rows]
        ax.bar(range(len(rows)), channels, color=["#4477aa" if "enc" in lab or "stem" in lab else "#ee6677"
                                                   for lab in labels])
        for k, (_, c, s) in enumerate(rows):
            ax.text(k, c, f"{s}px", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(rows)), labels, rotation=45, ha="right", fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("channels")
        ax.set_title(f"{name}: encoder (blue) and decoder (red) stages, output resolution on top", fontsize=9)
    fig.tight_layout()
    return fig


def training_curves(steps: pd.DataFrame, epochs: pd.DataFrame, title: str = ""):
    """Loss and lr per step; validation Dice and Jaccard (official, micro) per epoch, against the step."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    axes[0].plot(steps["step"], steps["loss"], lw=0.8, label="train loss (step)")
    axes[0].plot(epochs["step"], epochs["val_loss"], "o-", label="val loss (epoch)")
    axes[0].set_xlabel("step")
    axes[0].legend()
    axes[0].set_title("Loss")
    axes[1].plot(steps["step"], steps["lr"])
    axes[1].set_xlabel("step")
    axes[1].set_title("Learning rate")
    for key, label in (("val_jaccard", "Jaccard @0.5"), ("val_dice", "Dice @0.5"),
                       ("val_tuned_jaccard", "Jaccard, tuned thresholds")):
        if key in epochs:
            axes[2].plot(epochs["step"], epochs[key], "o-", label=label)
    axes[2].set_xlabel("step")
    axes[2].set_ylim(0, 1)
    axes[2].legend()
    axes[2].set_title("Validation, official score (micro average)")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def per_attribute_curves(epochs: pd.DataFrame, metric: str = "jaccard"):
    """Validation Jaccard (or Dice) per attribute and epoch."""
    fig, ax = plt.subplots(figsize=(8, 4))
    for a, lab, c in zip(ATTRIBUTES, LABELS, _colours()):
        ax.plot(epochs["epoch"], epochs[f"val_{metric}_{a}"], "o-", color=c, label=lab)
    ax.plot(epochs["epoch"], epochs[f"val_{metric}"], "k--", label="overall (micro)")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation {metric} @0.5")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, ncol=2)
    ax.set_title(f"Per-attribute validation {metric}")
    fig.tight_layout()
    return fig


def sweep_curves(curves: dict[str, pd.DataFrame], key: str = "val_jaccard"):
    """Overlaid validation curves of the runs of a sweep."""
    fig, ax = plt.subplots(figsize=(8, 4))
    for name, epochs in curves.items():
        ax.plot(epochs["epoch"], epochs[key], "o-", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(key.replace("_", " "))
    ax.legend(fontsize=8)
    ax.set_title(f"Sweep: {key.replace('_', ' ')} per epoch")
    fig.tight_layout()
    return fig


def results_curves(curves: dict[str, pd.Series], title: str = "tuned dev score per validated epoch"):
    """Overlaid validation curves of the runs of a results table (see :func:`skinseg.results.curves`)."""
    fig, ax = plt.subplots(figsize=(8, 4))
    for name, curve in curves.items():
        ax.plot(curve.index, curve.values, "o-", ms=3, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("overall Jaccard (tuned)")
    ax.legend(fontsize=7)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def qualitative_rows(images, truths, preds, ids, scores=None, alpha: float = 0.5, title: str | None = None,
                     score_name: str = "Jaccard"):
    """Course-project style: per row the image, the ground-truth masks and the predicted masks; ``title`` above the
    column headers, the legend below (constrained layout keeps them apart)."""
    n = len(images)
    fig, axes = plt.subplots(n, 3, figsize=(10, 3.3 * n + 0.8), squeeze=False, layout="constrained")
    for k in range(n):
        axes[k, 0].imshow(images[k])
        axes[k, 0].set_title(ids[k] + ("" if scores is None else f"  ({score_name} {scores[k]:.2f})"), fontsize=9)
        axes[k, 1].imshow(overlay(images[k], truths[k], alpha=alpha))
        axes[k, 1].set_title("ground truth", fontsize=9)
        axes[k, 2].imshow(overlay(images[k], preds[k], alpha=alpha))
        axes[k, 2].set_title("prediction", fontsize=9)
        for ax in axes[k]:
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=11)
    _legend(fig, "outside lower center")
    return fig
