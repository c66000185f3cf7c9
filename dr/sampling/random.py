"""Random batches and uniform example choice: the default samplers.

- :class:`QueryBatchSampler`: shuffled batches of training queries, reseeded by epoch, sharded
  across DDP ranks, resumable mid-epoch. Other batch samplers (:mod:`dr.sampling.tas`) override
  only :meth:`QueryBatchSampler.global_batches`.
- :func:`uniform_pair_sampler`: a query's positive and negatives, uniformly at random.
"""

from __future__ import annotations

import numpy as np
from torch.utils.data import Sampler


class QueryBatchSampler(Sampler[list[tuple[int, int]]]):
    """Shuffled batches of query indices, reseeded by epoch, sharded across DDP ranks.

    Every rank shuffles all queries with the same (seed, epoch) permutation and takes its own
    slice of each global batch, so no query appears twice within a global step. Yields lists of
    ``(query_index, epoch, occurrence)``: ``occurrence`` counts the query's earlier appearances
    in the epoch's global batches (0 the first time), so the dataset draws a fresh (positive,
    negatives) example each time a query comes back (TAS can draw a cluster several times an
    epoch) while every draw stays a pure function of (seed, epoch) and resumes exactly.
    """

    def __init__(
        self, num_queries: int, batch_size: int, seed: int, drop_last: bool = True, rank: int = 0, world_size: int = 1
    ):
        self.num_queries = num_queries
        self.batch_size = batch_size
        self.seed = seed
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.skip = 0  # batches of the next epoch already trained on before a resume

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        global_batch = self.batch_size * self.world_size
        if self.drop_last:
            return self.num_queries // global_batch
        return -(-self.num_queries // global_batch)

    def global_batches(self, epoch: int) -> list[np.ndarray]:
        """The epoch's global batches (``batch_size × world_size`` query indices each), a pure
        function of (seed, epoch): subclasses (e.g. :mod:`dr.sampling`) override this only, and
        inherit DDP sharding and mid-epoch resume."""
        order = np.random.default_rng([self.seed, epoch]).permutation(self.num_queries)
        global_batch = self.batch_size * self.world_size
        return [order[b * global_batch : (b + 1) * global_batch] for b in range(len(self))]

    def __iter__(self):
        batches = self.global_batches(self.epoch)
        skip, self.skip = self.skip, 0
        occurrences = _occurrences(batches)  # over the whole epoch, skipped batches included
        for chunk, seen in list(zip(batches, occurrences))[skip:]:
            lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
            mine, seen = chunk[lo:hi], seen[lo:hi]
            if len(mine):
                yield [(int(i), self.epoch, int(k)) for i, k in zip(mine, seen)]


def _occurrences(batches: list[np.ndarray]) -> list[np.ndarray]:
    """For each entry of each batch: how many times its query appeared earlier in ``batches``."""
    counts: dict[int, int] = {}
    out = []
    for batch in batches:
        seen = np.empty(len(batch), dtype=np.int64)
        for j, i in enumerate(batch.tolist()):
            seen[j] = counts.get(i, 0)
            counts[i] = seen[j] + 1
        out.append(seen)
    return out


def uniform_pair_sampler(qid, positives, negatives, teacher, num_negatives, rng, **_):
    """The default example: one positive and ``num_negatives`` distinct candidates, uniformly
    (fewer when the query has fewer candidates)."""
    positive = positives[rng.integers(len(positives))]
    return positive, sample_negatives(negatives, num_negatives, rng)


def sample_negatives(candidates: list[str], num: int, rng: np.random.Generator) -> list[str]:
    """``min(num, len(candidates))`` distinct candidates, uniformly at random without replacement.

    A query with fewer candidates than asked gets all of them, never a repeat: a duplicate would
    enter the InfoNCE denominator twice (Eq. 2 of DPR counts each negative once) and weigh that
    passage double. The collated batch pads the shorter rows (``neg_index == -1``).
    """
    if not candidates or num <= 0:
        return []
    idx = rng.choice(len(candidates), size=min(num, len(candidates)), replace=False)
    return [candidates[i] for i in idx]
