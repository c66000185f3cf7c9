"""``dr-search``: search queries against a saved index and write a TREC run file."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from dr.cli import encoder_from_config, hydra_command
from dr.data import read_queries, write_run
from dr.retrieval import DenseIndex, search_queries


def run(cfg: DictConfig, out: Path) -> Path:
    """Search queries against a saved index and write a TREC run file."""
    encoder = encoder_from_config(cfg)
    index = DenseIndex.load(cfg.index)
    queries = read_queries(cfg.queries)
    run = search_queries(encoder, index, queries, k=cfg.k, batch_size=cfg.batch_size, bf16=cfg.bf16)
    target = Path(cfg.output) if cfg.get("output") else out / "run.trec"
    write_run(run, target, tag=cfg.tag)
    print(f"wrote {sum(len(v) for v in run.values())} results for {len(run)} queries to {target}")
    return target


main = hydra_command("search", run)
