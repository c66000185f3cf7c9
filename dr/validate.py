"""Config validation: reject values that cannot work before any work starts.

:func:`validate_config` runs at the start of every command (:func:`dr.cli.hydra_command`) and of
:func:`dr.training.train`. A check applies when its key is in the config and not null, so one
table serves every command (``data.batch_size`` is dr-train's, ``top_k`` dr-mine's). Each failure
is a :class:`dr.config.ConfigError` naming the key, its value and what was expected, for example
``data.batch_size=0: expected a positive integer``. Besides ranges it checks what the keys must
agree on: a refresh miner keeping at least ``data.num_negatives`` negatives, refresh without
loader workers (negatives are swapped in the training process), a distillation loss with its
teachers, measures that ir-measures can parse.

The checks of what a command is given are in :mod:`dr.checks`, those of the methods a config
combines (negatives and samplers, teachers for thresholds) in :mod:`dr.method_checks`.

Errors found only in data (a bad line, an unknown id) are :class:`dr.data.DataError`, raised by
the readers.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable

from omegaconf import DictConfig, ListConfig, OmegaConf

from dr.config import BACKENDS, ConfigError
from dr.data.checks import ON_MISSING
from dr.data.hf_columns import columns_rule
from dr.data.hf_write import OUTPUT_COLUMNS, OUTPUT_FORMATS
from dr.evaluation.evaluate import PRESETS, parse_measures

_ABSENT = object()


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def positive_int(v: Any) -> str | None:
    return None if _is_int(v) and v > 0 else "expected a positive integer"


def non_negative_int(v: Any) -> str | None:
    return None if _is_int(v) and v >= 0 else "expected an integer >= 0"


def positive_number(v: Any) -> str | None:
    return None if _is_number(v) and v > 0 else "expected a positive number"


def non_negative_number(v: Any) -> str | None:
    return None if _is_number(v) and v >= 0 else "expected a number >= 0"


def fraction(v: Any) -> str | None:
    return None if _is_number(v) and 0 <= v < 1 else "expected a fraction in [0, 1)"


def steps_or_unlimited(v: Any) -> str | None:
    return None if _is_int(v) and (v > 0 or v == -1) else "expected a positive number of steps (or -1: no step limit)"


def boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else "expected true or false"


def one_of(*options: str) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if v in options else f"expected one of {', '.join(options)}"

    return check


def measures(v: Any) -> str | None:
    names = list(v) if isinstance(v, (list, tuple, ListConfig)) else None
    if not names or not all(isinstance(n, str) for n in names):
        return "expected a non-empty list of ir-measures names, e.g. [nDCG@10,R@100]"
    try:
        parse_measures(names)
    except ValueError as e:
        return f"expected ir-measures names; {e}"
    return None


def _positive_ints(v: Any, empty: bool = False) -> str | None:
    if isinstance(v, (list, ListConfig)) and (v or empty) and all(_is_int(m) and m > 0 for m in v):
        return None
    return "expected a list of positive integers" if empty else "expected a non-empty list of positive integers"


def lora(v: Any) -> str | None:
    """``encoder.lora``: valid settings, and the ``peft`` package that applies them installed."""
    import importlib.util

    from dr.models.lora import INSTALL, lora_problem

    problem = lora_problem(v)
    if problem is None and importlib.util.find_spec("peft") is None:
        return f"LoRA needs the peft package, which is not installed: {INSTALL}"
    return problem


INDEX_KINDS = ("auto", "flat", "ivf", "ivfpq", "hnsw")


def ood_entries(v: Any) -> str | None:
    """``test.ood``: preset names, BEIR folders, or ``{name, corpus, queries, qrels[, measures]}``."""
    expected = (
        f"expected a list of out-of-domain sets: preset names ({', '.join(PRESETS)}), BEIR folders, "
        "or {name: N, corpus: C, queries: Q, qrels: R}"
    )
    if not isinstance(v, (list, ListConfig)):
        return expected
    names = []
    for entry in v:
        if isinstance(entry, str) and entry:
            names.append(entry.rstrip("/").rsplit("/", 1)[-1])
        elif isinstance(entry, DictConfig) and all(
            isinstance(entry.get(k), str) for k in ("name", "corpus", "queries", "qrels")
        ):
            if "/" in entry.name or entry.get("measures") is not None and measures(entry.measures):
                return expected + " (a name without '/', ir-measures names)"
            names.append(entry.name)
        else:
            return expected
    return None if len(set(names)) == len(names) else "expected distinct set names"


#: key -> check (returns what was expected, or None when the value is fine). Keys absent from a
#: command's config, or null, are skipped.
RULES: dict[str, Callable[[Any], str | None]] = {
    # dr-train
    "data.batch_size": positive_int,
    "data.num_negatives": non_negative_int,
    "data.num_workers": non_negative_int,
    "data.val_fraction": fraction,
    "data.val_depth": positive_int,
    "data.min_relevance": non_negative_int,
    "data.min_teacher_pairs": non_negative_int,
    "data.on_missing": one_of(*ON_MISSING),
    "data.negatives.rank_min": non_negative_int,
    "data.negatives.rank_max": positive_int,
    "loss.temperature": positive_number,
    "loss.student_scale": lambda v: (
        None if v == "auto" else positive_number(v) and "expected a positive number or auto"
    ),
    "loss.alpha": non_negative_number,
    "loss.teacher_temperature": positive_number,
    "loss.pair.student_scale": positive_number,
    "loss.inbatch.temperature": positive_number,
    "loss.inbatch_weight": non_negative_number,
    "optimizer.lr": positive_number,
    "optimizer.weight_decay": non_negative_number,
    "scheduler.num_warmup_steps": non_negative_int,
    "trainer.max_steps": steps_or_unlimited,
    "trainer.max_epochs": steps_or_unlimited,
    "trainer.val_check_interval": positive_number,
    "trainer.early_stopping": positive_int,
    "export.checkpoint": one_of("best", "last"),
    "export.truncate_dim": positive_int,
    "export.lora": one_of("merge", "adapter"),
    "encoder.lora": lora,
    "lora": one_of("merge", "adapter"),
    "truncate_dim": positive_int,
    "interpolate": lambda v: (
        None if _is_number(v) and 0 <= v <= 1 else "expected a number in [0, 1] (the fine-tuned model's weight)"
    ),
    "export.interpolate": lambda v: (
        None
        if v == "auto" or (_is_number(v) and 0 <= v <= 1)
        else "expected auto or a number in [0, 1] (the fine-tuned model's weight)"
    ),
    "export.interpolate_alphas": lambda v: (
        None
        if isinstance(v, (list, ListConfig)) and v and all(_is_number(a) and 0 <= a <= 1 for a in v)
        else "expected a non-empty list of numbers in [0, 1]"
    ),
    "export.interpolate_budget": non_negative_number,
    "loss.dims": lambda v: _positive_ints(v),
    "test.truncate_dims": lambda v: _positive_ints(v, empty=True),
    "module.val_measures": measures,
    "module.length_buckets": positive_int,
    "module.attention_dropout": fraction,
    "module.ffn_recompute": one_of("none", "activation", "full"),
    "module.attention_recompute": boolean,
    "module.cpu_linear": one_of("onednn", "aten"),
    "module.grad_cache_chunk": positive_int,
    "module.gather_negatives": boolean,
    "data.compact": boolean,
    "data.hf": lambda v: (
        None
        if v is None or hasattr(v, "items") or (isinstance(v, str) and v.strip())
        else "expected a path (data.hf=PATH) or settings (data.hf.path=PATH, data.hf.split, data.hf.columns)"
    ),
    "data.hf.path": lambda v: (
        None if isinstance(v, str) and v.strip() else "expected the path of a datasets folder, parquet or JSONL file"
    ),
    "data.hf.split": lambda v: None if isinstance(v, str) and v.strip() else "expected a split name, e.g. train",
    "data.hf.columns": columns_rule,
    "data.hf.ignore": lambda v: (
        None
        if isinstance(v, (list, ListConfig)) and all(isinstance(c, str) and c for c in v)
        else "expected a list of column names, e.g. [query_id]"
    ),
    # the other commands
    "k": positive_int,
    "batch_size": positive_int,
    "top_k": positive_int,
    "chunk_size": positive_int,
    "min_relevance": non_negative_int,
    "max_negatives": positive_int,
    "num_clusters": positive_int,
    "queries_per_cluster": positive_int,
    "train_batch_size": positive_int,
    "niter": positive_int,
    "measures": measures,
    "preset": one_of(*PRESETS),
    "index_kind": one_of(*INDEX_KINDS),
    "index_memory_gb": positive_number,
    "shard_size": non_negative_int,
    "backend": one_of("auto", *BACKENDS),
    "embedding_precision": one_of("float32", "int8", "binary"),
    "rescore_precision": one_of("binary", "int8", "none"),
    "rescore_multiplier": positive_int,
    "format": one_of(*BACKENDS),  # dr-export's formats are the backends that read them
    "output_format": one_of(*OUTPUT_FORMATS),
    "output_columns": one_of(*OUTPUT_COLUMNS),
    "output_num_negatives": non_negative_int,
    "miner.num_negatives": non_negative_int,
    "threshold": lambda v: None if _is_number(v) and -1 <= v <= 1 else "expected a cosine similarity in [-1, 1]",
    "extrapolation_fraction": lambda v: None if _is_number(v) and 0 <= v <= 1 else "expected a fraction in [0, 1]",
    "max_removed_fraction": lambda v: None if _is_number(v) and 0 <= v <= 1 else "expected a fraction in [0, 1]",
    "max_removed_per_query": non_negative_int,
    "on_missing": one_of(*ON_MISSING),
}

#: Checked only when the group is switched on (``test.enabled``, ``refresh.enabled``).
TEST_RULES = {
    "test.backend": one_of("auto", "torch", "onnx"),
    "test.k": positive_int,
    "test.batch_size": positive_int,
    "test.measures": measures,
    "test.ood": lambda v: ood_entries(v),
}
REFRESH_RULES = {
    "refresh.mode": one_of("async", "sync"),
    "refresh.every_n_steps": positive_int,
    "refresh.every_minutes": positive_number,
    "refresh.poll_every_n_steps": positive_int,
    "refresh.top_k": positive_int,
    "refresh.batch_size": positive_int,
    "refresh.chunk_size": positive_int,
    "refresh.worker_threads": positive_int,
    "refresh.timeout_s": positive_number,
    "refresh.index": one_of(*INDEX_KINDS),
    "refresh.device": one_of("auto", "cpu", "cuda"),
    "refresh.backend": one_of("auto", *BACKENDS),
    "refresh.miner.num_negatives": non_negative_int,
}


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)


def _check(cfg: DictConfig, rules: dict[str, Callable[[Any], str | None]]) -> None:
    for key, check in rules.items():
        value = _get(cfg, key)
        if value is _ABSENT or value is None:
            continue
        expected = check(value)
        if expected:
            raise ConfigError(f"{key}={_show(value)}: {expected}")


def _show(value: Any) -> str:
    if isinstance(value, (DictConfig, ListConfig)):
        return str(OmegaConf.to_container(value))
    return str(value)


def _enabled(cfg: DictConfig, group: str) -> bool:
    node = _get(cfg, group)
    return isinstance(node, DictConfig) and bool(node.get("enabled", False))


def miner_keeps(miner: DictConfig | None) -> int | None:
    """How many negatives per query a miner config keeps (the last stage of a chain); None: all."""
    if not isinstance(miner, DictConfig):
        return None
    stages = miner.get("miners")
    if isinstance(stages, ListConfig) and len(stages):
        return miner_keeps(stages[-1])
    keeps = miner.get("num_negatives")
    return int(keeps) if _is_int(keeps) else None


def _check_training(cfg: DictConfig) -> None:
    data = _get(cfg, "data")
    if not isinstance(data, DictConfig):
        return
    negatives = data.get("negatives")
    if isinstance(negatives, DictConfig) and _is_int(negatives.get("rank_min")) and _is_int(negatives.get("rank_max")):
        lo, hi = negatives.rank_min, negatives.rank_max
        if lo >= hi:
            raise ConfigError(
                f"data.negatives.rank_min={lo}, data.negatives.rank_max={hi}: expected rank_min < rank_max"
            )
        if _is_int(data.get("num_negatives")) and data.num_negatives > hi - lo:
            raise ConfigError(
                f"data.num_negatives={data.num_negatives}: expected at most the {hi - lo} BM25 ranks "
                f"[{lo}, {hi}) of data.negatives"
            )
    if _enabled(cfg, "refresh"):
        keeps = miner_keeps(_get(cfg, "refresh.miner"))
        wanted = data.get("num_negatives")
        if keeps is not None and _is_int(wanted) and wanted > keeps:
            raise ConfigError(
                f"data.num_negatives={wanted}: expected at most the {keeps} negatives per query that "
                f"the refresh miner keeps (refresh.miner num_negatives={keeps})"
            )
        if _is_int(data.get("num_workers")) and data.num_workers > 0:
            raise ConfigError(
                f"data.num_workers={data.num_workers}: expected 0 with an index refresh (refresh.enabled=true), "
                "which swaps the negatives inside the training process"
            )
        if _get(cfg, "refresh.every_n_steps") is None and _get(cfg, "refresh.every_minutes") is None:
            raise ConfigError(
                "refresh.every_n_steps=null, refresh.every_minutes=null: expected a schedule (one of them set)"
            )
        if data.get("teacher_from_negatives") and _get(cfg, "refresh.teacher") in (None, _ABSENT):
            # every refreshed file would carry the student's dense scores, read as the teacher's
            raise ConfigError(
                "data.teacher_from_negatives=true reads the negatives file's scores as teacher scores, but "
                "refresh.teacher "
                "is null: every refreshed file would carry the student's own scores and replace the teacher's. Set "
                "refresh.teacher to re-score the new pairs (e.g. +teacher@refresh.teacher=fusion), or give the teacher "
                "scores as data.teacher_scores=FILE with data.teacher_from_negatives=false"
            )
    check_compact(data)
    from dr.checks import check_loss_fields  # the loss contract against the data and module settings
    from dr.method_checks import check_negatives_sources  # they use this module's rules and helpers

    check_negatives_sources(cfg, data)

    check_loss_fields(cfg, data)


#: Data options that ``data.compact`` (arrays instead of dictionaries) does not support, with why.
COMPACT_UNSUPPORTED = {
    "teacher_from_negatives": "the negatives file's scores would be merged into the teacher's scores in place",
    "teacher_pair_filter": "dropping inverted teacher pairs edits the teacher's pairs in place",
}


def check_compact(data: Any) -> None:
    """Refuse the data options (``data`` config or datamodule hyperparameters) that ``compact`` does not support."""
    if not data.get("compact"):
        return
    teacher = data.get("teacher_scores")
    if not isinstance(teacher, str) and teacher is not None and len(teacher) > 1:
        raise ConfigError(
            f"data.compact=true, data.teacher_scores={_show(teacher)}: expected one teacher-score file "
            "(several are merged into dictionaries only; merge the files or set data.compact=false)"
        )
    for key, why in COMPACT_UNSUPPORTED.items():
        if data.get(key):
            raise ConfigError(f"data.compact=true, data.{key}=true: expected data.compact=false ({why})")


def validate_config(cfg: DictConfig) -> DictConfig:
    """Raise :class:`ConfigError` for the first value that cannot work; return ``cfg`` otherwise."""
    _check(cfg, RULES)  # the value rules first: they need no heavy import, so a bad value is refused at once
    from dr.method_checks import check_teacher_threshold  # it uses this module's rules and helpers

    if _enabled(cfg, "test"):
        _check(cfg, TEST_RULES)
    if _enabled(cfg, "refresh"):
        _check(cfg, REFRESH_RULES)
        check_teacher_threshold(cfg, "refresh.miner", "refresh.teacher")
    check_teacher_threshold(cfg, "miner", "teacher")
    _check_training(cfg)
    from dr.checks import check_best_checkpoint, check_inputs, check_out_of_domain  # they use this module's helpers

    check_inputs(cfg)
    check_best_checkpoint(cfg)
    check_out_of_domain(cfg)
    return cfg
