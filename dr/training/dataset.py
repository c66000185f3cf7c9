"""The training dataset (one query, a positive and its negatives drawn per load) and the
DataLoader that resumes mid-epoch; used by :class:`dr.training.datamodule.RetrievalDataModule`."""

from __future__ import annotations

import numpy as np
from torch.utils.data import DataLoader, Dataset

from dr.sampling.random import uniform_pair_sampler


class ResumableDataLoader(DataLoader):
    """A DataLoader over a :class:`QueryBatchSampler` that resumes mid-epoch.

    Lightning saves ``state_dict()`` in each checkpoint and calls ``load_state_dict`` before
    iterating again. The position is derived from the trainer's optimizer steps (not from
    batches fetched, which run ahead of training because Lightning prefetches), so the resumed
    run trains on exactly the batches an uninterrupted run would have.
    """

    def __init__(self, *args, batches_done=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._batches_done = batches_done

    def state_dict(self) -> dict:
        return {
            "epoch": self.batch_sampler.epoch,
            "batches_done": int(self._batches_done()) if self._batches_done else 0,
        }

    def load_state_dict(self, state: dict) -> None:
        self.batch_sampler.set_epoch(state["epoch"])
        self.batch_sampler.skip = state["batches_done"] % max(1, len(self.batch_sampler))


class ContrastiveDataset(Dataset):
    """Query texts, positives and negative candidates; ``__getitem__((i, epoch, occurrence))``
    samples one example.

    The generator is keyed by (seed, epoch, i) on a query's first occurrence in the epoch and by
    (seed, epoch, i, occurrence) on its later ones (``occurrence`` from the batch sampler; a
    2-tuple key is occurrence 0), so every load of a query draws afresh and reproducibly.
    ``pair_sampler(qid, positives, negatives, teacher, num_negatives, rng) -> (positive, [negatives])``
    chooses the example (default :func:`uniform_pair_sampler`; TAS-Balanced's margin-balanced
    choice and SimANS's kernel are in :mod:`dr.sampling`); a sampler with ``uses_scores = True``
    also gets ``scores=`` (the query's ``{docid: retriever score}`` from the negatives file).
    ``teacher`` is a :class:`dr.data.TeacherScores` or None. ``version`` counts negatives swaps
    (index refreshes, :mod:`dr.refresh`).
    """

    def __init__(
        self,
        qids,
        query_texts,
        positives,
        negatives,
        passage_lookup,
        num_negatives,
        seed,
        teacher=None,
        pair_sampler=None,
    ):
        self.qids = qids
        self.query_texts = query_texts
        self.positives = positives
        self.negatives = negatives
        self.passage_lookup = passage_lookup
        self.num_negatives = num_negatives
        self.seed = seed
        self.teacher = teacher
        self.pair_sampler = pair_sampler or uniform_pair_sampler
        self.scores: dict[str, dict[str, float]] = {}  # retriever scores of the negatives file, per query
        self.version = 0

    def __len__(self) -> int:
        return len(self.qids)

    def __getitem__(self, key: tuple[int, ...]) -> dict:
        i, epoch, occurrence = (*key, 0) if len(key) == 2 else key
        # The first occurrence keeps the (seed, epoch, i) key: plain random batches draw what they always drew.
        rng = np.random.default_rng([self.seed, epoch, i] if occurrence == 0 else [self.seed, epoch, i, occurrence])
        qid = self.qids[i]
        extra = {"scores": self.scores.get(qid, {})} if getattr(self.pair_sampler, "uses_scores", False) else {}
        positive, negatives = self.pair_sampler(
            qid, self.positives[qid], self.negatives.get(qid, []), self.teacher, self.num_negatives, rng, **extra
        )
        return {
            "qid": qid,
            "query": self.query_texts[i],
            "positive": positive,
            "negatives": negatives,
            "version": self.version,
        }
