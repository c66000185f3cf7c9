"""What the ``dr-encode``, ``dr-search``, ``dr-eval`` and ``dr-export`` apps do, as plain functions.

Each takes its composed config and the run directory, so tests call them without Hydra's CLI.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from dr.data import read_corpus, read_qrels, read_queries, read_run, resolve_path, write_run
from dr.encoder import BiEncoder
from dr.evaluate import PRESETS, evaluate_run, format_table, write_metrics
from dr.export import export
from dr.index import DenseIndex
from dr.search import build_index, search_queries

log = logging.getLogger(__name__)


def load_encoder(model: str, overrides: DictConfig | dict | None = None, device: str | None = None) -> BiEncoder:
    """An encoder from a hub name, a saved/exported folder, or a Lightning checkpoint (``.ckpt``).

    A checkpoint is rebuilt from the ``config.yaml`` that ``dr-train`` writes into its run
    directory (two levels above ``checkpoints/x.ckpt``), then loaded with the trained weights.
    """
    overrides = {k: v for k, v in dict(overrides or {}).items() if v is not None}
    path = Path(model)
    if path.suffix == ".ckpt":
        run_config = path.resolve().parent.parent / "config.yaml"
        if not run_config.is_file():
            raise FileNotFoundError(f"{run_config}: missing; a .ckpt is read with the config.yaml of its dr-train run")
        encoder_cfg = OmegaConf.to_container(OmegaConf.load(run_config).encoder)
        encoder_cfg.pop("_target_", None)
        encoder_cfg.update(overrides)
        encoder = BiEncoder.from_pretrained(**encoder_cfg)
        state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
        prefix = "encoder."
        encoder.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    else:
        encoder = BiEncoder.from_pretrained(model, **overrides)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return encoder.to(device).eval()


def _encoder_from(cfg: DictConfig) -> BiEncoder:
    if not cfg.get("model"):
        raise ValueError("model=... is required: a hub name, a saved model folder or a .ckpt of a dr-train run")
    return load_encoder(cfg.model, cfg.get("encoder"))


def encode(cfg: DictConfig, out: Path) -> DenseIndex:
    """Encode a corpus and save a FAISS index (the ``index`` file plus ``docid``)."""
    encoder = _encoder_from(cfg)
    corpus = read_corpus(cfg.corpus)
    index = build_index(encoder, corpus, index_kind=cfg.index_kind, batch_size=cfg.batch_size, bf16=cfg.bf16)
    target = Path(cfg.output) if cfg.get("output") else out / "index"
    index.save(target)
    print(f"indexed {len(index)} passages of {cfg.corpus} into {target}")
    return index


def search(cfg: DictConfig, out: Path) -> Path:
    """Search queries against a saved index and write a TREC run file."""
    encoder = _encoder_from(cfg)
    index = DenseIndex.load(cfg.index)
    queries = read_queries(cfg.queries)
    run = search_queries(encoder, index, queries, k=cfg.k, batch_size=cfg.batch_size, bf16=cfg.bf16)
    target = Path(cfg.output) if cfg.get("output") else out / "run.trec"
    write_run(run, target, tag=cfg.tag)
    print(f"wrote {sum(len(v) for v in run.values())} results for {len(run)} queries to {target}")
    return target


def evaluate(cfg: DictConfig, out: Path) -> dict[str, float]:
    """Score a run file, or a model (encode, search, score), against qrels; write metrics.json."""
    if cfg.get("preset") and cfg.preset not in PRESETS:
        raise ValueError(f"unknown preset {cfg.preset!r}; expected one of {sorted(PRESETS)}")
    preset = PRESETS[cfg.preset] if cfg.get("preset") else {}
    qrels_path = cfg.get("qrels") or preset.get("qrels")
    if not qrels_path:
        raise ValueError("qrels=... (or preset=dl19|dl20|scifact) is required")
    measures = list(cfg.measures) if cfg.get("measures") else list(preset.get("measures", ["nDCG@10", "R@100"]))
    qrels = read_qrels(qrels_path)
    if cfg.get("run_file"):
        run = read_run(cfg.run_file)
        label = Path(cfg.run_file).name
    else:
        queries_path = cfg.get("queries") or preset.get("queries")
        if not (cfg.get("model") and queries_path and (cfg.get("corpus") or cfg.get("index"))):
            raise ValueError("give run_file=..., or model=... with queries=... and corpus=... (or index=...)")
        encoder = _encoder_from(cfg)
        queries = {q: t for q, t in read_queries(queries_path).items() if q in qrels}
        if cfg.get("index"):
            index = DenseIndex.load(cfg.index)
        else:
            index = build_index(encoder, read_corpus(cfg.corpus), batch_size=cfg.batch_size, bf16=cfg.bf16)
        run = search_queries(encoder, index, queries, k=cfg.k, batch_size=cfg.batch_size, bf16=cfg.bf16)
        write_run(run, out / "run.trec", tag="dr")
        label = str(cfg.model)
    metrics = evaluate_run(run, qrels, measures)
    write_metrics(metrics, out / "metrics.json")
    print(format_table({label: metrics}, title=f"qrels: {resolve_path(qrels_path)}"))
    print(f"metrics: {out / 'metrics.json'}")
    return metrics


def export_model(cfg: DictConfig, out: Path) -> Path:
    """Export a trained model (folder or .ckpt) with the sentence-transformers layout, optionally indexed."""
    encoder = _encoder_from(cfg)
    index = None
    if cfg.get("corpus"):
        index = build_index(encoder, read_corpus(cfg.corpus), index_kind=cfg.index_kind, batch_size=cfg.batch_size, bf16=cfg.bf16)
    target = Path(cfg.output) if cfg.get("output") else out / "export"
    export(encoder.cpu(), target, index=index)
    print(f"exported to {target}")
    return target
