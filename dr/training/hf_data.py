"""``data.hf``: a training set given as texts (a ``datasets`` folder, parquet or JSONL) becomes the
run's corpus, training queries, qrels and (when it has negative columns) negatives file, once, at
the top of :func:`dr.training.train` (:mod:`dr.data.hf` writes and caches the files).

Everything downstream then reads plain files: the data module, TAS clustering
(``${data.train_queries}``), the fusion teacher's corpus (``${data.corpus}``), the index refresh
(which re-encodes this corpus), the interpolation/extrapolation split. With ``data.hf`` set,
``data.corpus``, ``data.train_queries`` and ``data.train_qrels`` are replaced; ``data.negatives``
is replaced when the dataset has negatives and otherwise kept (BM25 negatives are then mined from
the dataset's own passages, as sentence-transformers' ``mine_hard_negatives`` mines from the positives).
"""

from __future__ import annotations

import copy

from omegaconf import DictConfig, open_dict

from dr.config import ConfigError
from dr.data.hf import HfFiles, hf_node, materialise_node
from dr.method_checks import _class_of


def with_hf_data(cfg: DictConfig) -> tuple[DictConfig, HfFiles | None]:
    """``cfg`` with the files of ``data.hf`` in place of the data paths (a copy), and the files;
    ``cfg`` itself and None when ``data.hf.path`` is not set."""
    node = hf_node(cfg.data.get("hf"))
    if node is None:
        return cfg, None
    files = materialise_node(node)
    sampler = _class_of(cfg.data.get("pair_sampler"))
    if files.negatives is None and getattr(sampler, "uses_scores", False):
        raise ConfigError(
            f"data.pair_sampler={sampler.__name__}: expected candidates with scores, but data.hf.path={node['path']} "
            f"has no negative columns (columns: {files.manifest['layout']}); give a dataset with negatives and "
            "scores (e.g. dr-mine miner=pool top_k=200 output_format=hf)"
        )
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.data.corpus, cfg.data.train_queries, cfg.data.train_qrels = files.corpus, files.queries, files.qrels
        if files.negatives is not None:
            cfg.data.negatives = files.negatives
    return cfg, files
