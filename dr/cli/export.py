"""``dr-export``: export a model (folder or ``.ckpt``) in the sentence-transformers layout, optionally with an
index and ONNX files (``format=onnx|onnx-int8``). ``interpolate=α base=MODEL`` exports WiSE-FT's
``(1 − α)·base + α·model`` (:mod:`dr.export.wise_ft`). A model trained with LoRA adapters ships
merged (``lora=merge``) or as its adapter files (``lora=adapter``; :mod:`dr.models.lora`)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from dr.cli import encoder_from_config, hydra_command
from dr.config import ConfigError
from dr.data import read_corpus
from dr.export import export
from dr.export.export import check_export_target
from dr.export.export import truncated
from dr.retrieval import build_index
from dr.export.model_card import model_card, read_run_outputs
from dr.models.lora import merged


def _run_dir_of(model: str) -> Path | None:
    """The dr-train run a model comes from: a ``.ckpt``'s (``RUN/checkpoints/[best/]x.ckpt``) or an
    export's (``RUN/export``), when that folder has the run's ``config.yaml``."""
    from dr.models.checkpoint import checkpoint_run_dir

    path = Path(model).expanduser()
    if path.suffix == ".ckpt":
        return checkpoint_run_dir(path)  # already the folder with the config.yaml, or None
    run = path.resolve().parent
    return run if (run / "config.yaml").is_file() else None


def _interpolated(encoder, cfg: DictConfig, alpha: float):
    from dr.config import ConfigError
    from dr.export.wise_ft import interpolate_weights
    from dr.models import load_encoder

    if not cfg.get("base"):
        raise ConfigError(
            f"interpolate={alpha:g}: expected base=MODEL, the initial (zero-shot) model to interpolate with"
        )
    return interpolate_weights(
        encoder, load_encoder(str(cfg.base), backend="torch", device="cpu"), alpha, base_name=f"base={cfg.base}"
    )


def run(cfg: DictConfig, out: Path) -> Path:
    """Export a trained model (folder or .ckpt) with the sentence-transformers layout, optionally indexed."""
    target = Path(cfg.output) if cfg.get("output") else out / "export"
    check_export_target(target, bool(cfg.get("overwrite", False)))  # before any model loads
    encoder = encoder_from_config(cfg)
    alpha = cfg.get("interpolate")
    lora = cfg.get("lora") or "merge"
    if alpha is not None:
        if lora == "adapter" and getattr(encoder, "lora", None) is not None:
            raise ConfigError(
                f"interpolate={alpha}, lora=adapter: interpolation mixes plain weights; expected lora=merge"
            )
        encoder = _interpolated(merged(encoder), cfg, float(alpha))
    encoder = truncated(encoder, cfg.get("truncate_dim"))
    index = None
    if cfg.get("corpus"):
        index = build_index(
            encoder, read_corpus(cfg.corpus), index_kind=cfg.index_kind, batch_size=cfg.batch_size, bf16=cfg.bf16
        )
    config, metrics = read_run_outputs(_run_dir_of(str(cfg.model)))
    card = model_card(encoder, config, metrics, lora=lora)
    if alpha is not None:
        card += (
            f"\nWeights: WiSE-FT interpolation (Wortsman et al. 2022, Eq. 1), (1 − α)·`{cfg.base}` + α·the fine-tuned "
            f"model, α = {float(alpha):g}; the figures above are the fine-tuned model's.\n"
        )
    export(
        encoder.cpu(),
        target,
        index=index,
        format=cfg.get("format", "torch"),
        card=card,
        overwrite=bool(cfg.get("overwrite", False)),
        lora=lora,
    )
    print(f"exported to {target}")
    return target


main = hydra_command("export", run)
