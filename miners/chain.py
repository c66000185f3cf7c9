"""Composition of candidate miners: each stage chooses among what the previous stage kept.

E.g. ``Chain([MarginMiner(relative_margin=0.05), SimANSMiner(num_negatives=15)])`` samples SimANS
negatives only among the candidates that pass NV-Retriever's TopK-PercPos filter. Give the intermediate
stages ``num_negatives=None`` ("keep all that pass") and let the last stage pick. Ranks stay the columns
of the original candidate list, and s_pos is always computed from the full candidates, so a stage sees
the same scores and positives whatever came before it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from dr.miners.base import CandidateMiner, Candidates


class Chain(CandidateMiner):
    """Run ``miners`` in order, each one's kept set becoming the next one's eligible set."""

    def __init__(self, miners: Sequence[CandidateMiner]):
        self.miners = list(miners)
        if not self.miners:
            raise ValueError("Chain: needs at least one miner")
        for m in self.miners:
            if not isinstance(m, CandidateMiner):
                raise TypeError(f"Chain: {m!r} does not choose among candidates (no select); it cannot be a stage")
        self.num_negatives = self.miners[-1].num_negatives
        self.needs_teacher_scores = any(m.needs_teacher_scores for m in self.miners)
        self.samples_by_kernel = any(m.samples_by_kernel for m in self.miners)

    def bind_teacher(self, teacher) -> None:
        for miner in self.miners:
            miner.bind_teacher(teacher)

    def select(
        self, candidates: Candidates, rng: np.random.Generator, eligible: np.ndarray | None = None
    ) -> np.ndarray:
        keep = self._eligible(candidates, eligible)
        for miner in self.miners:
            keep = miner.select(candidates, rng, keep)
        return keep

    def __repr__(self) -> str:
        return f"Chain([{', '.join(map(repr, self.miners))}])"
