"""LoRA adapters on the query and passage towers, through the ``peft`` package (an optional extra:
``pip install dr[lora]``).

LoRA (Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language Models", Eq. 3) freezes each
chosen linear layer's weight ``W`` and trains ``ΔW = (alpha / r)·B·A`` beside it, with ``A`` an
``r × in`` and ``B`` an ``out × r`` matrix (``B`` starts at zero, so the untrained model is the
base model). ``encoder.lora`` sets ``r``, ``alpha``, ``dropout`` (on the adapter's input) and
``target_modules`` (null: every linear layer of the attention and feed-forward blocks of the
architecture, :data:`DEFAULT_TARGETS`; the pooler head, which dr does not use, never).

Training updates only ``A`` and ``B``: the optimizer gets them alone, and a ``dr-train``
checkpoint holds them alone (:mod:`dr.training.adapter_state`); the frozen weights come back from
the base model when a checkpoint is loaded. Saving (:meth:`~dr.models.BiEncoder.save_pretrained`,
the refresh snapshot, ``export.lora=merge``) writes the merged weights ``W + ΔW``: a plain model
that any loader reads. ``export.lora=adapter`` writes peft's adapter files instead
(``adapter_config.json``, naming the base model, and ``adapter_model.safetensors``), which
sentence-transformers and :meth:`~dr.models.BiEncoder.from_pretrained` load on top of the base.

``peft`` is imported only when adapters are asked for or found.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

from torch import nn

from dr.config import ConfigError

#: the settings of ``encoder.lora`` and their defaults (FlagEmbedding's and Tevatron's dropout)
DEFAULTS: dict[str, Any] = {"r": 8, "alpha": 16, "dropout": 0.1, "target_modules": None}
ADAPTER_CONFIG = "adapter_config.json"
INSTALL = "pip install dr[lora]"

#: model_type -> the linear layers that get adapters when ``target_modules`` is null: all those of
#: the attention and feed-forward blocks (the pooler is excluded apart). Other architectures get
#: peft's ``all-linear``.
DEFAULT_TARGETS: dict[str, list[str]] = {
    **{t: ["query", "key", "value", "dense"] for t in ("bert", "roberta", "xlm-roberta", "electra", "camembert")},
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"],
    "mpnet": ["q", "k", "v", "o", "dense"],
    **{
        t: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        for t in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2")
    },
}


def lora_problem(value: Any) -> str | None:
    """What is wrong with an ``encoder.lora`` value (None when it is fine); for :mod:`dr.validate`."""
    if value is None:
        return None
    if not hasattr(value, "keys"):
        return "expected null or settings {r, alpha, dropout, target_modules}, e.g. encoder.lora={r:8,alpha:16}"
    unknown = sorted(set(value.keys()) - set(DEFAULTS))
    if unknown:
        return f"unknown setting {unknown[0]!r}; expected some of {', '.join(DEFAULTS)}"
    s = {**DEFAULTS, **dict(value)}
    if not (isinstance(s["r"], int) and not isinstance(s["r"], bool) and s["r"] > 0):
        return f"r={s['r']}: expected a positive integer (the adapters' rank)"
    if isinstance(s["alpha"], bool) or not isinstance(s["alpha"], (int, float)) or s["alpha"] <= 0:
        return f"alpha={s['alpha']}: expected a positive number (the update is scaled by alpha / r)"
    if isinstance(s["dropout"], bool) or not isinstance(s["dropout"], (int, float)) or not 0 <= s["dropout"] < 1:
        return f"dropout={s['dropout']}: expected a fraction in [0, 1)"
    targets = s["target_modules"]
    if targets is not None and not (
        targets == "all-linear"
        or (not isinstance(targets, str) and len(targets) and all(isinstance(t, str) and t for t in targets))
    ):
        return f"target_modules={targets}: expected null, all-linear or a non-empty list of module names"
    return None


def require_peft() -> None:
    """Raise :class:`ConfigError` (one line, exit 2 from a command) when ``peft`` is not installed."""
    try:
        import peft  # noqa: F401
    except ImportError:
        raise ConfigError(f"encoder.lora is set but the peft package is not installed: {INSTALL}") from None


def settings(value: Any) -> dict | None:
    """``encoder.lora`` with its defaults filled in (None: no adapters); :class:`ConfigError` when invalid."""
    if value is None:
        return None
    problem = lora_problem(value)
    if problem:
        raise ConfigError(f"encoder.lora: {problem}")
    s = {**DEFAULTS, **{k: v for k, v in dict(value).items()}}
    if s["target_modules"] is not None and not isinstance(s["target_modules"], str):
        s["target_modules"] = [str(t) for t in s["target_modules"]]
    return s


def is_peft_model(model: nn.Module | None) -> bool:
    """``model`` is a peft model (when peft was never imported, nothing can be one)."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def targets(model: nn.Module, target_modules: list[str] | str | None) -> list[str] | str:
    """The module names that get adapters: ``target_modules``, else the architecture's default."""
    if target_modules is not None:
        return target_modules
    return DEFAULT_TARGETS.get(getattr(model.config, "model_type", ""), "all-linear")


