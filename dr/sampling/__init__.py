"""Sampling: which queries form a batch and which (positive, negatives) each query gets.

Random batches and uniform choice (:mod:`.random`), topic-aware batches (TAS, :mod:`.tas`),
balanced teacher-margin pairs (TAS-Balanced, :mod:`.tas_balanced`), SimANS negatives redrawn at
every load (:mod:`.simans`) and the query clustering TAS needs (:mod:`.clustering`).
"""

from dr.sampling.clustering import cluster_queries, default_num_clusters, kmeans_assign, size_stats
from dr.sampling.random import QueryBatchSampler, sample_negatives, uniform_pair_sampler
from dr.sampling.simans import SimANSPairSampler
from dr.sampling.tas import TASBatchSampler, tas_batch_sampler
from dr.sampling.tas_balanced import BalancedMarginPairSampler, margin_bins

__all__ = [
    "BalancedMarginPairSampler",
    "QueryBatchSampler",
    "SimANSPairSampler",
    "TASBatchSampler",
    "cluster_queries",
    "default_num_clusters",
    "kmeans_assign",
    "margin_bins",
    "sample_negatives",
    "size_stats",
    "tas_batch_sampler",
    "uniform_pair_sampler",
]
