"""Interpolation and extrapolation test sets, after Zhan et al., "Evaluating Interpolation and
Extrapolation Performance of Neural Retrieval Models" (CIKM 2022).

The paper embeds training and test queries with a dense retriever's query encoder, measures query
similarity by cosine, and *resamples* the data so that some test queries are close to the training
queries (interpolation) and others are far from all of them (extrapolation). It also counts the
test queries whose relevant passages are training positives (label overlap, their Table 2).
Its ReSTrain protocol removes, for each test query, its most similar training queries from the
training set; ReSTTest clusters all queries into K = 5 buckets and holds one bucket out.

What this module does (a ReSTrain variant with an explicit threshold ``tau``):

1. Encode both query sets (L2-normalised: cosine) and find each test query's nearest training
   queries with a FAISS inner-product index.
2. A training query q is *close* to a test query t when cos(t, q) >= tau, or when q and t share a
   relevant document (grade >= ``min_relevance``).
3. Resampling (optional, ``extrapolation_fraction > 0``): test queries that have close training
   queries are visited in a seeded random order; a visited query's close training queries are
   removed from the training set when there are at most ``max_removed_per_query`` of them and the
   total stays within ``max_removed_fraction`` of the training queries, until
   ``extrapolation_fraction`` of the test queries have no close training query left.
4. Against the (resampled) training set: **interpolation** = test queries with a close training
   query (nearest one at or above tau, or a shared relevant document); **extrapolation** = the
   others (below tau for every training query, no shared relevant document). Every test query is
   one or the other, so the two sets partition the test set.

Where this differs from the paper: one similarity threshold instead of a number of removed
neighbours per test query (ReSTrain) or k-means buckets (ReSTTest); the shared-document rule is
part of the definition (the paper reports label overlap but resamples by similarity only); the
test queries to move to extrapolation are drawn at random (seeded) instead of taking every test
query of TREC-DL. Without resampling (``extrapolation_fraction=0``) the split only labels the
test queries against the full training set, which is what a model trained on the full set needs.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from dr.data.corpus import read_queries
from dr.data.io import DataError, atomic_write, write_json
from dr.data.trec import read_qrels

SPLIT_FILE = "split.json"
LABELS = ("interpolation", "extrapolation")


@dataclass
class QuerySplit:
    """The result of :func:`resample`: labels of the test queries and the training queries kept."""

    threshold: float
    labels: dict[str, str]  # test qid -> "interpolation" | "extrapolation"
    train_kept: list[str]  # training qids of the resampled training set
    removed: dict[str, list[str]]  # test qid moved to extrapolation -> training qids it removed
    max_sim_full: dict[str, float]  # test qid -> max cosine to the full training set
    max_sim: dict[str, float]  # test qid -> max cosine to the resampled training set
    nearest: dict[str, str]  # test qid -> nearest training qid of the resampled set
    shares_doc: dict[str, bool]  # test qid -> shares a relevant doc with a kept training query
    shares_doc_full: dict[str, bool]
    params: dict = field(default_factory=dict)

    def qids(self, label: str) -> list[str]:
        return sorted(q for q, lab in self.labels.items() if lab == label)

    def counts(self) -> dict[str, int]:
        n_train = len(self.train_kept) + sum(len(r) for r in self.removed.values())
        return {
            "test": len(self.labels),
            "interpolation": len(self.qids("interpolation")),
            "extrapolation": len(self.qids("extrapolation")),
            "interpolation_by_similarity": sum(self.max_sim[q] >= self.threshold for q in self.qids("interpolation")),
            "interpolation_by_shared_document": sum(self.shares_doc[q] for q in self.qids("interpolation")),
            "extrapolation_before_resampling": sum(
                not self.shares_doc_full[q] and self.max_sim_full[q] < self.threshold for q in self.labels
            ),
            "test_sharing_a_document_with_train": sum(self.shares_doc_full.values()),
            "train": n_train,
            "train_kept": len(self.train_kept),
            "train_removed": n_train - len(self.train_kept),
        }


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def close_training_queries(train_emb: np.ndarray, test_emb: np.ndarray, threshold: float) -> list[np.ndarray]:
    """For each test row, the training rows with cosine >= ``threshold`` (FAISS range search)."""
    index = faiss.IndexFlatIP(train_emb.shape[1])
    index.add(_normalise(train_emb))
    # range_search keeps inner products strictly above the radius; nextafter makes it ">=".
    lims, _, ids = index.range_search(_normalise(test_emb), float(np.nextafter(np.float32(threshold), np.float32(-1))))
    return [np.sort(ids[lims[i] : lims[i + 1]]) for i in range(len(test_emb))]


def nearest_training_query(
    train_emb: np.ndarray, test_emb: np.ndarray, keep: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(max cosine, row) of each test row's nearest training row among ``keep`` (FAISS, k=1)."""
    rows = np.flatnonzero(keep)
    if not len(rows):
        return np.full(len(test_emb), -np.inf, np.float32), np.full(len(test_emb), -1)
    index = faiss.IndexFlatIP(train_emb.shape[1])
    index.add(_normalise(train_emb)[rows])
    sims, ids = index.search(_normalise(test_emb), 1)
    return sims[:, 0], rows[ids[:, 0]]


