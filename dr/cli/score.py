"""``dr-score``: score (query, positive, negative) pairs with a teacher into a teacher-score file."""

from __future__ import annotations

import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from dr.cli import hydra_command
from dr.config import ConfigError
from dr.data import DataError, passage_texts, read_corpus, read_positives, read_qrels, read_queries
from dr.teachers.scoring import inputs_fingerprint, annotate_negatives, pairs_from_negatives, pairs_from_triples, score_to_file


def run(cfg: DictConfig, out: Path) -> Path:
    """The ``dr-score`` app: returns the path of the teacher-score file."""
    if bool(cfg.get("negatives")) == bool(cfg.get("triples")):
        raise ConfigError(f"negatives={cfg.get('negatives')}, triples={cfg.get('triples')}: expected exactly one input, "
                          "negatives=FILE (JSONL) or triples=FILE (TSV qid pos_pid neg_pid)")
    if cfg.get("negatives_output") and not cfg.negatives:
        raise ConfigError(f"negatives_output={cfg.negatives_output}: expected a negatives file as input (negatives=FILE)")
    source = cfg.negatives or cfg.triples
    if cfg.negatives:
        positives = None
        if cfg.get("qrels"):
            positives = read_positives(read_qrels(cfg.qrels), cfg.min_relevance)
        groups = pairs_from_negatives(cfg.negatives, cfg.get("max_negatives"), positives)
    else:
        groups = pairs_from_triples(cfg.triples)
    queries = read_queries(cfg.queries)
    corpus = read_corpus(cfg.corpus)
    row_of = {d: i for i, d in enumerate(corpus["docid"])}
    missing_q = [g.qid for g in groups if g.qid not in queries]
    if missing_q:
        raise DataError(source, None, f"{len(missing_q)} qids are not in {cfg.queries}, e.g. {missing_q[:3]}")
    missing_d = sorted({d for g in groups for d in g.docids if d not in row_of})
    if missing_d:
        raise DataError(source, None, f"{len(missing_d)} docids are not in {cfg.corpus}, e.g. {missing_d[:3]}")

    extra = {"corpus": cfg.corpus} if "corpus" in cfg.teacher else {}
    teacher = hydra.utils.instantiate(cfg.teacher, **extra)
    target = Path(cfg.output) if cfg.get("output") else out / "teacher.tsv"
    t0 = time.perf_counter()
    needed = list(dict.fromkeys(d for g in groups for d in g.docids))
    texts = dict(zip(needed, passage_texts(corpus, [row_of[d] for d in needed])))
    n = score_to_file(
        teacher, groups, queries.__getitem__, texts.__getitem__, target,
        chunk_size=cfg.chunk_size, fingerprint=inputs_fingerprint(cfg, groups), show_progress=cfg.show_progress,
    )
    print(f"wrote {n} scored pairs for {len(groups)} queries to {target} ({time.perf_counter() - t0:.0f} s)")
    if cfg.get("negatives_output"):
        annotate_negatives(cfg.negatives, target, cfg.negatives_output)
        print(f"wrote the negatives file with teacher scores to {cfg.negatives_output}")
    return target


main = hydra_command("score", run)
