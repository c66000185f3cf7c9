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
    series = read_metrics_csv(metrics_csv)
    if not series:
        return None
    plt = _pyplot()
    names = sorted(series)
    fig, axes = plt.subplots(len(names), 1, figsize=(7, 2.3 * len(names)), sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        steps, values = zip(*series[name])  # sorted by read_metrics_csv
        ax.plot(steps, values, marker="o" if len(steps) < 20 else None, markersize=3)
        ax.set_ylabel(name, fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    return _save(fig, out_png)


def plot_score_histogram(
    positive: list[float], negative: list[float], out_png: str | os.PathLike, title: str = ""
) -> Path:
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


def plot_cluster_sizes(
    sizes: list[int], out_png: str | os.PathLike, batch_size: int | None = None, title: str = ""
) -> Path:
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


def plot_split_similarities(
    max_sim_full: dict[str, float],
    max_sim: dict[str, float],
    labels: dict[str, str],
    shares_doc_full: dict[str, bool],
    threshold: float,
    out_png: str | os.PathLike,
    title: str = "",
) -> Path:
    """``dr-split``: each test query's max cosine to the training queries, before resampling (split
    by whether it shares a relevant document with a training query) and after (by its label), with
    the threshold drawn."""
    import numpy as np

    plt = _pyplot()
    bins = np.linspace(min([*max_sim_full.values(), *max_sim.values(), threshold]) - 0.01, 1.0, 50)
    fig, axes = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    panels = [
        (
            axes[0],
            max_sim_full,
            {
                "shares a relevant doc": [q for q, s in shares_doc_full.items() if s],
                "shares none": [q for q, s in shares_doc_full.items() if not s],
            },
            "full training set",
        ),
        (
            axes[1],
            max_sim,
            {label: [q for q, lab in labels.items() if lab == label] for label in ("interpolation", "extrapolation")},
            "resampled training set",
        ),
    ]
    for ax, sims, groups, what in panels:
        for name, qids in groups.items():
            if qids:
                ax.hist([sims[q] for q in qids], bins=bins, alpha=0.6, label=f"{name} (n={len(qids)})")
        ax.axvline(threshold, color="tab:red", linestyle="--", label=f"threshold {threshold:g}")
        ax.set_ylabel("test queries")
        ax.set_title(f"max cosine of each test query to the {what}", fontsize=9)
        ax.legend(fontsize=8)
    axes[-1].set_xlabel("cosine similarity to the nearest training query")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, out_png)


def read_metrics_csv(path: str | os.PathLike) -> dict[str, list[tuple[float, float]]]:
    """``{series: [(step, value), ...]}`` of a Lightning CSV log (rows without a step are skipped)."""
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step = row.get("step")
            if not step:
                continue
            for name, value in row.items():
                if name not in ("step", "epoch") and value not in ("", None):
                    series[name].append((float(step), float(value)))
    return {name: sorted(points) for name, points in series.items()}


#: The series ``dr-plot`` draws, in panel order: training loss (and its terms), learning rate, validation.
_PANEL_ORDER = ("train/loss", "train/", "lr-", "val/")
#: Series whose changes mark a new negatives version (an index refresh) on the step axis.
_VERSION_SERIES = ("train/negatives_version", "refresh/version")


def plot_runs(
    runs: dict[str, dict[str, list[tuple[float, float]]]], out_png: str | os.PathLike, title: str = ""
) -> Path:
    """``dr-plot``: training loss, learning rate and validation metrics against the step, one line per
    run (``{label: read_metrics_csv(...)}``) in each panel. A series that never changes in any run is
    left out (``train/negatives_version`` without a refresh); the steps where a run's negatives
    version changes are drawn as dotted vertical lines in its colour."""
    plt = _pyplot()

    def wanted(name: str) -> bool:
        return name.startswith(_PANEL_ORDER[1:]) and name not in _VERSION_SERIES

    names = sorted(
        {n for series in runs.values() for n in series if wanted(n)},
        key=lambda n: (next(i for i, p in enumerate(_PANEL_ORDER) if n.startswith(p)), n),
    )

    def never_changes(name: str) -> bool:  # logged several times, always the same value, in every run
        points = [s.get(name, []) for s in runs.values()]
        return all(len({v for _, v in p}) <= 1 for p in points) and any(len(p) > 1 for p in points)

    names = [n for n in names if not never_changes(n)]
    if not names:
        raise ValueError("no training series to plot (expected train/*, lr-* or val/* columns in logs/metrics.csv)")
    fig, axes = plt.subplots(len(names), 1, figsize=(8, 2.4 * len(names) + 0.6), sharex=True, squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (label, series) in enumerate(runs.items()):
        colour = colours[k % len(colours)]
        refreshes = _version_changes(series)
        for ax, name in zip(axes[:, 0], names):
            if series.get(name):
                steps, values = zip(*series[name])
                ax.plot(steps, values, color=colour, label=label, marker="o" if len(steps) < 20 else None, markersize=3)
            for i, step in enumerate(refreshes):
                ax.axvline(
                    step, color=colour, linestyle=":", alpha=0.8, label=f"{label}: new negatives" if i == 0 else None
                )
    for ax, name in zip(axes[:, 0], names):
        ax.set_ylabel(name, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7, loc="best")
    axes[-1, 0].set_xlabel("step")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, out_png)


def _version_changes(series: dict[str, list[tuple[float, float]]]) -> list[float]:
    """Steps at which the negatives version changed (a refresh swapped new negatives in)."""
    for name in _VERSION_SERIES:
        points = series.get(name)
        if points:
            return [step for (_, before), (step, after) in zip(points, points[1:]) if after != before]
    return []


def plot_sorted_differences(
    differences: dict[str, dict[str, list[float]]], out_png: str | os.PathLike, baseline: str = ""
) -> Path:
    """Per-query differences against a baseline, sorted, one panel per measure and one line per
    system (``{measure: {system: [value - baseline value per query]}}``; ``dr-compare``)."""
    import numpy as np

    plt = _pyplot()
    measures = list(differences)
    fig, axes = plt.subplots(len(measures), 1, figsize=(7, 2.8 * len(measures)), squeeze=False)
    for ax, measure in zip(axes[:, 0], measures):
        for system, diffs in differences[measure].items():
            values = np.sort(np.asarray(diffs, np.float64))[::-1]
            ax.plot(
                np.arange(1, len(values) + 1),
                values,
                marker="o" if len(values) <= 60 else None,
                markersize=3,
                label=f"{system} (mean {values.mean():+.4f})" if len(values) else system,
            )
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_ylabel(f"Δ {measure}", fontsize=8)
        ax.set_xlabel("queries, sorted by difference", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0, 0].set_title(
        f"per-query difference against {baseline}" if baseline else "per-query differences", fontsize=9
    )
    fig.tight_layout()
    return _save(fig, out_png)


def plot_alpha_curve(
    alphas: list[float],
    in_domain: dict[float, float],
    out_of_domain: dict[float, float],
    ood_name: str,
    chosen: float,
    budget: float,
    out_png: str | os.PathLike,
) -> Path:
    """WiSE-FT's α (``export.interpolate=auto``) against in-domain validation and out-of-domain
    nDCG@10, with the budget's floor and the chosen α marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot(alphas, [in_domain[a] for a in alphas], "o-", color="tab:blue", label="validation (in domain)")
    ax.plot(alphas, [out_of_domain[a] for a in alphas], "s-", color="tab:orange", label=f"{ood_name} (out of domain)")
    ax.axhline(in_domain[1.0] - budget, color="tab:blue", linestyle=":", linewidth=1, label=f"α = 1 − {budget:g}")
    ax.axvline(chosen, color="tab:red", linestyle="--", linewidth=1, label=f"chosen α = {chosen:g}")
    ax.set_xlabel("α (weight of the fine-tuned model)")
    ax.set_ylabel("nDCG@10")
    ax.legend(fontsize=8)
    ax.set_title("WiSE-FT: (1 − α)·initial + α·fine-tuned", fontsize=9)
    fig.tight_layout()
    return _save(fig, out_png)
