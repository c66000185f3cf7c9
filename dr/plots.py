"""Plots written next to a run's outputs (PNG, matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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
    out_png = Path(out_png)
    tmp = out_png.with_name(f".{out_png.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out_png)
    return out_png
