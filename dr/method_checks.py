"""The checks of :func:`dr.validate.validate_config` about the methods a config combines: where the
negatives come from against the pair sampler that reads their scores (SimANS) and the refresh miner,
and a teacher for each miner that thresholds teacher scores (RocketQA-style denoising). Apart from
the value rules of :mod:`dr.validate` so that each module reads in one sitting.
"""

from __future__ import annotations

from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, ListConfig

from dr.config import ConfigError
from dr.data.hf import hf_node
from dr.miners.base import Miner
from dr.validate import _enabled, _get, _show


def _class_of(node: Any) -> type | None:
    """The class a Hydra node's ``_target_`` names (None when there is none or it does not import:
    instantiation reports that)."""
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    if not isinstance(target, str):
        return None
    try:
        return get_class(target)
    except Exception:
        return None


def _miner_classes(miner: Any) -> list[type]:
    """The classes of a miner config and, for a chain, of its stages."""
    stages = miner.get("miners") if isinstance(miner, DictConfig) else None
    if isinstance(stages, ListConfig):
        return [c for stage in stages for c in _miner_classes(stage)]
    cls = _class_of(miner)
    return [cls] if cls is not None else []


def check_negatives_sources(cfg: DictConfig, data: DictConfig) -> None:
    """Refuse the combinations of pair sampler, negatives and refresh that silently degrade a method.

    - A pair sampler that draws by the candidates' scores (``uses_scores``, SimANS) needs a file that
      keeps the pool with its scores and the positives' scores: on BM25 negatives (a source, no
      positive score) every load would take the same lowest-ranked candidates.
    - With a refresh: a kernel miner (SimANS) would pre-sample what the sampler samples again at
      every load. (``refresh.teacher`` writes its scores to a file of their own unless
      ``data.teacher_from_negatives``, which the data module refuses with such a sampler.)
    - A refresh miner that filters on teacher scores (RocketQA's denoising) needs ``refresh.teacher``:
      the refresh candidates carry no teacher scores of their own.
    """
    sampler = _class_of(data.get("pair_sampler"))
    scored = bool(getattr(sampler, "uses_scores", False))
    name = sampler.__name__ if sampler is not None else ""
    from_hf = hf_node(data.get("hf")) is not None  # dr.training.hf_data checks it once the files are written
    if scored and not isinstance(data.get("negatives"), str) and not from_hf:
        raise ConfigError(
            f"data.negatives={_show(data.get('negatives'))}: expected a negatives file with the candidates' and "
            f"positives' scores for data.pair_sampler={name} (a scored pool: dr-mine miner=pool top_k=200 "
            "output=FILE); without a positive score every load takes the same lowest-ranked candidates"
        )
    if not _enabled(cfg, "refresh"):
        return
    miners = [c for c in _miner_classes(_get(cfg, "refresh.miner")) if issubclass(c, Miner)]
    teacher = _get(cfg, "refresh.teacher")
    has_teacher = isinstance(teacher, DictConfig)
    if scored:
        kernels = [c for c in miners if c.samples_by_kernel]
        if kernels:
            raise ConfigError(
                f"refresh.miner={kernels[0].__name__}: expected miner@refresh.miner=pool with data.pair_sampler="
                f"{name}, which applies its kernel at every load (the refresh would apply it once before)"
            )
    if has_teacher and data.get("compact") and data.get("teacher_scores"):
        raise ConfigError(
            "data.compact=true, refresh.teacher set: expected data.compact=false (the refresh teacher's "
            "scores replace each query's teacher scores, which compact arrays hold read-only)"
        )
    needs_teacher = [c for c in miners if c.needs_teacher_scores]
    if needs_teacher and not has_teacher:
        raise ConfigError(
            f"refresh.miner={needs_teacher[0].__name__}: expected a refresh.teacher to score the refresh's "
            "candidates (+teacher@refresh.teacher=cross_encoder), or another refresh miner; "
            "without one every refresh job fails"
        )


def _threshold_stages(miner: Any) -> list[DictConfig]:
    """The stages of a miner config with a threshold on teacher scores (RocketQA's denoising)."""
    stages = miner.get("miners") if isinstance(miner, DictConfig) else None
    if isinstance(stages, ListConfig):
        return [s for stage in stages for s in _threshold_stages(stage)]
    needs = getattr(_class_of(miner), "needs_teacher_scores", False)
    return [miner] if needs and miner.get("threshold") is not None else []


def check_teacher_threshold(cfg: DictConfig, miner_key: str, teacher_key: str) -> None:
    """A denoising threshold is a probability of relevance: refuse a teacher whose scores have no map onto it."""
    teacher = _get(cfg, teacher_key)
    stages = _threshold_stages(_get(cfg, miner_key))
    if not stages or not isinstance(teacher, DictConfig):
        return
    cls = _class_of(teacher)
    if cls is not None and not getattr(cls, "maps_to_probability", False):
        raise ConfigError(
            f"{miner_key}.threshold={stages[0].threshold}: expected a teacher whose scores map to a probability "
            f"of relevance (a cross-encoder), not {cls.__name__}; use {miner_key}.margin on the teacher's own "
            "scale, or a cross-encoder teacher"
        )
