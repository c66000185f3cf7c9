"""Dual encoder over any Hugging Face ``AutoModel``.

A :class:`BiEncoder` maps queries and passages to vectors with one shared transformer or two
separate towers, pools the token states (``cls`` or ``mean``), optionally L2-normalises them and
scores with a dot product (cosine when normalised). Queries and passages have their own maximum
lengths. This module holds the model and its forward pass; loading and saving live in
:mod:`dr.models.persistence`, the training levers in :mod:`dr.models.levers` and the batched
inference loop in the encoder contract, :mod:`dr.models.base`.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from dr.models.base import Encoder, Kind, Pooling, Similarity, autocast_context, check_prompt, pool
from dr.models.decoder import forward_kwargs, prepare_tokenizer
from dr.models.levers import SpeedLevers
from dr.models.persistence import DR_CONFIG, PACKAGED_MINILM_ALIASES, Persistence, resolve_model_name

__all__ = ["DR_CONFIG", "PACKAGED_MINILM_ALIASES", "BiEncoder", "autocast_context", "pool", "resolve_model_name"]


class BiEncoder(Persistence, SpeedLevers, Encoder, nn.Module):
    """Query and passage encoders (shared or separate) with pooling and a similarity function.

    Args:
        query_model: the query tower (any ``transformers`` encoder).
        tokenizer: the tokenizer, shared by both towers.
        passage_model: the passage tower; ``None`` shares ``query_model``.
        pooling: ``"cls"`` (first token), ``"mean"`` (masked mean of token states) or ``"last"``
            (the last real token: decoder backbones, :mod:`dr.models.decoder`).
        normalize: L2-normalise embeddings (then ``dot`` equals cosine).
        similarity: ``"dot"`` or ``"cos"``; ``"cos"`` always normalises.
        query_max_length / passage_max_length: truncation lengths in tokens.
        query_prompt / passage_prompt: text put before every query / passage (an instruction, e.g.
            E5's ``"query: "``), everywhere dr tokenises (:meth:`~dr.models.base.Encoder.token_ids`);
            its tokens count against the max length. ``None`` or ``""``: none.
        append_eos: end every text with the tokenizer's eos token (RepLLaMA; :mod:`dr.models.decoder`);
            ``None``: with ``last`` pooling when the tokenizer has one. Texts are padded on the right.
        truncate_dim: keep the first ``truncate_dim`` components of each pooled embedding, then
            normalise when ``normalize`` (a Matryoshka-trained model, Kusupati et al. 2022;
            sentence-transformers' ``truncate_dim``). ``None`` keeps the full dimension.
        lora: the settings of the LoRA adapters the towers carry (peft models, :mod:`dr.models.lora`);
            ``None`` for plain towers. :meth:`from_pretrained` adds the adapters.

    Loading and saving come from :class:`~dr.models.persistence.Persistence`
    (:meth:`from_pretrained`, :meth:`load`, :meth:`save_pretrained`), the training levers from
    :class:`~dr.models.levers.SpeedLevers`, and :meth:`encode` from the encoder contract
    (:class:`~dr.models.base.Encoder`).
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
        truncate_dim: int | None = None,
        query_prompt: str | None = None,
        passage_prompt: str | None = None,
        append_eos: bool | None = None,
        lora: dict | None = None,
    ):
        super().__init__()
        if pooling not in ("cls", "mean", "last"):
            raise ValueError(f"pooling must be 'cls', 'mean' or 'last', got {pooling!r}")
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
        if append_eos is None:  # a decoder's default (RepLLaMA): end each text with eos, pool that token
            append_eos = pooling == "last" and tokenizer.eos_token is not None
        prepare_tokenizer(tokenizer, bool(append_eos))  # right padding, a pad token, the eos (dr.models.decoder)
        self.append_eos = bool(append_eos)
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = normalize or similarity == "cos"
        self.similarity = similarity
        self.query_max_length = query_max_length
        self.passage_max_length = passage_max_length
        self.query_prompt = check_prompt("query_prompt", query_prompt)
        self.passage_prompt = check_prompt("passage_prompt", passage_prompt)
        hidden = int(query_model.config.hidden_size)
        if truncate_dim is not None and not 0 < int(truncate_dim) <= hidden:
            raise ValueError(f"truncate_dim must be in [1, {hidden}] (the model's hidden size), got {truncate_dim}")
        self.truncate_dim = None if truncate_dim is None or int(truncate_dim) == hidden else int(truncate_dim)
        self.lora = lora
        self.set_cpu_linear()  # fp32 products on CPU through oneDNN (DR_CPU_LINEAR=aten: PyTorch's own)

    @property
    def shared(self) -> bool:
        return self.passage_model is None

    @property
    def dim(self) -> int:
        """The embedding dimension: ``truncate_dim`` when set, else the model's hidden size."""
        return self.truncate_dim or int(self.query_model.config.hidden_size)

    def config_dict(self) -> dict:
        """The contract's settings, plus ``truncate_dim`` when set (older folders and run caches keep their keys)."""
        return {
            **super().config_dict(),
            **({"truncate_dim": self.truncate_dim} if self.truncate_dim is not None else {}),
            # with last pooling always (its default is on), else only when on: older folders keep their keys
            **({"append_eos": self.append_eos} if self.append_eos or self.pooling == "last" else {}),
        }

    # ------------------------------------------------------------------ tokenising and embedding
    def tokenize(self, texts: list[str], kind: Literal["query", "passage"], max_length: int | None = None) -> dict:
        """Tokenise to tensors (the kind's prompt first, :meth:`token_ids`), padded to the batch's
        longest text, cut at the kind's max length."""
        return self.token_ids(texts, kind, max_length, padding=True, return_tensors="pt")

    def _embed(self, model: PreTrainedModel, batch: dict, buckets: int = 1) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        if buckets > 1 and len(inputs["input_ids"]) > 1:
            return self._embed_bucketed(model, inputs, buckets)
        hidden = model(**inputs, **forward_kwargs(model)).last_hidden_state
        emb = pool(hidden, inputs["attention_mask"], self.pooling)
        if self.truncate_dim is not None:  # Matryoshka: the first dims, normalised after the cut
            emb = emb[:, : self.truncate_dim]
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
    @contextlib.contextmanager
    def _batches(self, kind: Kind, bf16: bool, device: str | torch.device | None) -> Iterator:
        """Eval mode and inference mode while :meth:`encode` runs (the training mode is put back);
        each batch padded to its longest text, on ``device`` (default: the weights'), under bf16
        autocast when asked."""
        device = torch.device(device) if device is not None else next(self.parameters()).device
        embed = self.embed_queries if kind == "query" else self.embed_passages

        def run(features: dict) -> np.ndarray:
            batch = self.tokenizer.pad(features, padding=True, return_tensors="pt")
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast_context(device, bf16):
                return embed(batch).float().cpu().numpy()

        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                yield run
        finally:
            self.train(was_training)
