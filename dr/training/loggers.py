"""Experiment loggers beside CSV and TensorBoard: MLflow (a local file store) and Weights & Biases
(offline), chosen with ``logger=mlflow`` or ``logger=wandb`` (``conf/logger/``; the ``mlflow`` and
``wandb`` extras of the package install them).

Every logger of a run gets the resolved configuration as hyperparameters (flattened:
``optimizer.lr``, ``loss.temperature``...) before training, and every logger but the CSV one the
run's final figures (``metrics.json``: the test table, the validation measures, the chosen
checkpoint) after it.
MLflow also keeps ``config.yaml`` as an artifact of the run. MLflow accepts only ``_ / . -`` and
spaces besides letters and digits in metric names, so Lightning logs ``val/nDCG@10`` there as
``val/nDCG10``.

MLflow 3 refuses its file store (``file:`` URIs, in maintenance mode) unless
``MLFLOW_ALLOW_FILE_STORE=true``; a run configured with a ``file:`` tracking URI sets it for itself
when it is unset. A database store (``logger.mlflow.tracking_uri=sqlite:///PATH``, which needs the
full ``mlflow`` package) or a server URI works as MLflow documents.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def allow_file_store(cfg: DictConfig) -> None:
    """Let MLflow 3 write the ``file:`` store the config names (see the module docstring)."""
    uri = str(OmegaConf.select(cfg, "logger.mlflow.tracking_uri", default="") or "")
    if uri.startswith("file:") and "MLFLOW_ALLOW_FILE_STORE" not in os.environ:
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
        log.info("logger.mlflow.tracking_uri=%s: MLflow's file store (MLFLOW_ALLOW_FILE_STORE=true for this run)", uri)


def _flat(node, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, name + "."))
        else:
            out[name] = value
    return out


def log_config(loggers: list, cfg: DictConfig, config_file: Path) -> None:
    """Every logger records the resolved configuration; MLflow also keeps ``config_file``."""
    if not loggers:
        return
    params = _flat(OmegaConf.to_container(cfg, resolve=True))
    for logger in loggers:
        logger.log_hyperparams(params)
        if type(logger).__name__ == "MLFlowLogger":
            logger.experiment.log_artifact(logger.run_id, str(config_file))


def log_results(loggers: list, metrics: dict[str, float], step: int) -> None:
    """The run's final figures (those of ``metrics.json``) go to every logger but the CSV one (its
    ``metrics.csv`` is the training log, ``metrics.json`` beside it holds these) at the last step."""
    for logger in loggers:
        if type(logger).__name__ == "CSVLogger":
            continue
        logger.log_metrics(metrics, step=step)
        logger.save()
