"""TAS and TAS-Balanced sampling (Hofstätter et al., "Efficiently Teaching an Effective Dense
Retriever with Balanced Topic Aware Sampling", SIGIR 2021, Sec. 3).

- :class:`TASBatchSampler` (topic-aware sampling, Sec. 3.1): each batch comes from one query
  cluster (:mod:`dr.cluster`), so its in-batch negatives share a topic.
- :class:`BalancedMarginPairSampler` (balanced margin sampling, Sec. 3.2): each query's
  (positive, negative) pair is drawn so that the teacher margins are spread evenly over their
  range instead of following their (skewed) distribution.

Both follow the reference implementation (matchmaker's ``tas_balanced_training_loader.py``):

- batch: pick a cluster uniformly; draw ``batch_size / clusters_per_batch`` of its queries
  without replacement (the whole cluster if smaller); while the batch is short, pick another
  random cluster. Clusters are restricted to the training queries first; empty clusters are
  dropped. One difference: the reference can draw the same cluster twice for one batch and then
  repeat queries; here a batch never holds a query twice (a re-drawn cluster offers only its
  queries not yet in the batch), so no query is duplicated within a DDP global step.
- pair: margins ``t_pos - t_neg`` of the query's teacher-scored pairs, 10 equal-width bins over
  ``[min, max]`` (``numpy.digitize`` over ``arange(min, max, (max - min) / 10)``), a bin chosen
  uniformly among the non-empty ones (the reference retries on an empty bin: the same
  distribution), then a pair uniformly inside it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dr.datamodule import QueryBatchSampler, uniform_pair_sampler
from dr.negatives import sample_negatives

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- TAS batches
class TASBatchSampler(QueryBatchSampler):
    """Topic-aware batches: each global batch is drawn from one random query cluster (Sec. 3.1).

    Args:
        qids: the training queries, in dataset order (batches hold indices into this list).
        clusters: lists of query ids (e.g. :func:`dr.cluster.read_clusters`); restricted to
            ``qids``, empty clusters dropped. Training queries in no cluster are never drawn.
        batch_size, seed, rank, world_size: as :class:`dr.datamodule.QueryBatchSampler`. The
            *global* batch (``batch_size × world_size``) is composed and each rank takes its slice.
        clusters_per_batch: clusters per global batch (TAS-B: 1); each contributes
            ``global_batch // clusters_per_batch`` queries.

    An epoch is ``clustered queries // global batch`` batches; clusters are drawn with
    replacement across batches, so an epoch need not visit every query (as in the reference,
    which samples an endless stream). ``global_batches(epoch)`` is a pure function of
    (seed, epoch), so resuming mid-epoch (the inherited ``skip``) draws the same batches.
    """

    def __init__(self, qids: list[str], clusters: list[list[str]], batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, clusters_per_batch: int = 1):
        index_of = {q: i for i, q in enumerate(qids)}
        restricted = [np.array([index_of[q] for q in members if q in index_of], dtype=np.int64) for members in clusters]
        self.clusters = [c for c in restricted if len(c)]
        if not self.clusters:
            raise ValueError("no training query is in any cluster: is the cluster file for these training queries?")
        clustered = sum(len(c) for c in self.clusters)
        if clustered < len(qids):
            log.warning("%d of %d training queries are in no cluster and are never drawn by the TAS sampler", len(qids) - clustered, len(qids))
        if clusters_per_batch < 1:
            raise ValueError(f"clusters_per_batch must be >= 1, got {clusters_per_batch}")
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
    spherical: bool = False,
    init: str = "random",
    output_dir: str | os.PathLike | None = None,
    encode_batch_size: int = 256,
) -> TASBatchSampler:
    """The ``data.batch_sampler`` factory of ``sampler=tas`` / ``sampler=tas_balanced``.

    ``clusters`` is a cluster file written by ``dr-cluster`` (or lists of query ids). When it is
    None the clusters are made here, once: the training queries (texts from ``queries``) are
    encoded with ``model`` (``encoder``: its pooling/length overrides) and clustered into
    ``num_clusters`` (default :func:`dr.cluster.default_num_clusters` over the global batch);
    the result is cached as ``<output_dir>/clusters.txt`` and reused by a resumed run. Under DDP
    rank 0 makes the file and the other ranks read it, so every rank has the same clusters.
    """
    from dr.cluster import auto_clusters, default_num_clusters, read_clusters

    if clusters is None:
        if not (model and queries and output_dir):
            raise ValueError("TAS needs clusters=<file from dr-cluster>, or model, queries and output_dir to make them")
        from dr.data import read_queries

        texts = read_queries(queries)
        missing = [q for q in qids if q not in texts]
        if missing:
            raise ValueError(f"{queries}: {len(missing)} training queries have no text, e.g. {missing[0]!r}")
        k = num_clusters or default_num_clusters(len(qids), batch_size * world_size, queries_per_cluster)
        path = Path(output_dir) / "clusters.txt"

        def make():
            return auto_clusters(path, model, {q: texts[q] for q in qids}, encoder, k, seed, spherical,
                                 batch_size=encode_batch_size, init=init)

        clusters = _on_rank_zero_first(make, world_size, lambda: read_clusters(path))
    elif not isinstance(clusters, (list, tuple)):
        clusters = read_clusters(clusters)
    return TASBatchSampler(list(qids), [list(c) for c in clusters], batch_size, seed, rank=rank, world_size=world_size,
                           clusters_per_batch=clusters_per_batch)


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


# ---------------------------------------------------------------------- balanced margins
def margin_bins(margins: np.ndarray, num_bins: int = 10) -> np.ndarray:
    """Bin index (0 .. num_bins-1) of each margin over ``num_bins`` equal-width bins on [min, max].

    As the reference: ``numpy.digitize(margins, arange(min, max, (max - min) / num_bins)) - 1``;
    the maximum falls in the last bin (clipped, in case float rounding gives ``arange`` an extra
    edge), and equal margins all go to bin 0.
    """
    margins = np.asarray(margins, dtype=np.float64)
    lo, hi = float(margins.min()), float(margins.max())
    if not hi > lo:
        return np.zeros(len(margins), dtype=np.int64)
    edges = np.arange(lo, hi, (hi - lo) / num_bins)
    return np.clip(np.digitize(margins, edges) - 1, 0, num_bins - 1).astype(np.int64)


@dataclass
class _QueryPairs:
    """One query's teacher-scored pairs and their bins, valid for the objects it was built from."""

    positives: list
    negatives: list
    teacher: object
    pos: list[str]
    neg: list[str]
    bin_of: np.ndarray
    bins: list[np.ndarray]  # pair indices per non-empty bin


