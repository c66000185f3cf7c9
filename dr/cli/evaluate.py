"""``dr-eval``: score a run file, or a model (encode, search, score), against qrels; write metrics.json."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from dr.cli import encoder_from_config, hydra_command
from dr.config import ConfigError
from dr.data import read_corpus, read_qrels, read_queries, read_run, resolve_path, write_run
from dr.retrieval import PRESETS, DenseIndex, build_index, evaluate_run, format_table, search_queries, write_metrics


def run(cfg: DictConfig, out: Path) -> dict[str, float]:
    """Score a run file, or a model (encode, search, score), against qrels; write metrics.json."""
    if cfg.get("preset") and cfg.preset not in PRESETS:
        raise ConfigError(f"preset={cfg.preset}: expected one of {', '.join(sorted(PRESETS))}")
    preset = PRESETS[cfg.preset] if cfg.get("preset") else {}
    qrels_path = cfg.get("qrels") or preset.get("qrels")
    if not qrels_path:
        raise ConfigError("qrels=null: expected a qrels file (qrels=...) or a preset (preset=dl19|dl20|scifact)")
    measures = list(cfg.measures) if cfg.get("measures") else list(preset.get("measures", ["nDCG@10", "R@100"]))
    qrels = read_qrels(qrels_path)
    if cfg.get("run_file"):
        run = read_run(cfg.run_file)
        label = Path(cfg.run_file).name
    else:
        queries_path = cfg.get("queries") or preset.get("queries")
        if not (cfg.get("model") and queries_path and (cfg.get("corpus") or cfg.get("index"))):
            raise ConfigError("run_file=null: expected a run file (run_file=...), or model=... with queries=... and corpus=... (or index=...)")
        queries = {q: t for q, t in read_queries(queries_path).items() if q in qrels}
        encoder = encoder_from_config(cfg)
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


main = hydra_command("evaluate", run)
