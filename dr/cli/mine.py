"""``dr-mine``: retrieve candidates for the training queries, apply a miner, write a negatives file
(or, with ``output_format=jsonl|parquet|hf``, the texts for sentence-transformers or FlagEmbedding).

``score_scale`` (``auto``: 20 for a cosine encoder, 1 for dot or a run file) turns similarities into
the logits the SimANS kernels are tuned on; ``teacher=cross_encoder|fusion`` scores every candidate
and positive with a teacher before mining (``miner=denoise`` needs it).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

from dr.cli import encoder_from_config, hydra_command
from dr.config import ConfigError
from dr.data import (
    check_ids,
    passage_texts,
    read_corpus,
    read_positives,
    read_qrels,
    read_queries,
    read_run,
    write_json,
    write_negatives,
)
from dr.data.hf_write import text_rows, write_text_dataset
from dr.plots import plot_score_histogram
from dr.retrieval import DenseIndex
from dr.miners.candidates import (
    corpus_embeddings,
    dense_candidates,
    instantiate_miner,
    mine_queries,
    resolve_score_scale,
    run_candidates,
    score_lists,
    student_score_scale,
    with_teacher_scores,
)


def run(cfg: DictConfig, out: Path) -> dict:
    """Mine negatives as configured; returns the summary statistics (also written next to the file)."""
    rng = np.random.default_rng(cfg.seed)
    queries = read_queries(cfg.queries)
    qrels = read_qrels(cfg.qrels)
    corpus = read_corpus(cfg.corpus)
    row_of = {d: i for i, d in enumerate(corpus["docid"])}
    check = functools.partial(check_ids, source=cfg.qrels, on_missing=cfg.get("on_missing", "warn"), key="on_missing")
    check(qrels, queries, what="qids", where=cfg.queries)  # queries without text are never mined
    unknown = check((d for j in qrels.values() for d in j), row_of, what="judged docids", where=cfg.corpus)
    positives = read_positives(qrels, cfg.min_relevance, known=row_of if unknown else None)
    qids = [q for q in queries if positives.get(q)]

    if cfg.get("run_file"):
        candidates = run_candidates(read_run(cfg.run_file), positives)
        score_scale = resolve_score_scale(cfg.get("score_scale", "auto"), 1.0)  # auto: raw run scores (1)
    else:
        encoder = encoder_from_config(cfg, backend=cfg.get("backend", "torch"))
        if cfg.get("passage_index"):  # stage 1's export already holds the corpus: only the queries are encoded
            index = DenseIndex.load(cfg.passage_index, use_gpu=False)
            try:
                embeddings = index.vectors_of(
                    list(corpus["docid"]), f"passage_index={cfg.passage_index} ({cfg.corpus})"
                )
            except ValueError as e:
                raise ConfigError(str(e)) from None
        else:
            embeddings = corpus_embeddings(
                encoder, corpus, cfg.corpus, cfg.get("embeddings_cache"), cfg.batch_size, cfg.bf16
            )
            index = DenseIndex.build(np.asarray(embeddings), list(corpus["docid"]), kind=cfg.index_kind)
        candidates = dense_candidates(
            encoder, index, embeddings, row_of, queries, positives, cfg.top_k, cfg.batch_size, cfg.bf16
        )
        score_scale = resolve_score_scale(cfg.get("score_scale", "auto"), student_score_scale(None, encoder))
    miner = instantiate_miner(cfg.miner, corpus["docid"], score_scale=score_scale)
    if cfg.get("teacher"):
        extra = {"corpus": cfg.corpus} if "corpus" in cfg.teacher else {}
        teacher = hydra.utils.instantiate(cfg.teacher, **extra)
        miner.bind_teacher(teacher)  # e.g. RocketQA's threshold is a probability: the teacher maps its scores onto it
        candidates = with_teacher_scores(
            candidates, teacher, queries, lambda d: passage_texts(corpus, [row_of[d]])[0], positives
        )

    records, stats = mine_queries(qids, positives, candidates, miner, rng, cfg.chunk_size)
    if cfg.get("teacher"):
        stats["teacher"] = cfg.teacher._target_.rsplit(".", 1)[-1]
    target = write_output(cfg, out, records, queries, lambda d: passage_texts(corpus, [row_of[d]])[0], stats)
    write_json(target.with_name(target.name + ".stats.json"), stats)
    pos_scores_all, neg_scores_all = score_lists(records)
    if pos_scores_all or neg_scores_all:
        plot_score_histogram(
            pos_scores_all,
            neg_scores_all,
            target.with_name(target.name + ".scores.png"),
            title=f"{len(records)} queries, miner {cfg.miner._target_.rsplit('.', 1)[-1]}",
        )
    print(json.dumps(stats, indent=2))
    print(f"wrote {sum(len(r.negatives) for r in records)} negatives for {len(records)} queries to {target}")
    return stats


def write_output(cfg: DictConfig, out: Path, records, queries: dict[str, str], passage_text, stats: dict) -> Path:
    """The negatives file (``output_format=negatives``), or the texts for sentence-transformers or
    FlagEmbedding as JSONL, parquet or a ``datasets`` folder (:mod:`dr.data.hf_write`); its counts go into ``stats``."""
    fmt = cfg.get("output_format", "negatives")
    if fmt == "negatives":
        target = Path(cfg.output) if cfg.get("output") else out / "negatives.jsonl"
        write_negatives(target, records)
        return target
    columns = cfg.get("output_columns", "st")
    suffix = {"jsonl": ".jsonl", "parquet": ".parquet", "hf": ""}[fmt]
    target = Path(cfg.output) if cfg.get("output") else out / f"negatives.{columns}{suffix}"
    rows, counts = text_rows(records, queries.__getitem__, passage_text, columns, cfg.get("output_num_negatives"))
    if not rows:
        raise ConfigError(
            f"output_num_negatives={counts['negatives_per_row']}: no query has that many negatives to write "
            "(output_columns=st has a fixed width); lower it or use output_columns=flagembedding"
        )
    write_text_dataset(target, rows, fmt, columns)
    stats[f"output_{columns}"] = counts
    if counts["queries_left_out"]:
        print(
            f"{counts['queries_left_out']} of {len(records)} queries left out: fewer than "
            f"{counts['negatives_per_row']} negatives (output_columns=st is fixed-width; "
            "output_num_negatives=N lowers it)"
        )
    return target


main = hydra_command("mine", run)
