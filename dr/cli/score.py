"""``dr-score``: score (query, positive, negative) pairs with a teacher into a teacher-score file."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from dr.cli import hydra_command
from dr.config import ConfigError
from dr.data import check_ids, passage_texts, read_corpus, read_positives, read_qrels, read_queries
from dr.teachers.scoring import (
    QueryPairs,
    inputs_fingerprint,
    annotate_negatives,
    pairs_from_negatives,
    pairs_from_triples,
    score_to_file,
)


def run(cfg: DictConfig, out: Path) -> Path:
    """The ``dr-score`` app: returns the path of the teacher-score file."""
    if bool(cfg.get("negatives")) == bool(cfg.get("triples")):
        raise ConfigError(
            f"negatives={cfg.get('negatives')}, triples={cfg.get('triples')}: expected exactly one input, "
            "negatives=FILE (JSONL) or triples=FILE (TSV qid pos_pid neg_pid)"
        )
    if cfg.get("negatives_output") and not cfg.negatives:
        raise ConfigError(
            f"negatives_output={cfg.negatives_output}: expected a negatives file as input (negatives=FILE)"
        )
    source = cfg.negatives or cfg.triples
    queries = read_queries(cfg.queries)
    corpus = read_corpus(cfg.corpus)
    row_of = {d: i for i, d in enumerate(corpus["docid"])}
    check = functools.partial(check_ids, on_missing=cfg.get("on_missing", "warn"), key="on_missing")
    if cfg.negatives:
        positives = None
        if cfg.get("qrels"):  # more positives: those of unknown queries or docids are dropped (or refused)
            qrels = read_qrels(cfg.qrels)
            bad_q = check(qrels, queries, source=cfg.qrels, what="qids", where=cfg.queries)
            bad_d = check(
                (d for j in qrels.values() for d in j), row_of, source=cfg.qrels, what="judged docids", where=cfg.corpus
            )
            positives = read_positives(
                {q: j for q, j in qrels.items() if q not in bad_q}, cfg.min_relevance, known=row_of if bad_d else None
            )
        groups = pairs_from_negatives(cfg.negatives, cfg.get("max_negatives"), positives)
    else:
        groups = pairs_from_triples(cfg.triples)
    bad_q = check((g.qid for g in groups), queries, source=source, what="qids", where=cfg.queries)
    bad_d = check((d for g in groups for d in g.docids), row_of, source=source, what="docids", where=cfg.corpus)
    if bad_q or bad_d:
        groups = [
            QueryPairs(g.qid, [(p, n) for p, n in g.pairs if p not in bad_d and n not in bad_d])
            for g in groups
            if g.qid not in bad_q
        ]
        groups = [g for g in groups if g.pairs]

    extra = {"corpus": cfg.corpus} if "corpus" in cfg.teacher else {}
    teacher = hydra.utils.instantiate(cfg.teacher, **extra)
    target = Path(cfg.output) if cfg.get("output") else out / "teacher.tsv"
    t0 = time.perf_counter()
    needed = list(dict.fromkeys(d for g in groups for d in g.docids))
    texts = dict(zip(needed, passage_texts(corpus, [row_of[d] for d in needed])))
    n = score_to_file(
        teacher,
        groups,
        queries.__getitem__,
        texts.__getitem__,
        target,
        chunk_size=cfg.chunk_size,
        fingerprint=inputs_fingerprint(cfg, groups),
        show_progress=cfg.show_progress,
    )
    print(f"wrote {n} scored pairs for {len(groups)} queries to {target} ({time.perf_counter() - t0:.0f} s)")
    if cfg.get("negatives_output"):
        annotate_negatives(cfg.negatives, target, cfg.negatives_output)
        print(f"wrote the negatives file with teacher scores to {cfg.negatives_output}")
    return target


main = hydra_command("score", run)
