"""What the index refresh reports: one row of metrics per swap, and the run's summary for metrics.json."""

from __future__ import annotations

import numpy as np

SWAP_KEYS = ("version", "duration_s", "blocked_s", "staleness_steps", "positive_retrieved", "negatives_per_query")


def swap_entry(manifest: dict, step: int, blocked_s: float) -> dict:
    """The history entry of a version swapped in at ``step`` (from its manifest)."""
    stats = manifest.get("stats", {})
    return {
        "version": int(manifest["version"]),
        "status": "used",
        "snapshot_step": int(manifest["snapshot_step"]),
        "swap_step": step,
        "staleness_steps": step - int(manifest["snapshot_step"]),
        "duration_s": float(manifest["duration_s"]),
        "blocked_s": blocked_s,
        "positive_retrieved": float(stats.get("positive_retrieved_in_top_k", float("nan"))),
        "negatives_per_query": float(stats.get("negatives_per_query", float("nan"))),
        "effective_sample_size": {
            k: float(v) for k, v in stats.get("effective_sample_size", {}).items() if v is not None
        },
    }


def swap_metrics(entry: dict, stats: dict, failures: int) -> dict[str, float]:
    """The values logged when a version is swapped in (``refresh/<name>``): the history entry's
    numbers, the mined score quantiles, each sampling kernel's effective sample size 1/Σp² (mean
    over queries: close to the pool size means a flat kernel) and the failures so far."""
    values = {k: entry[k] for k in SWAP_KEYS}
    for kind in ("positive_score", "negative_score"):
        for q, v in stats.get(kind, {}).items():
            values[f"{kind}_{q}"] = v
    for name, v in stats.get("effective_sample_size", {}).items():
        if v is not None:  # None: no query had a kernel to draw from
            values[f"effective_sample_size_{name}"] = v
    values["failures"] = failures
    return values


def summarize(
    history: list[dict], current_version: int, failures: int, blocked_total_s: float, train_seconds: float | None = None
) -> dict[str, float]:
    """Flat metrics for metrics.json: versions used, failures, durations, blocked time, the last
    version's positive recall and kernel effective sample sizes."""
    used = [h for h in history if h.get("status") == "used"]
    out = {
        "refresh/versions_used": float(len(used)),
        "refresh/current_version": float(current_version),
        "refresh/failures": float(failures),
        "refresh/blocked_total_s": blocked_total_s,
    }
    if used:
        out["refresh/mean_duration_s"] = float(np.mean([h["duration_s"] for h in used]))
        out["refresh/mean_blocked_s"] = float(np.mean([h["blocked_s"] for h in used]))
        out["refresh/mean_staleness_steps"] = float(np.mean([h["staleness_steps"] for h in used]))
        out["refresh/last_positive_retrieved"] = used[-1]["positive_retrieved"]
        for name, v in used[-1].get("effective_sample_size", {}).items():
            out[f"refresh/last_effective_sample_size_{name}"] = float(v)
    if train_seconds:
        out["refresh/blocked_fraction"] = blocked_total_s / train_seconds
    return out


def log_row(trainer, values: dict[str, float]) -> None:
    """One row per event (``refresh/<name>``), straight to the trainer's loggers (Lightning's
    ``self.log`` would repeat it every step)."""
    metrics = {f"refresh/{name}": float(value) for name, value in values.items()}
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)