class BalancedMarginPairSampler:
    """TAS-Balanced's pair choice (Sec. 3.2): a uniform bin of teacher margins, then a uniform pair in it.

    A ``pair_sampler`` for :class:`dr.datamodule.ContrastiveDataset`. A query's candidate pairs
    are its teacher-file pairs (``teacher.pairs[qid]``) whose positive and negative are still
    among its positives and negative candidates; without file pairs, every positive × negative
    candidate that both have a teacher score. Margins ``t_pos - t_neg`` are binned into
    ``num_bins`` equal-width bins (:func:`margin_bins`); a non-empty bin is picked uniformly,
    then a pair uniformly inside it. Bins are cached per query and rebuilt when the candidate
    lists or the teacher change (an index refresh swaps the negatives lists).

    Fall-backs: with one scored pair that pair is used (the reference drops such queries); with
    none, or without a teacher, the uniform sampler (:func:`dr.datamodule.uniform_pair_sampler`).

    ``num_negatives > 1``: the first negative comes with the positive from a balanced pair; each
    further negative is drawn the same way (uniform non-empty bin, uniform pair) among the pairs
    with that same positive and a negative not drawn yet; when those run out the rest are distinct
    uniform draws from the remaining candidates (their teacher score may be NaN, which the losses
    ignore), and fewer are returned when no candidate is left.
    """

    def __init__(self, num_bins: int = 10):
        if num_bins < 1:
            raise ValueError(f"num_bins must be >= 1, got {num_bins}")
        self.num_bins = num_bins
        self._cache: dict[str, _QueryPairs] = {}

    def __call__(self, qid, positives, negatives, teacher, num_negatives, rng):
        if teacher is None:
            return uniform_pair_sampler(qid, positives, negatives, teacher, num_negatives, rng)
        entry = self.pairs_of(qid, positives, negatives, teacher)
        if not entry.pos:
            return uniform_pair_sampler(qid, positives, negatives, teacher, num_negatives, rng)
        first = self._draw(entry.bins, rng)
        positive = entry.pos[first]
        if num_negatives <= 0:
            return positive, []
        chosen = [entry.neg[first]]
        if num_negatives > 1:
            same_pos = np.array([i for i, p in enumerate(entry.pos) if p == positive], dtype=np.int64)
            while len(chosen) < num_negatives:
                left = same_pos[~np.isin(np.asarray(entry.neg, dtype=object)[same_pos], chosen)]
                if not len(left):
                    break
                bins = [left[entry.bin_of[left] == b] for b in np.unique(entry.bin_of[left])]
                chosen.append(entry.neg[self._draw(bins, rng)])
            if len(chosen) < num_negatives:
                taken = set(chosen)
                rest = [d for d in negatives if d not in taken]
                chosen += sample_negatives(rest, min(len(rest), num_negatives - len(chosen)), rng)
        return positive, chosen

    @staticmethod
    def _draw(bins: list[np.ndarray], rng: np.random.Generator) -> int:
        members = bins[int(rng.integers(len(bins)))]
        return int(members[int(rng.integers(len(members)))])

    def pairs_of(self, qid, positives, negatives, teacher) -> _QueryPairs:
        """The query's scored pairs and bins (cached while the same lists and teacher are passed)."""
        entry = self._cache.get(qid)
        if entry is not None and entry.positives is positives and entry.negatives is negatives and entry.teacher is teacher:
            return entry
        scores = teacher.scores.get(qid, {})
        pos_set, neg_set = set(positives), set(negatives)
        file_pairs = teacher.pairs.get(qid)
        if file_pairs:
            pairs = [(p, n) for p, n in file_pairs if p in pos_set and n in neg_set and p in scores and n in scores]
        else:
            pairs = [(p, n) for p in positives if p in scores for n in negatives if n in scores]
        pos = [p for p, _ in pairs]
        neg = [n for _, n in pairs]
        if pairs:
            margins = np.array([scores[p] - scores[n] for p, n in pairs])
            bin_of = margin_bins(margins, self.num_bins)
        else:
            bin_of = np.zeros(0, dtype=np.int64)
        bins = [np.flatnonzero(bin_of == b) for b in np.unique(bin_of)]
        entry = _QueryPairs(positives, negatives, teacher, pos, neg, bin_of, bins)
        self._cache[qid] = entry
        return entry
