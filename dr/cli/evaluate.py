"""``dr-eval``: score a run file, or a model (encode, search, score), against qrels; write metrics.json."""

from __future__ import annotations

import functools
from pathlib import Path

from omegaconf import DictConfig

from dr.cli import encoder_from_config, hydra_command
from dr.config import ConfigError
from dr.data import check_ids, read_corpus, read_qrels, read_queries, read_run, resolve_path, write_run
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
        all_queries = read_queries(queries_path)
        encoder = encoder_from_config(cfg)
        if cfg.get("index"):
            index = DenseIndex.load(cfg.index)
        else:
            index = build_index(encoder, read_corpus(cfg.corpus), batch_size=cfg.batch_size, bf16=cfg.bf16)
        qrels = _known_qrels(qrels, qrels_path, all_queries, queries_path, set(index.docids), cfg.get("corpus") or cfg.index,
                             cfg.get("on_missing", "warn"))
        queries = {q: t for q, t in all_queries.items() if q in qrels}
        run = search_queries(encoder, index, queries, k=cfg.k, batch_size=cfg.batch_size, bf16=cfg.bf16)
        write_run(run, out / "run.trec", tag="dr")
        label = str(cfg.model)
    metrics = evaluate_run(run, qrels, measures)
    write_metrics(metrics, out / "metrics.json")
    print(format_table({label: metrics}, title=f"qrels: {resolve_path(qrels_path)}"))
    print(f"metrics: {out / 'metrics.json'}")
    return metrics


def _known_qrels(qrels: dict, source: str, queries: dict, queries_source: str, docids: set, corpus: str, on_missing: str) -> dict:
    """``qrels`` without the qids that ``queries`` lacks and the judged docids that the corpus lacks
    (counted and dropped, or a DataError with ``on_missing=error``)."""
    check = functools.partial(check_ids, source=source, on_missing=on_missing, key="on_missing")
    bad_q = check(qrels, queries, what="qids", where=queries_source)
    bad_d = check((d for j in qrels.values() for d in j), docids, what="judged docids", where=corpus)
    return {q: {d: g for d, g in j.items() if d not in bad_d} for q, j in qrels.items() if q not in bad_q}


main = hydra_command("evaluate", run)
