"""``dr-cluster``: encode the training queries, k-means them (FAISS), write the TAS cluster file, stats and plot."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

from dr.cli import encoder_from_config, hydra_command
from dr.config import ConfigError
from dr.data import write_clusters, write_json
from dr.plots import plot_cluster_sizes
from dr.sampling.clustering import cluster_queries, default_num_clusters, size_stats, training_queries


def run(cfg: DictConfig, out: Path) -> dict:
    """``dr-cluster``: encode the training queries, k-means them, write the assignment, stats and plot."""
    queries = training_queries(cfg.queries, cfg.get("qrels"), cfg.get("min_relevance", 1))
    qids = list(queries)
    k = cfg.num_clusters or default_num_clusters(len(qids), cfg.train_batch_size, cfg.queries_per_cluster)
    if k > len(qids):
        raise ConfigError(f"num_clusters={k}: expected at most the {len(qids)} queries to cluster")
    encoder = encoder_from_config(cfg, backend=cfg.get("backend", "torch"))
    clusters = cluster_queries(
        encoder,
        qids,
        [queries[q] for q in qids],
        k,
        cfg.seed,
        cfg.spherical,
        cfg.niter,
        cfg.batch_size,
        cfg.bf16,
        init=cfg.get("init", "random"),
    )
    target = Path(cfg.output) if cfg.get("output") else out / "clusters.txt"
    write_clusters(target, clusters)
    stats = {"model": str(cfg.model), "num_clusters_requested": int(k), **size_stats(clusters, cfg.train_batch_size)}
    write_json(target.with_name(target.name + ".stats.json"), stats)
    plot_cluster_sizes(
        [len(c) for c in clusters],
        target.with_name(target.name + ".sizes.png"),
        batch_size=cfg.train_batch_size,
        title=f"{len(qids)} queries, {len(clusters)} clusters ({cfg.model})",
    )
    print(json.dumps(stats, indent=2))
    print(f"wrote {len(clusters)} clusters of {len(qids)} queries to {target}")
    return stats


main = hydra_command("cluster", run)
