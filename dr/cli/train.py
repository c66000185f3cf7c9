"""``dr-train``: train, evaluate and export as configured (:func:`dr.training.train`)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from dr.cli import hydra_command


def run(cfg: DictConfig, out: Path) -> float | None:
    """Train; return the optimised metric, so Hydra sweepers (e.g. Optuna) can drive multirun sweeps."""
    from dr.training import train

    metrics = train(cfg, validate=False)  # hydra_command validated it, before importing the training stack
    return metrics.get(cfg.get("optimized_metric", "trained/nDCG@10"))


main = hydra_command("train", run)  # a bad value is refused before torch and Lightning are imported
