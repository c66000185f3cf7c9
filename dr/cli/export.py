"""``dr-export``: export a model (folder or ``.ckpt``) in the sentence-transformers layout, optionally with an
index and ONNX files (``format=onnx|onnx-int8``)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from dr.cli import encoder_from_config, hydra_command
from dr.data import read_corpus
from dr.export import export
from dr.export.export import check_export_target
from dr.export.export import truncated
from dr.retrieval import build_index
from dr.export.model_card import model_card, read_run_outputs


def _run_dir_of(model: str) -> Path | None:
    """The dr-train run a model comes from: a ``.ckpt``'s (``RUN/checkpoints/x.ckpt``) or an
    export's (``RUN/export``), when that folder has the run's ``config.yaml``."""
    path = Path(model).expanduser()
    run = path.resolve().parent.parent if path.suffix == ".ckpt" else path.resolve().parent
    return run if (run / "config.yaml").is_file() else None


def run(cfg: DictConfig, out: Path) -> Path:
    """Export a trained model (folder or .ckpt) with the sentence-transformers layout, optionally indexed."""
    target = Path(cfg.output) if cfg.get("output") else out / "export"
    check_export_target(target, bool(cfg.get("overwrite", False)))  # before any model loads
    encoder = truncated(encoder_from_config(cfg), cfg.get("truncate_dim"))
    index = None
    if cfg.get("corpus"):
        index = build_index(encoder, read_corpus(cfg.corpus), index_kind=cfg.index_kind, batch_size=cfg.batch_size, bf16=cfg.bf16)
    config, metrics = read_run_outputs(_run_dir_of(str(cfg.model)))
    card = model_card(encoder, config, metrics)
    export(encoder.cpu(), target, index=index, format=cfg.get("format", "torch"), card=card,
           overwrite=bool(cfg.get("overwrite", False)))
    print(f"exported to {target}")
    return target


main = hydra_command("export", run)
