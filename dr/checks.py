"""The checks of :func:`dr.validate.validate_config` about what a command is given (the model it
loads, seeds, input lists, a resume checkpoint) and about dr-train's best checkpoint and early
stopping; apart from the value rules of :mod:`dr.validate` so that each module reads in one sitting.
"""

from __future__ import annotations

from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, ListConfig, OmegaConf

from dr.config import ConfigError
from dr.losses.base import TEACHER_SCORE_FIELDS, Loss
from dr.validate import _ABSENT, _check, _get, _is_int, _is_number, boolean, one_of, positive_int


def _paths(v: Any) -> str | None:
    items = [v] if isinstance(v, str) else list(v) if isinstance(v, (list, tuple, ListConfig)) else None
    flat = [
        x
        for i in items or []
        for x in ([i] if isinstance(i, str) else list(i) if isinstance(i, (list, ListConfig)) else [None])
    ]
    return None if items and all(isinstance(x, str) and x for x in flat) else "expected a path or a list of paths"


def _prompt(v: Any) -> str | None:
    return None if isinstance(v, str) else 'expected a string (the text put before each text, e.g. "query: ") or null'


#: Settings of what a command is given: the model it loads (dr-train's ``encoder`` group, the
#: commands' overrides), seeds, significance tests, input lists, ``overwrite``.
INPUT_RULES = {
    "overwrite": boolean,
    "seed": lambda v: None if _is_int(v) and 0 <= v < 2**32 else "expected an integer in [0, 2^32)",
    "permutations": positive_int,
    "alpha": lambda v: None if _is_number(v) and 0 < v < 1 else "expected a significance level in (0, 1)",
    "beir": _paths,
    "run_files": _paths,
    "encoder.pooling": one_of("cls", "mean", "last"),
    "encoder.append_eos": boolean,
    "encoder.query_prompt": _prompt,
    "encoder.passage_prompt": _prompt,
    "data.batch_sampler.encoder.query_prompt": _prompt,
    "encoder.similarity": one_of("dot", "cos"),
    "encoder.normalize": boolean,
    "encoder.shared": boolean,
    "encoder.query_max_length": positive_int,
    "encoder.passage_max_length": positive_int,
}


def check_inputs(cfg: DictConfig) -> None:
    """Checks of what a command is given, before any model loads: the encoder's settings, a
    ``ckpt_path`` that is a local, complete checkpoint (:mod:`dr.models.checkpoint`)."""
    from dr.data.config_checks import check_cluster_model, check_index_trainable, check_targets
    from dr.models.checkpoint import check_resume_checkpoint

    primary = _running_primary_config()
    if primary is not None:  # a console script: its primary config file gives the types of its settings
        from dr.data.config_types import check_types, primary_defaults

        check_types(cfg, primary_defaults(*primary))
    _check(cfg, INPUT_RULES)
    check_targets(cfg)
    check_cluster_model(cfg)
    check_index_trainable(cfg)
    ckpt_path = _get(cfg, "ckpt_path")
    if ckpt_path not in (None, _ABSENT):
        expected = check_resume_checkpoint(str(ckpt_path))
        if expected:
            raise ConfigError(f"ckpt_path={ckpt_path}: {expected}")


