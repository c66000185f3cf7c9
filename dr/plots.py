"""Plots written next to a run's outputs (PNG, matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from pathlib import Path

from dr.data.io import atomic_write


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out_png: str | os.PathLike) -> Path:
    """Write the figure atomically (see :func:`dr.data.io.atomic_write`) and close it."""
    with atomic_write(out_png, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    _pyplot().close(fig)
    return Path(out_png)


def plot_training_curves(metrics_csv: str | os.PathLike, out_png: str | os.PathLike) -> Path | None:
    """Plot every logged series of a Lightning CSV log against the step; one panel per metric."""
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            step = row.get("step")
            if not step:
                continue
            for name, value in row.items():
                if name in ("step", "epoch") or value in ("", None):
                    continue
                series[name].append((float(step), float(value)))
    if not series:
        return None
    plt = _pyplot()
    names = sorted(series)
    fig, axes = plt.subplots(len(names), 1, figsize=(7, 2.3 * len(names)), sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        steps, values = zip(*sorted(series[name]))
        ax.plot(steps, values, marker="o" if len(steps) < 20 else None, markersize=3)
        ax.set_ylabel(name, fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    return _save(fig, out_png)


def plot_score_histogram(positive: list[float], negative: list[float], out_png: str | os.PathLike, title: str = "") -> Path:
    """Overlaid histograms of positive and mined-negative scores (one shared set of bins)."""
    import numpy as np

    plt = _pyplot()
    values = np.asarray(list(positive) + list(negative), np.float64)
    bins = np.linspace(values.min(), values.max(), 50) if len(values) else 10
    fig, ax = plt.subplots(figsize=(7, 3.5))
    if negative:
        ax.hist(negative, bins=bins, alpha=0.6, density=True, label=f"negatives (n={len(negative)})")
    if positive:
        ax.hist(positive, bins=bins, alpha=0.6, density=True, label=f"positives (n={len(positive)})")
    ax.set_xlabel("retriever score")
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    return _save(fig, out_png)


def plot_cluster_sizes(sizes: list[int], out_png: str | os.PathLike, batch_size: int | None = None, title: str = "") -> Path:
    """Histogram of query-cluster sizes (``dr-cluster``), with the batch size marked when given."""
    import numpy as np

    plt = _pyplot()
    sizes = np.asarray(list(sizes), np.int64)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.hist(sizes, bins=min(50, max(1, len(np.unique(sizes)))), color="tab:blue", alpha=0.8)
    if batch_size:
        ax.axvline(batch_size, color="tab:red", linestyle="--", label=f"batch size {batch_size}")
        ax.legend()
    ax.set_xlabel("queries per cluster")
    ax.set_ylabel("clusters")
    ax.set_title(title or f"{len(sizes)} clusters, median size {np.median(sizes):.0f}", fontsize=9)
    fig.tight_layout()
    return _save(fig, out_png)


def plot_sorted_differences(differences: dict[str, dict[str, list[float]]], out_png: str | os.PathLike, baseline: str = "") -> Path:
    """Per-query differences against a baseline, sorted, one panel per measure and one line per
    system (``{measure: {system: [value - baseline value per query]}}``; ``dr-compare``)."""
    import numpy as np

    plt = _pyplot()
    measures = list(differences)
    fig, axes = plt.subplots(len(measures), 1, figsize=(7, 2.8 * len(measures)), squeeze=False)
    for ax, measure in zip(axes[:, 0], measures):
        for system, diffs in differences[measure].items():
            values = np.sort(np.asarray(diffs, np.float64))[::-1]
            ax.plot(np.arange(1, len(values) + 1), values, marker="o" if len(values) <= 60 else None, markersize=3,
                    label=f"{system} (mean {values.mean():+.4f})" if len(values) else system)
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_ylabel(f"Δ {measure}", fontsize=8)
        ax.set_xlabel("queries, sorted by difference", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0, 0].set_title(f"per-query difference against {baseline}" if baseline else "per-query differences", fontsize=9)
    fig.tight_layout()
    return _save(fig, out_png)
