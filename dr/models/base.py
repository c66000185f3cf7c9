"""The encoder contract: what every inference encoder of dr implements.

:class:`Encoder` is the interface that evaluation, search, mining, clustering, the index refresh
and the export read: :meth:`Encoder.encode` (texts to a float32 ``[N, dim]`` array),
:meth:`Encoder.config_dict` (the settings the embeddings depend on), :attr:`Encoder.dim` and the
similarity. :class:`dr.models.BiEncoder` (PyTorch, trainable) and :class:`dr.models.OnnxEncoder`
(onnxruntime) implement it; each fills in one hook, :meth:`Encoder._batches`, that embeds one
padded batch. The tokenising, the length-sorted batching and the progress bar are here, once.
"""

from __future__ import annotations

import abc
import contextlib
from typing import Callable, Iterable, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from dr.data.limits import cut_texts

Kind = Literal["query", "passage"]
Pooling = Literal["cls", "mean", "last"]
Similarity = Literal["dot", "cos"]


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool token states ``[B, L, H]`` into ``[B, H]``: the first token, the masked mean, or the
    last real token (``last``: the last position whose mask is 1, whichever side the padding is on;
    sentence-transformers' ``lasttoken``, the pooling of decoder backbones, :mod:`dr.models.decoder`)."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    if pooling == "last":
        # int32, as sentence-transformers: onnxruntime's CPU ArgMax/ReduceMax take no int64 in every opset
        seen, from_end = attention_mask.to(torch.int32).flip(1).max(1)
        index = torch.where(seen == 0, torch.zeros_like(from_end), hidden.shape[1] - 1 - from_end)
        return torch.gather(hidden, 1, index.long().view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])).squeeze(1)
    raise ValueError(f"unknown pooling {pooling!r}: expected 'cls', 'mean' or 'last'")


def check_prompt(name: str, value) -> str | None:
    """A query or passage prompt as kept by an encoder: a string, or None for none ("" is none too).
    Anything else raises a ValueError naming the setting (``encoder.query_prompt`` ...)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"encoder.{name}={value!r}: expected a string (the text put before each text) or null")
    return value


def autocast_context(device: torch.device | str, bf16: bool):
    """bf16 autocast on CPU or CUDA when asked; a no-op context otherwise."""
    if not bf16:
        return contextlib.nullcontext()
    device_type = torch.device(device).type
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)


class Encoder(abc.ABC):
    """Queries and passages to vectors (see the module docstring).

    Implementations set ``tokenizer``, ``pooling``, ``normalize``, ``similarity``,
    ``query_max_length``, ``passage_max_length`` and the prompts, and provide :attr:`dim`,
    :attr:`shared` and :meth:`_batches`.

    ``query_prompt`` and ``passage_prompt`` (an instruction such as E5's ``"query: "``) are put
    before every text of their kind by :meth:`token_ids`, the one place where any encoder of dr
    (training, validation, evaluation, mining, refresh, clustering, ``dr-encode``, ONNX) turns
    texts into tokens; the prompt's tokens count against the maximum length, as in
    sentence-transformers, which tokenises ``prompt + text`` too.
    """

    tokenizer: object
    pooling: str
    normalize: bool
    similarity: str
    query_max_length: int
    passage_max_length: int
    query_prompt: str | None = None
    passage_prompt: str | None = None

    @property
    @abc.abstractmethod
    def dim(self) -> int:
        """The embedding dimension."""

    @property
    @abc.abstractmethod
    def shared(self) -> bool:
        """One tower for queries and passages."""

    def config_dict(self) -> dict:
        """The settings the embeddings depend on (written as ``dr_config.json`` by an export)."""
        return {
            "pooling": self.pooling,
            "normalize": self.normalize,
            "similarity": self.similarity,
            "query_max_length": self.query_max_length,
            "passage_max_length": self.passage_max_length,
            "shared": self.shared,
            "dim": self.dim,
            # only when set: the keys of an encoder without prompts (and caches keyed on them) stay as they were
            **{k: v for k, v in (("query_prompt", self.query_prompt), ("passage_prompt", self.passage_prompt)) if v},
        }

    def max_length(self, kind: Kind) -> int:
        return self.query_max_length if kind == "query" else self.passage_max_length

    def prompt(self, kind: Kind) -> str:
        """The text put before each text of ``kind`` ("" without a prompt)."""
        return (self.query_prompt if kind == "query" else self.passage_prompt) or ""

    def token_ids(self, texts: Iterable[str], kind: Kind, max_length: int | None = None, **kwargs):
        """``prompt + text`` for each text, tokenised and cut at ``max_length`` tokens (default: the
        kind's), the prompt's tokens included; ``kwargs`` go to the tokenizer (default: unpadded lists).
        Texts are first cut to a few times the maximum length in characters (dr.data.limits): a 10 MB
        line is not tokenised whole."""
        max_length = self.max_length(kind) if max_length is None else max_length
        prompt = self.prompt(kind)
        texts = [prompt + t for t in texts] if prompt else list(texts)
        return self.tokenizer(cut_texts(texts, max_length), truncation=True, max_length=max_length, **kwargs)

    @abc.abstractmethod
    def _batches(
        self, kind: Kind, bf16: bool, device: str | torch.device | None
    ) -> contextlib.AbstractContextManager[Callable[[dict], np.ndarray]]:
        """A context in which a function embeds one batch of tokenised, unpadded features
        (``{"input_ids": [...], ...}``) into a float32 ``[n, dim]`` array."""

    def encode(
        self,
        texts: Iterable[str],
        kind: Kind,
        batch_size: int = 64,
        bf16: bool = False,
        show_progress: bool = True,
        device: str | torch.device | None = None,
    ) -> np.ndarray:
        """Encode texts into a float32 ``[N, dim]`` array, in the input order.

        Texts are tokenised once, sorted by length and batched, so each batch pads to its own
        longest member instead of the global maximum. ``bf16`` and ``device`` are the torch
        encoder's (an onnxruntime encoder runs on the CPU in its own precision).
        """
        if kind not in ("query", "passage"):
            raise ValueError(f"kind must be 'query' or 'passage', got {kind!r}")
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        encoded = self.token_ids(texts, kind, padding=False)
        lengths = np.array([len(ids) for ids in encoded["input_ids"]])
        order = np.argsort(-lengths, kind="stable")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        bar = tqdm(total=len(texts), desc=f"encode {kind}s", unit=kind[0], disable=not show_progress, mininterval=2)
        try:
            with self._batches(kind, bf16, device) as embed:
                for start in range(0, len(texts), batch_size):
                    idx = order[start : start + batch_size]
                    out[idx] = embed({key: [encoded[key][i] for i in idx] for key in encoded.keys()})
                    bar.update(len(idx))
        finally:
            bar.close()
        return out

    def encode_queries(self, texts: Iterable[str], **kwargs) -> np.ndarray:
        return self.encode(texts, "query", **kwargs)

    def encode_passages(self, texts: Iterable[str], **kwargs) -> np.ndarray:
        return self.encode(texts, "passage", **kwargs)
