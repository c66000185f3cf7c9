"""``dr-encode``: encode a corpus into a FAISS index (the ``index`` file plus ``docid``)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from dr.cli import encoder_from_config, hydra_command
from dr.data import read_corpus
from dr.retrieval import DenseIndex, build_index


def run(cfg: DictConfig, out: Path) -> DenseIndex:
    """Encode a corpus and save a FAISS index (the ``index`` file plus ``docid``)."""
    encoder = encoder_from_config(cfg, backend=cfg.get("backend", "torch"))
    corpus = read_corpus(cfg.corpus)
    index = build_index(encoder, corpus, index_kind=cfg.index_kind, batch_size=cfg.batch_size, bf16=cfg.bf16)
    target = Path(cfg.output) if cfg.get("output") else out / "index"
    index.save(target)
    print(f"indexed {len(index)} passages of {cfg.corpus} into {target}")
    return index


main = hydra_command("encode", run)
