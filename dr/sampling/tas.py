"""Topic-aware sampling, TAS (Hofstätter et al., "Efficiently Teaching an Effective Dense Retriever
with Balanced Topic Aware Sampling", SIGIR 2021, Sec. 3.1): each batch comes from one query
cluster (:mod:`dr.sampling.clustering`), so its in-batch negatives share a topic.

Follows the reference implementation (matchmaker's ``tas_balanced_training_loader.py``): pick a
cluster uniformly; draw ``batch_size / clusters_per_batch`` of its queries without replacement
(the whole cluster if smaller); while the batch is short, pick another random cluster. Clusters
are restricted to the training queries first; empty clusters are dropped. One difference: the
reference can draw the same cluster twice for one batch and then repeat queries; here a batch
never holds a query twice (a re-drawn cluster offers only its queries not yet in the batch), so
no query is duplicated within a DDP global step.

The balanced (positive, negative) choice of TAS-Balanced is in :mod:`dr.sampling.tas_balanced`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from dr.config import ConfigError
from dr.data.io import DataError
from dr.sampling.random import QueryBatchSampler

log = logging.getLogger(__name__)


class TASBatchSampler(QueryBatchSampler):
    """Topic-aware batches: each global batch is drawn from one random query cluster (Sec. 3.1).

    Args:
        qids: the training queries, in dataset order (batches hold indices into this list).
        clusters: lists of query ids (e.g. :func:`dr.data.read_clusters`); restricted to
            ``qids``, empty clusters dropped. Training queries in no cluster are never drawn.
        batch_size, seed, rank, world_size: as :class:`dr.sampling.QueryBatchSampler`. The
            *global* batch (``batch_size × world_size``) is composed and each rank takes its slice.
        clusters_per_batch: clusters per global batch (TAS-B: 1); each contributes
            ``global_batch // clusters_per_batch`` queries.

    An epoch is ``clustered queries // global batch`` batches; clusters are drawn with
    replacement across batches, so an epoch need not visit every query and may visit one several
    times (as in the reference, which samples an endless stream); each visit carries its
    occurrence number, so the dataset draws a fresh (positive, negative) pair every time. ``global_batches(epoch)`` is
    a pure function of
    (seed, epoch), so resuming mid-epoch (the inherited ``skip``) draws the same batches.
    """

    def __init__(
        self,
        qids: list[str],
        clusters: list[list[str]],
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        clusters_per_batch: int = 1,
    ):
        index_of = {q: i for i, q in enumerate(qids)}
        restricted = [np.array([index_of[q] for q in members if q in index_of], dtype=np.int64) for members in clusters]
        self.clusters = [c for c in restricted if len(c)]
        if not self.clusters:
            raise ConfigError(
                "data.batch_sampler.clusters: no training query is in any cluster; expected a cluster file "
                "(dr-cluster) made for these training queries"
            )
        clustered = sum(len(c) for c in self.clusters)
        if clustered < len(qids):
            log.warning(
                "%d of %d training queries are in no cluster and are never drawn by the TAS sampler",
                len(qids) - clustered,
                len(qids),
            )
        if clusters_per_batch < 1:
            raise ConfigError(
                f"data.batch_sampler.clusters_per_batch={clusters_per_batch}: expected a positive integer"
            )
        self.clusters_per_batch = clusters_per_batch
        super().__init__(clustered, batch_size, seed, drop_last=True, rank=rank, world_size=world_size)

    def global_batches(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        size = self.batch_size * self.world_size
        return [self._compose(rng, size) for _ in range(len(self))]

    def _compose(self, rng: np.random.Generator, size: int) -> np.ndarray:
        per_cluster = max(1, size // self.clusters_per_batch)
        parts: list[np.ndarray] = []
        used: dict[int, np.ndarray] = {}  # cluster -> its members already in this batch
        filled = 0
        while filled < size:
            c = int(rng.integers(len(self.clusters)))
            members = self.clusters[c]
            if c in used:  # drawn again for this batch: only its queries not taken yet
                members = np.setdiff1d(members, used[c], assume_unique=True)
                if not len(members):
                    continue
            take = min(per_cluster, size - filled, len(members))
            if take == len(members):  # the whole (rest of the) cluster
                picked = rng.permutation(members)
            else:
                picked = rng.choice(members, size=take, replace=False)
            used[c] = np.concatenate([used[c], picked]) if c in used else picked
            parts.append(picked)
            filled += take
        return np.concatenate(parts)


def tas_batch_sampler(
    *,
    qids: list[str],
    batch_size: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    clusters: str | os.PathLike | list[list[str]] | None = None,
    clusters_per_batch: int = 1,
    model: str | None = None,
    encoder: dict | None = None,
    queries: str | None = None,
    num_clusters: int | None = None,
    queries_per_cluster: int = 200,
    spherical: bool = True,
    init: str = "random",
    output_dir: str | os.PathLike | None = None,
    encode_batch_size: int = 256,
) -> TASBatchSampler:
    """The ``data.batch_sampler`` factory of ``sampler=tas`` / ``sampler=tas_balanced``.

    ``clusters`` is a cluster file written by ``dr-cluster`` (or lists of query ids). When it is
    None the clusters are made here, once: the training queries (texts from ``queries``) are
    encoded with ``model`` (``encoder``: its pooling/length overrides) and clustered into
    ``num_clusters`` (default :func:`dr.sampling.clustering.default_num_clusters` over the global batch)
    with spherical (inner-product) k-means as the reference (``spherical=False``: L2);
    the result is cached as ``<output_dir>/clusters.txt`` and reused by a resumed run. Under DDP
    rank 0 makes the file and the other ranks read it, so every rank has the same clusters.
    """
    from dr.sampling.clustering import auto_clusters, default_num_clusters, read_clusters

    if clusters is None:
        if not (model and queries and output_dir):
            raise ConfigError(
                f"data.batch_sampler.clusters=null, data.batch_sampler.model={model}: TAS needs clusters=<file from "
                "dr-cluster>, or a model, queries and output_dir to make them"
            )
        from dr.data import read_queries

        texts = read_queries(queries)
        missing = [q for q in qids if q not in texts]
        if missing:
            raise DataError(queries, None, f"{len(missing)} training queries have no text, e.g. {missing[0]!r}")
        k = num_clusters or default_num_clusters(len(qids), batch_size * world_size, queries_per_cluster)
        path = Path(output_dir) / "clusters.txt"

        def make():
            return auto_clusters(
                path,
                model,
                {q: texts[q] for q in qids},
                encoder,
                k,
                seed,
                spherical,
                batch_size=encode_batch_size,
                init=init,
            )

        clusters = _on_rank_zero_first(make, world_size, lambda: read_clusters(path))
    elif not isinstance(clusters, (list, tuple)):
        clusters = read_clusters(clusters)
    return TASBatchSampler(
        list(qids),
        [list(c) for c in clusters],
        batch_size,
        seed,
        rank=rank,
        world_size=world_size,
        clusters_per_batch=clusters_per_batch,
    )


def _on_rank_zero_first(make, world_size: int, read):
    """``make()`` on rank 0, then ``read()`` on the other ranks once rank 0 is done (single process: ``make()``)."""
    import torch.distributed as dist

    if world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
        return make()
    if dist.get_rank() == 0:
        result = make()
        dist.barrier()
        return result
    dist.barrier()
    return read()