def add_adapters(model: nn.Module, s: dict) -> nn.Module:
    """``model`` wrapped by peft with fresh adapters of settings ``s`` (:func:`settings`); only the
    adapters are trainable. The pooler head, which dr's pooling does not use, gets none."""
    require_peft()
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=int(s["r"]),
        lora_alpha=float(s["alpha"]),
        lora_dropout=float(s["dropout"]),
        target_modules=targets(model, s["target_modules"]),
        exclude_modules=["pooler.dense"] if isinstance(getattr(model, "pooler", None), nn.Module) else None,
        bias="none",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as e:  # e.g. target modules that the model does not have
        raise ConfigError(f"encoder.lora.target_modules={config.target_modules}: {str(e).splitlines()[0]}") from None


def is_adapter_folder(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def load_adapter_tower(path: str | Path) -> nn.Module:
    """A tower exported with ``export.lora=adapter``: its base model (named in ``adapter_config.json``)
    with the adapters on top, in eval mode."""
    from transformers import AutoModel

    from dr.models.persistence import resolve_model_name

    require_peft()
    from peft import PeftModel

    base = json.loads((Path(path) / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
    return PeftModel.from_pretrained(AutoModel.from_pretrained(resolve_model_name(base)), str(path))


def adapter_settings(model: nn.Module) -> dict:
    """The :func:`settings` of a peft model's adapters."""
    config = model.peft_config["default"]
    modules = config.target_modules
    return {
        "r": int(config.r),
        "alpha": config.lora_alpha,
        "dropout": float(config.lora_dropout),
        "target_modules": sorted(modules) if isinstance(modules, (set, list)) else modules,
    }


def merged_tower(model: nn.Module | None) -> nn.Module | None:
    """A plain copy of ``model`` with its adapters merged into the weights (``W + (alpha / r)·B·A``);
    ``model`` itself when it has none. The model is left as it is (a merge in place and an unmerge
    would change the frozen weights in their last bits)."""
    if not is_peft_model(model):
        return model
    return copy.deepcopy(model).merge_and_unload()


def merged(encoder):
    """``encoder`` with plain towers whose weights hold the merged adapters (a new encoder);
    ``encoder`` itself when it has no adapters."""
    if encoder.lora is None:
        return encoder
    return type(encoder)(
        merged_tower(encoder.query_model),
        encoder.tokenizer,
        passage_model=merged_tower(encoder.passage_model),
        pooling=encoder.pooling,
        normalize=encoder.normalize,
        similarity=encoder.similarity,
        query_max_length=encoder.query_max_length,
        passage_max_length=encoder.passage_max_length,
        truncate_dim=encoder.truncate_dim,
    )


def frozen_names(module: nn.Module) -> set[str]:
    """The ``state_dict`` names of ``module`` that are not trainable parameters (the frozen base
    weights and the buffers of a model with adapters)."""
    return {
        name
        for name, value in module.state_dict(keep_vars=True).items()
        if not (isinstance(value, nn.Parameter) and value.requires_grad)
    }


def load_trained_weights(encoder, weights: dict, source: str) -> None:
    """Load a ``dr-train`` checkpoint's encoder weights into ``encoder``: all of them, or, for
    adapters, the adapters (the frozen weights are the base model's, which ``encoder`` holds)."""
    if encoder.lora is None:
        encoder.load_state_dict(weights)
        return
    result = encoder.load_state_dict(weights, strict=False)
    missing = sorted(set(result.missing_keys) - frozen_names(encoder))
    if missing or result.unexpected_keys:
        what = f"missing {missing[0]}" if missing else f"unexpected {result.unexpected_keys[0]}"
        raise ConfigError(
            f"{source}: expected the adapters of encoder.lora={encoder.lora} ({what}); "
            "was the checkpoint trained with the same encoder.lora?"
        )


def save_adapters(encoder, out: Path) -> None:
    """Write each tower's adapter files and tokenizer (``query/`` and ``passage/`` for two towers)
    and ``dr_config.json``; the base weights stay where ``adapter_config.json`` says they are."""
    from dr.data.io import write_json
    from dr.models.persistence import DR_CONFIG

    towers = {"": encoder.query_model} if encoder.shared else {"query": encoder.query_model}
    if not encoder.shared:
        towers["passage"] = encoder.passage_model
    for sub, model in towers.items():
        model.save_pretrained(str(out / sub))
        encoder.tokenizer.save_pretrained(out / sub)
    write_json(out / DR_CONFIG, encoder.config_dict())


def describe(s: dict | None, merged_weights: bool) -> str:
    """A sentence for the model card: the adapters' settings and how they ship."""
    if not s:
        return ""
    target = s.get("target_modules") or "the architecture's attention and feed-forward linear layers"
    shipped = (
        "merged into the weights: the folder is a plain model"
        if merged_weights
        else "kept as adapter files (`adapter_config.json`, `adapter_model.safetensors`) on top of the base model "
        "that `adapter_config.json` names: loading needs `peft` and the base model"
    )
    return (
        f"Fine-tuned with LoRA adapters (Hu et al. 2022; rank r = {s['r']}, alpha = {s['alpha']:g}, "
        f"dropout {s['dropout']:g}, on {', '.join(target) if isinstance(target, list) else target}), {shipped}."
    )
