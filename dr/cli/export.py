"""``dr-export``: export a model (folder or ``.ckpt``) in the sentence-transformers layout, optionally with an
index and ONNX files (``format=onnx|onnx-int8``)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from dr.cli import encoder_from_config, hydra_command
from dr.data import read_corpus
from dr.retrieval import build_index, export


def run(cfg: DictConfig, out: Path) -> Path:
    """Export a trained model (folder or .ckpt) with the sentence-transformers layout, optionally indexed."""
    encoder = encoder_from_config(cfg)
    index = None
    if cfg.get("corpus"):
        index = build_index(encoder, read_corpus(cfg.corpus), index_kind=cfg.index_kind, batch_size=cfg.batch_size, bf16=cfg.bf16)
    target = Path(cfg.output) if cfg.get("output") else out / "export"
    export(encoder.cpu(), target, index=index, format=cfg.get("format", "torch"))
    print(f"exported to {target}")
    return target


main = hydra_command("export", run)
