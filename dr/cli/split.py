"""``dr-split``: interpolation and extrapolation test sets and a resampled training set (Zhan et al.,
CIKM 2022; see :mod:`dr.evaluation.splits` for the protocol and where it differs from the paper)."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

from dr.cli import encoder_from_config, hydra_command
from dr.plots import plot_split_similarities
from dr.evaluation.splits import split_queries, write_split


def run(cfg: DictConfig, out: Path) -> dict[str, int]:
    """Encode the queries, label the test queries, resample the training queries; write the files."""
    target = Path(cfg.output) if cfg.get("output") else out
    files = {k: str(cfg[k]) for k in ("train_queries", "train_qrels", "test_queries", "test_qrels")}
    options = {
        k: cfg[k]
        for k in ("threshold", "extrapolation_fraction", "max_removed_fraction", "max_removed_per_query", "seed")
    }
    split = split_queries(
        encoder_from_config(cfg),
        **files,
        min_relevance=cfg.min_relevance,
        batch_size=cfg.batch_size,
        bf16=cfg.bf16,
        **options,
    )
    write_split(split, target, files, extra={"model": str(cfg.model)})
    png = plot_split_similarities(
        split.max_sim_full,
        split.max_sim,
        split.labels,
        split.shares_doc_full,
        split.threshold,
        target / "similarities.png",
        title=f"{cfg.model}, threshold {split.threshold:g}",
    )
    counts = split.counts()
    print(json.dumps(counts, indent=1))
    print(f"split: {target} (interpolation.*, extrapolation.*, train.* queries and qrels; split.json; {png.name})")
    return counts


main = hydra_command("split", run)


if __name__ == "__main__":
    main()
