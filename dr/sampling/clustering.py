"""Query clustering for topic-aware batch sampling (TAS, Hofstätter et al., SIGIR 2021, Sec. 3.1).

The training queries are encoded with an already trained dense retriever and clustered with
k-means (FAISS); each query goes to its nearest centroid. The metric is the inner product by
default (spherical k-means: normalised centroids, assignment by the largest inner product), as
the reference: matchmaker's ``query_clusterer.py`` trains a FAISS IVF index built with
``METRIC_INNER_PRODUCT`` (an ``IndexFlatIP`` quantizer), and FAISS trains such an index with
spherical k-means (``ClusteringParameters.spherical``). ``spherical=False`` gives L2 k-means.
:mod:`dr.sampling.tas` then composes each batch from one cluster, so a batch's in-batch negatives
share a topic.

The assignment file is the reference format: one cluster per line, its query ids separated by
whitespace. ``dr-cluster`` writes it (atomically), prints cluster-size statistics and writes
``<file>.stats.json`` and a histogram of cluster sizes ``<file>.sizes.png`` next to it.

Number of clusters: the paper clusters MS MARCO's ~400k training queries into 2,000 clusters,
about 200 queries per cluster. :func:`default_num_clusters` keeps that ratio,
``k = round(n / queries_per_cluster)``, at least 1 and at most ``n // batch_size`` so that an
average cluster can fill a batch. For SciFact's ~770 training queries with batch 32 this gives
4 clusters of ~190 queries, each worth ~6 batches as in the paper (2,000 clusters of ~200
queries, batch 32).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from dr.data.clusters import read_clusters, write_clusters
from dr.data.io import atomic_write

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- clustering
def default_num_clusters(num_queries: int, batch_size: int, queries_per_cluster: int = 200) -> int:
    """The paper's ratio (2,000 clusters for ~400k queries: ~200 per cluster), scaled to ``num_queries``.

    ``k = round(num_queries / queries_per_cluster)``, clamped to ``[1, num_queries // batch_size]``
    so that an average cluster holds at least one (global) batch.
    """
    k = int(round(num_queries / max(1, queries_per_cluster)))
    return max(1, min(k, num_queries // max(1, batch_size)))


def kmeans_assign(
    embeddings: np.ndarray, num_clusters: int, seed: int, spherical: bool = True, niter: int = 20, init: str = "random"
) -> np.ndarray:
    """FAISS k-means on the rows of ``embeddings``; returns each row's nearest centroid (int64).

    ``spherical`` (the default, as the reference) normalises the centroids and assigns each row to
    the centroid of largest inner product; ``False``: L2 k-means and the nearest centroid in L2.
    The reference trains FAISS IVF centroids with the inner-product metric, i.e. spherical Lloyd
    k-means on the raw embeddings from random initial centroids (``init="random"``);
    ``init="kmeans++"`` seeds them by k-means++ (fewer merged topics, O(n·k·d) more work).
    """
    import faiss

    inits = {"random": faiss.ClusteringInitMethod_RANDOM, "kmeans++": faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS}
    if init not in inits:
        raise ValueError(f"init must be one of {sorted(inits)}, got {init!r}")

    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    n = len(x)
    if not 1 <= num_clusters <= n:
        raise ValueError(f"cannot make {num_clusters} clusters of {n} queries; expected 1 <= num_clusters <= {n}")
    if num_clusters == 1:
        return np.zeros(n, dtype=np.int64)
    kmeans = faiss.Kmeans(
        x.shape[1],
        num_clusters,
        niter=niter,
        seed=seed,
        spherical=spherical,
        verbose=False,
        min_points_per_centroid=1,
        max_points_per_centroid=max(256, -(-n // num_clusters)),  # no subsampling
        init_method=inits[init],
    )
    kmeans.train(x)
    _, assignment = kmeans.index.search(x, 1)
    return assignment[:, 0].astype(np.int64)


def group(qids: list[str], assignment: np.ndarray) -> list[list[str]]:
    """Queries grouped by cluster id (ascending), input order kept inside a cluster; empty clusters dropped."""
    clusters: dict[int, list[str]] = {}
    for qid, c in zip(qids, assignment.tolist()):
        clusters.setdefault(c, []).append(qid)
    return [clusters[c] for c in sorted(clusters)]


def cluster_queries(
    encoder,
    qids: list[str],
    texts: list[str],
    num_clusters: int,
    seed: int,
    spherical: bool = True,
    niter: int = 20,
    batch_size: int = 256,
    bf16: bool = False,
    init: str = "random",
) -> list[list[str]]:
    """Encode the queries and cluster them: the TAS assignment as lists of query ids."""
    embeddings = encoder.encode_queries(texts, batch_size=batch_size, bf16=bf16, show_progress=True)
    return group(qids, kmeans_assign(embeddings, num_clusters, seed, spherical=spherical, niter=niter, init=init))


def size_stats(clusters: list[list[str]], batch_size: int | None = None) -> dict:
    """Cluster-size statistics (and how many clusters cannot fill a batch on their own)."""
    sizes = np.array([len(c) for c in clusters])
    stats = {
        "queries": int(sizes.sum()),
        "clusters": int(len(sizes)),
        "size_min": int(sizes.min()),
        "size_p25": float(np.percentile(sizes, 25)),
        "size_median": float(np.median(sizes)),
        "size_mean": float(sizes.mean()),
        "size_p75": float(np.percentile(sizes, 75)),
        "size_max": int(sizes.max()),
    }
    if batch_size:
        stats["batch_size"] = int(batch_size)
        stats["clusters_smaller_than_batch"] = int((sizes < batch_size).sum())
    return stats


def training_queries(queries_path: str, qrels_path: str | None, min_relevance: int = 1) -> dict[str, str]:
    """The queries to cluster: those of ``queries_path`` with a judged positive in ``qrels_path`` (all without
    qrels)."""
    from dr.data import read_positives, read_qrels, read_queries

    queries = read_queries(queries_path)
    if qrels_path:
        positives = read_positives(read_qrels(qrels_path), min_relevance)
        queries = {q: t for q, t in queries.items() if q in positives}
    if not queries:
        raise ValueError(
            f"{queries_path}: no query to cluster" + (f" with a judged positive in {qrels_path}" if qrels_path else "")
        )
    return queries


def auto_clusters(
    path: str | os.PathLike,
    model: str,
    queries: dict[str, str],
    encoder_overrides: dict | None,
    num_clusters: int,
    seed: int,
    spherical: bool = True,
    niter: int = 20,
    batch_size: int = 256,
    bf16: bool = False,
    init: str = "random",
) -> list[list[str]]:
    """Clusters cached in ``path``: reused while a ``<path>.json`` fingerprint (model, settings,
    queries) matches, else computed with :func:`cluster_queries` and written there."""
    from dr.models import BiEncoder

    path = Path(path)
    meta_path = path.with_name(path.name + ".json")
    overrides = {k: v for k, v in dict(encoder_overrides or {}).items() if v is not None}
    fingerprint = json.dumps(
        {
            "model": str(model),
            "encoder": overrides,
            "num_clusters": num_clusters,
            "seed": seed,
            "spherical": spherical,
            "niter": niter,
            "init": init,
            "queries": hashlib.sha1("\n".join(queries).encode()).hexdigest(),
        },
        sort_keys=True,
    )
    if path.is_file() and meta_path.is_file() and meta_path.read_text() == fingerprint:
        log.info("reusing the query clusters in %s", path)
        return read_clusters(path)
    log.info("clustering %d training queries into %d clusters with %s", len(queries), num_clusters, model)
    encoder = BiEncoder.load(str(model), overrides)
    qids = list(queries)
    clusters = cluster_queries(
        encoder, qids, [queries[q] for q in qids], num_clusters, seed, spherical, niter, batch_size, bf16, init
    )
    write_clusters(path, clusters)
    with atomic_write(meta_path) as f:
        f.write(fingerprint)
    return clusters
