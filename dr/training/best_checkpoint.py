"""The best checkpoint on the validation measure, early stopping, and which weights a run ships.

``callbacks.best_checkpoint`` is a Lightning ``ModelCheckpoint`` that watches a validation measure
(``monitor: val/nDCG@10`` by default; any of ``module.val_measures`` as ``val/<measure>``, all of
them higher-is-better) and keeps the weights of the best validation in ``checkpoints/best/``. It
is saved when validation ends, so the score it keeps is that of the weights it writes.
The periodic ``callbacks.model_checkpoint`` (with ``last.ckpt``) stays as it was: it is what a
killed run resumes from.

``trainer.early_stopping: N`` stops training once the monitored measure has not improved for N
validations in a row (Lightning's ``EarlyStopping``, ``mode=max``). Validation runs every
``trainer.val_check_interval`` training batches; an integer counts batches across epoch ends
(``check_val_every_n_epoch`` is then left unset, as Lightning asks).

``export.checkpoint: best`` (the default) reloads the best weights after training, so the test
evaluation and the export both use them; ``last`` keeps the weights of the last step. A run
without validation (``data.val_fraction=0`` and no ``data.val_queries``) has no best: it uses the
last weights and says so. ``metrics.json`` records the step of the weights used
(``train/checkpoint_step``), whether they are the best ones (``train/checkpoint_best``) and the
best validation score (``train/best_score``).
"""

from __future__ import annotations

import logging
import torch
from omegaconf import DictConfig, OmegaConf

from dr.config import ConfigError
from dr.checks import has_validation, monitor_of

log = logging.getLogger(__name__)

CHOICES = ("best", "last")


def trainer_arguments(cfg: DictConfig) -> tuple[DictConfig, list]:
    """``cfg.trainer`` without dr's own keys, and the callbacks those keys ask for.

    ``early_stopping`` becomes an ``EarlyStopping`` callback on the monitored measure; an integer
    ``val_check_interval`` validates every that many batches across epochs."""
    from pytorch_lightning.callbacks import EarlyStopping

    trainer_cfg = OmegaConf.create(OmegaConf.to_container(cfg.trainer, resolve=False))
    patience = trainer_cfg.pop("early_stopping", None)
    extra = []
    if patience is not None:
        extra.append(
            EarlyStopping(monitor=monitor_of(cfg), mode="max", patience=int(patience), check_on_train_epoch_end=False)
        )
    interval = trainer_cfg.get("val_check_interval")
    if isinstance(interval, int) and not isinstance(interval, bool) and has_validation(cfg):
        trainer_cfg.check_val_every_n_epoch = None  # count batches across epoch ends, not within one epoch
    return trainer_cfg, extra


def drop_best_without_validation(cfg: DictConfig, callbacks: list) -> list:
    """The callbacks without the monitoring checkpoint when there is nothing to monitor (no validation)."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    if has_validation(cfg):
        return callbacks
    return [c for c in callbacks if not (isinstance(c, ModelCheckpoint) and c.monitor is not None)]


def best_checkpoint(callbacks: list):
    """The monitoring ``ModelCheckpoint`` among ``callbacks``, or None."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    return next((c for c in callbacks if isinstance(c, ModelCheckpoint) and c.monitor is not None), None)


def use_checkpoint(module: torch.nn.Module, trainer, callbacks: list, choice: str) -> dict[str, float]:
    """Load the weights ``export.checkpoint`` names into ``module``; returns the metrics that say which."""
    if choice not in CHOICES:
        raise ConfigError(f"export.checkpoint={choice}: expected one of {', '.join(CHOICES)}")
    metrics: dict[str, float] = {"train/checkpoint_step": float(trainer.global_step), "train/checkpoint_best": 0.0}
    best = best_checkpoint(callbacks)
    if best is not None and best.best_model_score is not None:
        metrics["train/best_score"] = float(best.best_model_score)
    if choice == "last":
        return metrics
    if best is None or not best.best_model_path:
        log.warning(
            "export.checkpoint=best: no validation ran (no validation queries, or none before training ended); "
            "the test evaluation and the export use the last weights (step %d)",
            trainer.global_step,
        )
        return metrics
    state = torch.load(best.best_model_path, map_location="cpu", weights_only=True)
    module.load_state_dict(state["state_dict"])
    metrics["train/checkpoint_step"] = float(state["global_step"])
    metrics["train/checkpoint_best"] = 1.0
    print(
        f"best checkpoint: step {state['global_step']} ({best.monitor} {float(best.best_model_score):.4f}), "
        f"{best.best_model_path}; used for the test evaluation and the export (export.checkpoint=best)"
    )
    return metrics
