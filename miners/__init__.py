"""Negative miners: pure NumPy over each query's candidate ids and scores; no model, no index inside.

Every miner maps ``(Candidates, rng) -> Mined`` for a batch of queries at once (``miners/base.py`` has
the array layout), takes a ``numpy.random.Generator`` (or a seed) so a seed fixes its output, and never
returns a positive.

- ``TopKMiner``     the top-ranked non-positives (DPR/ANCE hard negatives).
- ``RandomMiner``   uniform over the corpus.
- ``SimANSMiner``   SimANS ambiguous negatives, Gaussian or Laplace kernel around the positive's score.
- ``MarginMiner``   rank window (SciNCL) + absolute/relative margin to the positive (NV-Retriever).
- ``DenoiseMiner``  RocketQA-style teacher filter (threshold or margin on cross-encoder scores).
- ``Chain``         stages in order, e.g. margin then SimANS (``conf/miner/margin_simans.yaml``).

There is no BM25 miner class: BM25 candidates come from ``dr/bm25.py``, and ``TopKMiner`` over them is
the BM25 miner (likewise any run file: load it with ``Candidates.from_lists``).
"""

from dr.miners.base import CandidateMiner, Candidates, FilterMiner, Mined, Miner
from dr.miners.chain import Chain
from dr.miners.denoise import DenoiseMiner
from dr.miners.margin import MarginMiner
from dr.miners.random import RandomMiner
from dr.miners.simans import SimANSMiner
from dr.miners.topk import TopKMiner

__all__ = [
    "CandidateMiner",
    "FilterMiner",
    "Candidates",
    "Chain",
    "DenoiseMiner",
    "MarginMiner",
    "Mined",
    "Miner",
    "RandomMiner",
    "SimANSMiner",
    "TopKMiner",
]
