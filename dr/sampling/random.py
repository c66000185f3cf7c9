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
    ``(query_index, epoch)`` so the dataset can draw that epoch's positive and negatives.
    """

    def __init__(self, num_queries: int, batch_size: int, seed: int, drop_last: bool = True, rank: int = 0, world_size: int = 1):
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
        for chunk in batches[skip:]:
            mine = chunk[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
            if len(mine):
                yield [(int(i), self.epoch) for i in mine]


def uniform_pair_sampler(qid, positives, negatives, teacher, num_negatives, rng):
    """The default example: one positive and ``num_negatives`` distinct candidates, uniformly."""
    positive = positives[rng.integers(len(positives))]
    return positive, sample_negatives(negatives, num_negatives, rng)


def sample_negatives(candidates: list[str], num: int, rng: np.random.Generator) -> list[str]:
    """``num`` distinct candidates uniformly at random (with replacement only when too few)."""
    if not candidates or num <= 0:
        return []
    replace = len(candidates) < num
    idx = rng.choice(len(candidates), size=num, replace=replace)
    return [candidates[i] for i in idx]
