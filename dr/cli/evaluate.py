"""``dr-eval``: score a run file, or a model (encode, search, score), against qrels; write metrics.json.

Also: ``beir=DIR`` (a BEIR folder) or ``beir=[DIR,...]`` (a summary table over several),
``preset=dl19|dl20|msmarco-dev|scifact``, and ``split=DIR`` (a ``dr-split`` folder: the measures on
its interpolation and extrapolation test queries, side by side, with the gap).
"""

from __future__ import annotations

import functools
from pathlib import Path

from omegaconf import DictConfig, ListConfig

from dr.cli import encoder_from_config, hydra_command
from dr.config import ConfigError
from dr.data import beir_folder, check_ids, read_corpus, read_qrels, read_queries, read_run, resolve_path, write_run
from dr.evaluation import PRESETS, evaluate_run, format_table, write_metrics
from dr.retrieval import DenseIndex, build_index, search_queries
from dr.evaluation.benchmarks import split_metrics, split_rows, summary_rows
from dr.evaluation.splits import read_split


def _retrieve(cfg: DictConfig, encoder, corpus: str | None, queries_path: str, qrels: dict, qrels_path: str) -> tuple[dict, dict]:
    """Search the judged queries; returns the run and the qrels without the ids that the queries or
    the corpus lack (``on_missing``). ``encoder`` is a model or a function that loads it (called after
    the files are read and checked, so a bad file is reported before a model is loaded)."""
    all_queries = read_queries(queries_path)
    if cfg.get("index"):
        index, table = DenseIndex.load(cfg.index), None
        docids = set(index.docids)
    else:
        table = read_corpus(corpus)
        docids = set(table["docid"])
    qrels = _known_qrels(qrels, qrels_path, all_queries, queries_path, docids, corpus or cfg.index, cfg.get("on_missing", "warn"))
    queries = {q: t for q, t in all_queries.items() if q in qrels}
    encoder = encoder() if callable(encoder) and not hasattr(encoder, "encode_queries") else encoder
    if table is not None:
        index = build_index(encoder, table, batch_size=cfg.batch_size, bf16=cfg.bf16)
    return search_queries(encoder, index, queries, k=cfg.k, batch_size=cfg.batch_size, bf16=cfg.bf16), qrels


def _several(cfg: DictConfig, out: Path, folders: list[str], measures: list[str]) -> dict[str, float]:
    """A model on several BEIR folders: one row each, and their mean."""
    if not cfg.get("model"):
        raise ConfigError("beir=[...]: expected model=... to evaluate on each folder")
    encoder = encoder_from_config(cfg)
    results: dict[str, dict[str, float]] = {}
    for folder in folders:
        files = beir_folder(folder, cfg.get("beir_split") or "test")
        name = Path(folder).expanduser().resolve().name
        if name in results:
            raise ConfigError(f"beir={folders}: two folders are named {name!r}; expected distinct folder names")
        run, qrels = _retrieve(cfg, encoder, files["corpus"], files["queries"], read_qrels(files["qrels"]), files["qrels"])
        write_run(run, out / f"{name}.run", tag="dr")
        results[name] = evaluate_run(run, qrels, measures)
    rows = summary_rows(results)
    metrics = {f"{name}/{m}": v for name, values in rows.items() for m, v in values.items()}
    write_metrics(metrics, out / "metrics.json")
    print(format_table(rows, title=f"{cfg.model} on {len(folders)} BEIR folders"))
    print(f"metrics: {out / 'metrics.json'}")
    return metrics


def run(cfg: DictConfig, out: Path) -> dict[str, float]:
    """Score a run file, or a model (encode, search, score), against qrels; write metrics.json."""
    if cfg.get("preset") and cfg.preset not in PRESETS:
        raise ConfigError(f"preset={cfg.preset}: expected one of {', '.join(sorted(PRESETS))}")
    preset = dict(PRESETS[cfg.preset]) if cfg.get("preset") else {}
    measures = list(cfg.measures) if cfg.get("measures") else list(preset.get("measures", ["nDCG@10", "R@100"]))
    beir = cfg.get("beir")
    if isinstance(beir, (list, ListConfig)) and len(beir) != 1:
        return _several(cfg, out, [str(b) for b in beir], measures)
    if beir:
        files = beir_folder(str(beir[0] if isinstance(beir, (list, ListConfig)) else beir), cfg.get("beir_split") or "test")
        preset = {**preset, **files}
    split = read_split(cfg.split) if cfg.get("split") else None
    if split is not None:
        # dr-split writes the union of its two test sets next to them
        preset = {**preset, "queries": str(Path(cfg.split) / "test.queries.tsv"), "qrels": str(Path(cfg.split) / "test.qrels.trec")}
    qrels_path = cfg.get("qrels") or preset.get("qrels")
    if not qrels_path:
        raise ConfigError("qrels=null: expected a qrels file (qrels=...), a BEIR folder (beir=DIR) or a preset (preset=dl19|dl20|msmarco-dev|scifact)")
    qrels = read_qrels(qrels_path)
    if cfg.get("run_file"):
        run = read_run(cfg.run_file)
        label = Path(cfg.run_file).name
    else:
        queries_path = cfg.get("queries") or preset.get("queries")
        corpus = cfg.get("corpus") or preset.get("corpus")
        if not (cfg.get("model") and queries_path and (corpus or cfg.get("index"))):
            raise ConfigError("run_file=null: expected a run file (run_file=...), or model=... with queries=... and corpus=... (or index=...)")
        run, qrels = _retrieve(cfg, lambda: encoder_from_config(cfg), corpus, queries_path, qrels, qrels_path)
        write_run(run, out / "run.trec", tag="dr")
        label = str(cfg.model)
    metrics = evaluate_run(run, qrels, measures)
    table: dict = {label: metrics}
    if split is not None:
        extra = split_metrics(run, qrels, split, measures)
        metrics = {**metrics, **extra}
        table = {label: {**table[label], "queries": sum(q in qrels for q in run)}, **split_rows(extra, measures)}
    write_metrics(metrics, out / "metrics.json")
    print(format_table(table, title=f"qrels: {resolve_path(qrels_path)}"))
    if split is not None and split.counts()["train_removed"]:
        print(f"note: {cfg.split} resampled the training queries; its extrapolation figures hold for a model trained on "
              f"{Path(cfg.split) / 'train.qrels.trec'}, not on the full training set")
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
