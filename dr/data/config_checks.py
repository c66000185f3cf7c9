"""Checks of a command's config that read files or import modules, run by :func:`dr.validate.validate_config`
before any model loads: every ``_target_`` importable, TAS with a cluster file or a model to make
one, an IVF(-PQ) index with enough passages to train it.
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dr.config import ConfigError
from dr.data.io import numbered_lines


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=None, throw_on_missing=False)


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _enabled(cfg: DictConfig, group: str) -> bool:
    node = _get(cfg, group)
    return isinstance(node, DictConfig) and bool(node.get("enabled", False))


def _targets(node: Any, key: str = "") -> list[tuple[str, Any]]:
    """``(key, value)`` of every ``_target_`` in a config container (unresolved)."""
    found = []
    if isinstance(node, dict):
        for k, v in node.items():
            path = f"{key}.{k}" if key else str(k)
            if k == "_target_":
                found.append((path, v))
            else:
                found += _targets(v, path)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found += _targets(v, f"{key}[{i}]")
    return found


def locate(target: str) -> str | None:
    """What is wrong with the ``_target_`` ``target`` (None when it names an importable object)."""
    import importlib

    parts = target.split(".")
    if not target or not all(p.isidentifier() for p in parts):
        return "expected a dotted path to a class or function, e.g. dr.losses.InfoNCELoss"
    for i in range(len(parts), 0, -1):
        module_name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name is not None and not module_name.startswith(e.name) and not e.name.startswith(module_name):
                return f"expected an importable path; importing {module_name} needs the missing package {e.name}"
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return f"expected an importable class or function; {'.'.join(parts[:i])} has no {attr!r}"
            obj = getattr(obj, attr)
        return None
    return f"expected an importable class or function; there is no module {parts[0]!r}"


def check_targets(cfg: DictConfig) -> None:
    """Every ``_target_`` names an importable object (a typo is caught before any work, not by
    Hydra's instantiation in the middle of a run)."""
    for key, target in _targets(OmegaConf.to_container(cfg, resolve=False)):
        if not isinstance(target, str) or "${" in target:
            continue
        expected = locate(target)
        if expected:
            raise ConfigError(f"{key}={target}: {expected}")


def check_cluster_model(cfg: DictConfig) -> None:
    """TAS without a cluster file clusters the training queries with a model: it needs one."""
    sampler = _get(cfg, "data.batch_sampler")
    if not isinstance(sampler, DictConfig) or "clusters" not in sampler or "model" not in sampler:
        return
    clusters = OmegaConf.select(sampler, "clusters", default=None, throw_on_missing=False)
    model = OmegaConf.select(sampler, "model", default=None, throw_on_missing=False)
    if clusters is None and model is None:
        raise ConfigError(
            "data.batch_sampler.clusters=null, data.batch_sampler.model=null: expected a cluster file "
            "(data.batch_sampler.clusters=FILE from dr-cluster) or a model to cluster the training queries with"
        )


#: FAISS IVF-PQ trains 256 centroids per sub-quantizer (8-bit codes), so needs at least this many vectors.
IVFPQ_MIN_VECTORS = 256


def _corpus_file(spec: Any):
    if not isinstance(spec, str) or ":" in spec.split("/")[0]:
        return None  # a bundled or ir_datasets corpus (scifact:corpus, irds:...) is large enough
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "corpus.jsonl").is_file():
        path = path / "corpus.jsonl"
    return path if path.is_file() else None


def _at_least(path, n: int) -> int:
    """The number of lines of ``path``, counting no further than ``n``."""
    count = 0
    with numbered_lines(path) as lines:
        for count, line in lines:
            if count >= n:
                break
    return count


def check_index_trainable(cfg: DictConfig) -> None:
    """``index_kind=ivfpq`` (or ``ivf`` with ``index_params.nlist``) on a corpus too small to train
    it fails now, not after the whole corpus has been encoded. Counts at most a few hundred lines."""
    for kind_key, corpus_key, nlist_key in (
        ("index_kind", "corpus", "index_params.nlist"),
        ("refresh.index", "data.corpus", "refresh.nlist"),
    ):
        kind = _get(cfg, kind_key)
        if kind not in ("ivf", "ivfpq") or (kind_key.startswith("refresh") and not _enabled(cfg, "refresh")):
            continue
        path = _corpus_file(_get(cfg, corpus_key))
        if path is None:
            continue
        nlist = _get(cfg, nlist_key)
        need = max(IVFPQ_MIN_VECTORS if kind == "ivfpq" else 1, nlist if _is_int(nlist) else 1)
        n = _at_least(path, need)
        if n < need:
            why = (
                f"IVF-PQ trains its 8-bit codebooks on at least {IVFPQ_MIN_VECTORS} vectors"
                if need == IVFPQ_MIN_VECTORS
                else f"{nlist_key}={nlist} lists need at least as many vectors"
            )
            raise ConfigError(f"{kind_key}={kind}: {corpus_key}={path} holds {n} passages; {why}: use {kind_key}=flat")
