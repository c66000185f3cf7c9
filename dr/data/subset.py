"""Small subsets of a dataset: a few queries with their judged passages plus random others.

For toy runs that exercise the whole pipeline in seconds (tests, benchmark smoke checks), as
splade's ``toy`` configs do. The subset is a real dataset on disk, in the usual formats.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from dr.data.corpus import bundled, read_corpus, read_queries
from dr.data.io import atomic_write
from dr.data.trec import read_qrels


def write_subset(
    out: str | os.PathLike,
    n_train: int,
    n_test: int = 20,
    n_extra: int = 300,
    seed: int = 0,
    files: dict[str, str] | None = None,
) -> dict[str, str]:
    """Write the first ``n_train`` / ``n_test`` judged queries of each split, every passage they
    judge, and ``n_extra`` random other passages (seeded), to ``out``; return the paths.

    ``files`` names ``corpus``, ``train_queries``, ``train_qrels``, ``test_queries`` and
    ``test_qrels`` (default: the bundled SciFact). Corpus order is kept; the corpus is written as
    BEIR JSONL, queries as TSV and qrels as TREC.
    """
    files = files or bundled("scifact")
    out = Path(out)
    rng = np.random.default_rng(seed)
    splits = {}
    for split, n in (("train", n_train), ("test", n_test)):
        queries, qrels = read_queries(files[f"{split}_queries"]), read_qrels(files[f"{split}_qrels"])
        ids = sorted(q for q in queries if q in qrels)[:n]
        splits[split] = (ids, queries, qrels)
    keep = {d for ids, _, qrels in splits.values() for q in ids for d in qrels[q]}
    corpus = read_corpus(files["corpus"])
    others = [d for d in corpus["docid"] if d not in keep]
    keep |= set(rng.choice(others, size=min(n_extra, len(others)), replace=False).tolist())
    paths = {"corpus": str(out / "corpus.jsonl")}
    with atomic_write(out / "corpus.jsonl") as f:
        for row in corpus:
            if row["docid"] in keep:
                f.write(json.dumps({"_id": row["docid"], "title": row["title"], "text": row["text"]}) + "\n")
    for split, (ids, queries, qrels) in splits.items():
        with atomic_write(out / f"queries.{split}.tsv") as f:
            f.writelines(f"{q}\t{queries[q]}\n" for q in ids)
        with atomic_write(out / f"qrels.{split}.trec") as f:
            f.writelines(f"{q} 0 {d} {g}\n" for q in ids for d, g in qrels[q].items())
        paths[f"{split}_queries"] = str(out / f"queries.{split}.tsv")
        paths[f"{split}_qrels"] = str(out / f"qrels.{split}.trec")
    return paths