def resample(
    train_qids: list[str],
    train_emb: np.ndarray,
    train_positives: dict[str, set[str]],
    test_qids: list[str],
    test_emb: np.ndarray,
    test_positives: dict[str, set[str]],
    threshold: float = 0.7,
    extrapolation_fraction: float = 0.5,
    max_removed_fraction: float = 0.2,
    max_removed_per_query: int = 10,
    seed: int = 0,
) -> QuerySplit:
    """Label the test queries interpolation/extrapolation and resample the training queries
    (module docstring, steps 1-4). Deterministic for a seed."""
    n_train = len(train_qids)
    by_doc: dict[str, set[int]] = {}
    for i, q in enumerate(train_qids):
        for d in train_positives.get(q, ()):
            by_doc.setdefault(d, set()).add(i)
    similar = close_training_queries(train_emb, test_emb, threshold)
    close: list[set[int]] = []
    for t, q in enumerate(test_qids):
        sharing = set().union(*(by_doc.get(d, set()) for d in test_positives.get(q, ())))
        close.append(set(similar[t].tolist()) | sharing)
    keep = np.ones(n_train, bool)
    removed: dict[str, list[str]] = {}
    target = int(np.ceil(extrapolation_fraction * len(test_qids)))
    budget = int(max_removed_fraction * n_train)

    def far(t: int) -> bool:
        return not any(keep[i] for i in close[t])

    n_far = sum(far(t) for t in range(len(test_qids)))
    rng = np.random.default_rng(seed)
    for t in rng.permutation(len(test_qids)):
        if n_far >= target:
            break
        to_remove = [i for i in sorted(close[t]) if keep[i]]
        if not to_remove or len(to_remove) > max_removed_per_query or (n_train - keep.sum()) + len(to_remove) > budget:
            continue
        keep[to_remove] = False
        removed[test_qids[t]] = [train_qids[i] for i in to_remove]
        n_far = sum(far(u) for u in range(len(test_qids)))

    full_sim, _ = nearest_training_query(train_emb, test_emb, np.ones(n_train, bool))
    sim, row = nearest_training_query(train_emb, test_emb, keep)
    kept_docs = {d for i in np.flatnonzero(keep) for d in train_positives.get(train_qids[i], ())}
    all_docs = set(by_doc)
    labels, shares, shares_full = {}, {}, {}
    for t, q in enumerate(test_qids):
        docs = set(test_positives.get(q, ()))
        shares[q], shares_full[q] = bool(docs & kept_docs), bool(docs & all_docs)
        labels[q] = "extrapolation" if far(t) else "interpolation"
    params = {
        "threshold": threshold,
        "extrapolation_fraction": extrapolation_fraction,
        "max_removed_fraction": max_removed_fraction,
        "max_removed_per_query": max_removed_per_query,
        "seed": seed,
    }
    return QuerySplit(
        threshold=float(threshold),
        labels=labels,
        train_kept=[train_qids[i] for i in np.flatnonzero(keep)],
        removed=removed,
        max_sim_full={q: float(s) for q, s in zip(test_qids, full_sim)},
        max_sim={q: float(s) for q, s in zip(test_qids, sim)},
        nearest={q: (train_qids[r] if r >= 0 else "") for q, r in zip(test_qids, row)},
        shares_doc=shares,
        shares_doc_full=shares_full,
        params=params,
    )


def positives(qrels: dict[str, dict[str, int]], min_relevance: int = 1) -> dict[str, set[str]]:
    return {q: {d for d, g in judged.items() if g >= min_relevance} for q, judged in qrels.items()}


def split_queries(
    encoder,
    train_queries: str,
    train_qrels: str,
    test_queries: str,
    test_qrels: str,
    min_relevance: int = 1,
    batch_size: int = 64,
    bf16: bool = False,
    show_progress: bool = True,
    **options,
) -> QuerySplit:
    """Read the files, encode the judged queries with ``encoder`` and :func:`resample`."""
    sides = {}
    for name, qpath, rpath in (("train", train_queries, train_qrels), ("test", test_queries, test_qrels)):
        queries, qrels = read_queries(qpath), read_qrels(rpath)
        pos = positives(qrels, min_relevance)
        qids = [q for q in queries if pos.get(q)]
        if not qids:
            raise DataError(
                rpath, None, f"expected {name} queries with a relevant document (grade >= {min_relevance}), got none"
            )
        emb = encoder.encode_queries(
            [queries[q] for q in qids], batch_size=batch_size, bf16=bf16, show_progress=show_progress
        )
        sides[name] = (qids, emb, pos)
    return resample(*sides["train"], *sides["test"], **options)


