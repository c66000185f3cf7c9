"""Top-k hard negatives: the best-ranked candidates that are not positives.

The classic hard-negative miner of DPR (Karpukhin et al., EMNLP 2020, "Dense Passage Retrieval for
Open-Domain Question Answering": "top passages returned by BM25 which don't contain the answer") and
ANCE (Xiong et al., ICLR 2021) when the candidates come from the dense index. Over BM25 candidates
(``dr/bm25.py``) it *is* the BM25 miner.

Formula: negatives(q) = the first ``num_negatives`` candidates of q, in rank order, after removing q's
positives. Default ``num_negatives=15``; ``None`` keeps every non-positive candidate.
"""

from __future__ import annotations

import numpy as np

from dr.miners.base import CandidateMiner, Candidates
from dr.miners.sampling import take_first


class TopKMiner(CandidateMiner):
    """The ``num_negatives`` top-ranked non-positive candidates of each query (see module docstring)."""

    def __init__(self, num_negatives: int | None = 15):
        if num_negatives is not None and num_negatives < 0:
            raise ValueError(f"TopKMiner: num_negatives must be >= 0 or None, got {num_negatives}")
        self.num_negatives = num_negatives

    def select(
        self, candidates: Candidates, rng: np.random.Generator, eligible: np.ndarray | None = None
    ) -> np.ndarray:
        return take_first(self._eligible(candidates, eligible), self.num_negatives)

    def __repr__(self) -> str:
        return f"TopKMiner(num_negatives={self.num_negatives})"