def _running_primary_config() -> tuple[str, str] | None:
    """``(config folder, primary config name)`` of the Hydra app running now (None outside one)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    for source in hydra_cfg.runtime.config_sources:
        if source.provider == "main" and source.schema == "file":
            return str(source.path), hydra_cfg.job.config_name
    return None


def has_validation(cfg: DictConfig) -> bool:
    """True when dr-train holds out validation queries (a dev split or ``data.val_fraction > 0``)."""
    data = cfg.data
    return bool(data.get("val_queries") and data.get("val_qrels")) or float(data.get("val_fraction") or 0) > 0


def monitor_of(cfg: DictConfig) -> str | None:
    """The validation key the best checkpoint watches (``callbacks.best_checkpoint.monitor``), or None."""
    node = OmegaConf.select(cfg, "callbacks.best_checkpoint", default=None)
    return None if node is None else node.get("monitor")


def check_best_checkpoint(cfg: DictConfig) -> None:
    """The best checkpoint watches a measure the module validates on; early stopping has one to watch."""
    if _get(cfg, "module.val_measures") in (_ABSENT, None):
        return  # not dr-train's config
    monitor = monitor_of(cfg)
    if monitor is not None:
        measures = [f"val/{m}" for m in cfg.module.val_measures]
        if monitor not in measures:
            raise ConfigError(
                f"callbacks.best_checkpoint.monitor={monitor}: expected one of the validation measures "
                f"{', '.join(measures)} (module.val_measures)"
            )
    patience = _get(cfg, "trainer.early_stopping")
    if patience in (_ABSENT, None):
        return
    if monitor is None:
        raise ConfigError(
            f"trainer.early_stopping={patience}: expected callbacks.best_checkpoint with a monitor to watch"
        )
    if not has_validation(cfg):
        raise ConfigError(
            f"trainer.early_stopping={patience}: expected validation queries (data.val_fraction > 0 or "
            f"data.val_queries)"
        )


def check_out_of_domain(cfg: DictConfig) -> None:
    """``test.ood``'s BEIR folders exist; ``export.interpolate=auto`` has what it chooses α on: an
    out-of-domain set and validation queries (:mod:`dr.training.ood`)."""
    from dr.data.beir import beir_folder
    from dr.evaluation.evaluate import PRESETS

    test_on = _get(cfg, "test.enabled") is True
    sets = _get(cfg, "test.ood") if test_on else None
    for entry in sets if isinstance(sets, ListConfig) else []:
        if isinstance(entry, str) and entry not in PRESETS:
            try:
                beir_folder(entry, "test")
            except FileNotFoundError as e:
                raise ConfigError(f"test.ood: {e} (or a preset: {', '.join(PRESETS)})") from None
    if _get(cfg, "export.interpolate") != "auto":
        return
    if not (isinstance(sets, ListConfig) and len(sets)):
        raise ConfigError(
            "export.interpolate=auto: expected an out-of-domain set to choose α on (test.ood=[dl19-pool], "
            "a BEIR folder, ...; with test.enabled=true)"
        )
    if not has_validation(cfg):
        raise ConfigError(
            "export.interpolate=auto: expected validation queries to choose α on (data.val_fraction > 0 or "
            "data.val_queries)"
        )


def loss_class(node: Any) -> type | None:
    """The :class:`dr.losses.base.Loss` subclass a ``loss`` config builds (None: no such config)."""
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    if not target:
        return None
    try:
        cls = get_class(str(target))
    except Exception as e:  # Hydra wraps the import error
        raise ConfigError(f"loss._target_={target}: expected a loss class of dr.losses ({type(e).__name__})") from None
    if not (isinstance(cls, type) and issubclass(cls, Loss)):
        raise ConfigError(f"loss._target_={target}: expected a subclass of dr.losses.base.Loss")
    return cls


def check_loss_fields(cfg: DictConfig, data: DictConfig) -> None:
    """The batch fields the loss cannot do without (its contract, :meth:`Loss.config_fields`)
    against what the data and module settings provide."""
    node = _get(cfg, "loss")
    cls = loss_class(node)
    if cls is None:
        return
    needs = cls.config_fields(node)
    name = cls.__name__
    if needs & TEACHER_SCORE_FIELDS and not data.get("teacher_scores") and not data.get("teacher_from_negatives"):
        raise ConfigError(
            f"loss={name}: expected teacher scores, set data.teacher_scores=FILE "
            "(dr-score output) or data.teacher_from_negatives=true with a scored negatives file"
        )
    teacher = _get(cfg, "module.inbatch_teacher")
    if "teacher_matrix" in needs and teacher in (None, _ABSENT):
        raise ConfigError(
            f"module.inbatch_teacher=null: expected an in-batch teacher for the in-batch term of loss={name}, "
            "e.g. inbatch_teacher=fusion|biencoder|cross_encoder|colbert"
        )