def split_to_json(split: QuerySplit) -> dict:
    return {
        "threshold": split.threshold,
        "params": split.params,
        "counts": split.counts(),
        "labels": split.labels,
        "train_kept": split.train_kept,
        "removed": split.removed,
        "max_sim_full": split.max_sim_full,
        "max_sim": split.max_sim,
        "nearest": split.nearest,
        "shares_doc": split.shares_doc,
        "shares_doc_full": split.shares_doc_full,
    }


def split_from_json(obj: dict) -> QuerySplit:
    return QuerySplit(
        threshold=float(obj["threshold"]),
        labels=obj["labels"],
        train_kept=obj["train_kept"],
        removed=obj["removed"],
        max_sim_full=obj["max_sim_full"],
        max_sim=obj["max_sim"],
        nearest=obj["nearest"],
        shares_doc=obj["shares_doc"],
        shares_doc_full=obj["shares_doc_full"],
        params=obj.get("params", {}),
    )


def write_split(
    split: QuerySplit, out_dir: str | os.PathLike, files: dict[str, str], extra: dict | None = None
) -> dict[str, str]:
    """Write the split as ordinary files into ``out_dir``; returns their paths.

    ``interpolation.queries.tsv`` / ``.qrels.trec``, ``extrapolation.*`` (test queries and qrels),
    ``test.*`` (both sets together),
    ``train.queries.tsv`` / ``train.qrels.trec`` (the resampled training set), ``test_queries.tsv``
    (per test query: label, max cosine to the resampled and the full training set, nearest training
    query, shared document) and ``split.json`` (counts, parameters, the input files, everything above).
    """
    out = Path(out_dir)
    paths: dict[str, str] = {}
    for side, ids in (
        ("interpolation", split.qids("interpolation")),
        ("extrapolation", split.qids("extrapolation")),
        ("test", sorted(split.labels)),
        ("train", split.train_kept),
    ):
        kind = "train" if side == "train" else "test"
        queries, qrels = read_queries(files[f"{kind}_queries"]), read_qrels(files[f"{kind}_qrels"])
        with atomic_write(out / f"{side}.queries.tsv") as f:
            f.writelines(f"{q}\t{queries[q]}\n" for q in ids)
        with atomic_write(out / f"{side}.qrels.trec") as f:
            f.writelines(f"{q} 0 {d} {g}\n" for q in ids for d, g in qrels.get(q, {}).items())
        paths[f"{side}_queries"], paths[f"{side}_qrels"] = (
            str(out / f"{side}.queries.tsv"),
            str(out / f"{side}.qrels.trec"),
        )
    with atomic_write(out / "test_queries.tsv") as f:
        f.write("qid\tlabel\tmax_sim\tmax_sim_full_train\tnearest_train_qid\tshares_relevant_doc\n")
        for q in sorted(split.labels):
            f.write(
                f"{q}\t{split.labels[q]}\t{split.max_sim[q]:.6f}\t{split.max_sim_full[q]:.6f}\t{split.nearest[q]}\t{int(split.shares_doc[q])}\n"
            )
    write_json(out / SPLIT_FILE, {**split_to_json(split), "files": dict(files), **(extra or {})})
    return paths


def read_split(path: str | os.PathLike) -> QuerySplit:
    """The :class:`QuerySplit` of a ``dr-split`` folder (its ``split.json``)."""
    file = Path(path) / SPLIT_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such file (expected a folder written by dr-split)")
    try:
        return split_from_json(json.loads(file.read_text()))
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(file, None, f"expected the split.json of dr-split, got {type(e).__name__}: {e}") from None


def cached_split(
    encoder_name: str, files: dict[str, str], cache_dir: str | None, load_encoder, **options
) -> QuerySplit:
    """:func:`split_queries` with the result kept in ``cache_dir`` (``split-<key>.json``), keyed by the
    encoder's name, the four files (path, size, modification time) and the options; the encoder
    is loaded (``load_encoder()``) only on a miss."""
    from dr.retrieval.cache import file_stamp

    key_parts = {
        "encoder": encoder_name,
        "files": {k: file_stamp(v) for k, v in sorted(files.items())},
        "options": options,
    }
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True, default=str).encode()).hexdigest()[:32]
    path = Path(cache_dir).expanduser() / f"split-{key}.json" if cache_dir else None
    if path is not None and path.is_file():
        try:
            return split_from_json(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError):
            pass  # a damaged entry is recomputed
    split = split_queries(load_encoder(), **files, **options)
    if path is not None:
        write_json(path, {**split_to_json(split), "key": key_parts})
    return split
