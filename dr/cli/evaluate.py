"""``dr-eval``: score a run file, or a model (encode, search, score), against qrels; write metrics.json.

Also: ``beir=DIR`` (a BEIR folder) or ``beir=[DIR,...]`` (a summary table over several),
``preset=dl19|dl19-pool|dl20|msmarco-dev|scifact``, and ``split=DIR`` (a ``dr-split`` folder: the measures on
its interpolation and extrapolation test queries, side by side, with the gap).

``retriever=bm25`` ranks the corpus with BM25 (no model); ``retriever=fusion`` with BM25 + the model's
dense scores, each min-max normalised per query over the union of both top-``fusion.depth`` lists
(:func:`dr.teachers.fusion_search`, the fusion teacher as a retriever). ``embeddings_cache=FILE.npy``
keeps the model's corpus embeddings for reuse by later commands (``dr-mine`` reads the same file);
with ``retriever=fusion`` and ``index=DIR`` (a flat index) the dense half reads the index's vectors.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, ListConfig

from dr.cli import encoder_from_config, hydra_command
from dr.config import ConfigError
from dr.data import (
    beir_folder,
    check_ids,
    passage_texts,
    read_corpus,
    read_qrels,
    read_queries,
    read_run,
    resolve_path,
    write_run,
)
from dr.evaluation import PRESETS, evaluate_run, format_table, write_metrics
from dr.retrieval import DenseIndex, build_index, search_queries
from dr.evaluation.benchmarks import split_metrics, split_rows, summary_rows
from dr.evaluation.splits import read_split


def _retrieve(
    cfg: DictConfig, encoder, corpus: str | None, queries_path: str, qrels: dict, qrels_path: str
) -> tuple[dict, dict]:
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
    qrels = _known_qrels(
        qrels, qrels_path, all_queries, queries_path, docids, corpus or cfg.index, cfg.get("on_missing", "warn")
    )
    queries = {q: t for q, t in all_queries.items() if q in qrels}
    retriever = cfg.get("retriever") or "dense"
    if retriever == "bm25":
        return _bm25(table, corpus).search_run(list(queries), list(queries.values()), cfg.k), qrels
    encoder = encoder() if callable(encoder) and not hasattr(encoder, "encode_queries") else encoder
    if retriever == "fusion":
        return _fusion(cfg, encoder, table, corpus, index if table is None else None, queries), qrels
    if table is not None and cfg.get("embeddings_cache"):
        index = DenseIndex.build(np.asarray(_embeddings(cfg, encoder, table, corpus)), list(table["docid"]))
    elif table is not None:
        index = build_index(encoder, table, batch_size=cfg.batch_size, bf16=cfg.bf16)
    return search_queries(encoder, index, queries, k=cfg.k, batch_size=cfg.batch_size, bf16=cfg.bf16), qrels


def _bm25(table, corpus: str | None):
    if table is None:
        raise ConfigError(
            f"retriever=bm25|fusion with index={corpus}: expected corpus=... (BM25 needs the passages' text)"
        )
    from dr.retrieval import BM25

    return BM25(passage_texts(table), list(table["docid"]))


def _embeddings(cfg: DictConfig, encoder, table, corpus: str) -> np.ndarray:
    """The corpus embeddings, reused from ``embeddings_cache`` while the model and corpus match."""
    from dr.miners.candidates import corpus_embeddings

    return corpus_embeddings(encoder, table, corpus, cfg.get("embeddings_cache"), cfg.batch_size, cfg.bf16)


def _fusion(cfg: DictConfig, encoder, table, corpus: str, index: DenseIndex | None, queries: dict[str, str]) -> dict:
    """BM25 + dense fusion over the corpus (:func:`dr.teachers.fusion_search`)."""
    from dr.teachers import fusion_search

    if index is not None:  # the vectors of a saved flat index, in the corpus's row order
        table = read_corpus(cfg.corpus) if cfg.get("corpus") else None
        bm25 = _bm25(table, cfg.index)
        if index.kind != "flat" or sorted(index.docids) != sorted(bm25.docids):
            raise ConfigError(
                f"index={cfg.index}: expected a flat index of every passage of corpus={cfg.corpus} for retriever=fusion"
            )
        row = {d: i for i, d in enumerate(index.docids)}
        embeddings = index.index.reconstruct_n(0, len(row))[[row[d] for d in bm25.docids]]
    else:
        bm25 = _bm25(table, corpus)
        embeddings = _embeddings(cfg, encoder, table, corpus)
    qids = list(queries)
    texts = [queries[q] for q in qids]
    q_emb = encoder.encode_queries(texts, batch_size=cfg.batch_size, bf16=cfg.bf16, show_progress=False)
    f = cfg.fusion
    return fusion_search(
        bm25,
        embeddings,
        q_emb,
        qids,
        texts,
        depth=int(f.depth),
        k=cfg.k,
        bm25_weight=float(f.bm25_weight),
        dense_weight=float(f.dense_weight),
        normalization=f.normalization,
    )


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
        run, qrels = _retrieve(
            cfg, encoder, files["corpus"], files["queries"], read_qrels(files["qrels"]), files["qrels"]
        )
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
    if (cfg.get("retriever") or "dense") not in ("dense", "bm25", "fusion"):
        raise ConfigError(f"retriever={cfg.retriever}: expected dense, bm25 or fusion")
    preset = dict(PRESETS[cfg.preset]) if cfg.get("preset") else {}
    measures = list(cfg.measures) if cfg.get("measures") else list(preset.get("measures", ["nDCG@10", "R@100"]))
    beir = cfg.get("beir")
    if isinstance(beir, (list, ListConfig)) and len(beir) != 1:
        return _several(cfg, out, [str(b) for b in beir], measures)
    if beir:
        files = beir_folder(
            str(beir[0] if isinstance(beir, (list, ListConfig)) else beir), cfg.get("beir_split") or "test"
        )
        preset = {**preset, **files}
    split = read_split(cfg.split) if cfg.get("split") else None
    if split is not None:
        # dr-split writes the union of its two test sets next to them
        preset = {
            **preset,
            "queries": str(Path(cfg.split) / "test.queries.tsv"),
            "qrels": str(Path(cfg.split) / "test.qrels.trec"),
        }
    qrels_path = cfg.get("qrels") or preset.get("qrels")
    if not qrels_path:
        raise ConfigError(
            "qrels=null: expected a qrels file (qrels=...), a BEIR folder (beir=DIR) or a preset "
            "(preset=dl19|dl19-pool|dl20|msmarco-dev|scifact)"
        )
    qrels = read_qrels(qrels_path)
    if cfg.get("run_file"):
        run = read_run(cfg.run_file)
        label = Path(cfg.run_file).name
    else:
        queries_path = cfg.get("queries") or preset.get("queries")
        corpus = cfg.get("corpus") or preset.get("corpus")
        needs_model = (cfg.get("retriever") or "dense") != "bm25"
        if not ((cfg.get("model") or not needs_model) and queries_path and (corpus or cfg.get("index"))):
            raise ConfigError(
                "run_file=null: expected a run file (run_file=...), or model=... with queries=... and corpus=... (or "
                "index=...)"
            )
        run, qrels = _retrieve(cfg, lambda: encoder_from_config(cfg), corpus, queries_path, qrels, qrels_path)
        write_run(run, out / "run.trec", tag="dr")
        label = str(cfg.model) if needs_model else "BM25"
    metrics = evaluate_run(run, qrels, measures)
    table: dict = {label: metrics}
    if split is not None:
        extra = split_metrics(run, qrels, split, measures)
        metrics = {**metrics, **extra}
        table = {label: {**table[label], "queries": sum(q in qrels for q in run)}, **split_rows(extra, measures)}
    write_metrics(metrics, out / "metrics.json")
    print(format_table(table, title=f"qrels: {resolve_path(qrels_path)}"))
    if split is not None and split.counts()["train_removed"]:
        print(
            f"note: {cfg.split} resampled the training queries; its extrapolation figures hold for a model trained on "
            f"{Path(cfg.split) / 'train.qrels.trec'}, not on the full training set"
        )
    print(f"metrics: {out / 'metrics.json'}")
    return metrics


def _known_qrels(
    qrels: dict, source: str, queries: dict, queries_source: str, docids: set, corpus: str, on_missing: str
) -> dict:
    """``qrels`` without the qids that ``queries`` lacks and the judged docids that the corpus lacks
    (counted and dropped, or a DataError with ``on_missing=error``)."""
    check = functools.partial(check_ids, source=source, on_missing=on_missing, key="on_missing")
    bad_q = check(qrels, queries, what="qids", where=queries_source)
    bad_d = check((d for j in qrels.values() for d in j), docids, what="judged docids", where=corpus)
    return {q: {d: g for d, g in j.items() if d not in bad_d} for q, j in qrels.items() if q not in bad_q}


main = hydra_command("evaluate", run)
