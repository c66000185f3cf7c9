"""Decoder backbones (Llama, Qwen2, Mistral, ...) as dual encoders, as RepLLaMA does (Ma et al.
2023, "Fine-Tuning LLaMA for Multi-Stage Text Retrieval", Sec. 3.1): the embedding is the last
layer's state of an end-of-sequence token appended to the text (``"query: {q}</s>"``), which under
causal attention is the only position that has seen the whole text.

- **Pooling** ``last`` (:func:`dr.models.base.pool`): the last position whose attention mask is 1,
  whichever side the padding is on (sentence-transformers' ``lasttoken``).
- **Padding** on the right, always (:func:`prepare_tokenizer` sets the tokenizer's side). Under
  causal attention a real token never attends to a later pad, so a right-padded text's states are
  exactly those of the text alone; left padding is what generation needs (new tokens go at the
  end), not embedding, and dr's length buckets (``module.length_buckets``) cut padded batches to
  their longest text from the right. A tokenizer without a pad token gets its eos token as pad
  (as Tevatron does): the pads are masked out, their id does not matter.
- **The eos token** is appended by the tokenizer itself (``encoder.append_eos``; default: with
  ``last`` pooling): its post-processor is set to end every text with eos, after the truncation,
  which keeps room for it (Tevatron truncates to ``max_len - 1`` and appends the id). Because the
  change is the tokenizer's, ``tokenizer.json`` carries it into the export, and
  ``SentenceTransformer(path)``, dr's ONNX backend and every other tokenising path append the
  same token. A tokenizer that already ends texts with eos (Qwen3-Embedding's) is left as it is.
- **No key-value cache**: a forward pass of an embedder never decodes, so ``use_cache=False``
  (:func:`forward_kwargs`) keeps the model from building one per layer.
"""

from __future__ import annotations

import inspect
import logging

from torch import nn

from dr.config import ConfigError

log = logging.getLogger(__name__)

_PROBE = "a b"  # any short text: the tokens of its ends show the special tokens the tokenizer adds


def _ids(tokenizer) -> list[int]:
    return list(tokenizer(_PROBE, truncation=False)["input_ids"])


def ends_with_eos(tokenizer) -> bool:
    """Whether ``tokenizer`` already ends a text with its eos token."""
    eos = tokenizer.eos_token_id
    ids = _ids(tokenizer)
    return eos is not None and bool(ids) and ids[-1] == eos


def append_eos_token(tokenizer) -> None:
    """Make ``tokenizer`` end every text with its eos token (kept within ``max_length`` when truncating).

    The bos token, when the tokenizer adds one, is kept. Raises :class:`ConfigError` when the
    tokenizer has no eos token, or when its special tokens cannot be rebuilt as ``[bos] text eos``
    (a BERT-style ``[CLS] text [SEP]`` tokenizer: a decoder setting on an encoder's tokenizer)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError(
            "encoder.append_eos=true: the tokenizer has no eos token; expected a decoder's tokenizer "
            "(or encoder.append_eos=false)"
        )
    if ends_with_eos(tokenizer):
        return
    before = _ids(tokenizer)
    if not hasattr(tokenizer, "backend_tokenizer") or not hasattr(type(tokenizer), "add_eos_token"):
        raise ConfigError(
            f"encoder.append_eos=true: {type(tokenizer).__name__} is not a fast (tokenizers) tokenizer; "
            "expected one whose post-processor can add the eos token (or encoder.append_eos=false)"
        )
    bos = tokenizer.bos_token_id
    tokenizer.add_bos_token = bos is not None and before[:1] == [bos]
    tokenizer.add_eos_token = True  # rebuilds the post-processor: [bos] $A eos
    if _ids(tokenizer) != before + [eos]:
        raise ConfigError(
            f"encoder.append_eos=true: {type(tokenizer).__name__} adds other special tokens than a bos "
            "token, which cannot be kept when appending eos; expected a decoder's tokenizer "
            "(or encoder.append_eos=false)"
        )


def prepare_tokenizer(tokenizer, append_eos: bool) -> None:
    """Right padding, a pad token (the eos token when there is none), and with ``append_eos`` an eos
    token at the end of every text (:func:`append_eos_token`). Changes ``tokenizer`` in place, so
    that saving it carries the settings."""
    if tokenizer.padding_side != "right":
        log.info(
            "padding on the right (the tokenizer said %s): exact for causal and bidirectional models",
            tokenizer.padding_side,
        )
        tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigError(
                "the tokenizer has neither a pad token nor an eos token to pad with; expected one of them"
            )
        tokenizer.pad_token = tokenizer.eos_token
    if append_eos:
        append_eos_token(tokenizer)


def forward_kwargs(model: nn.Module) -> dict:
    """``{"use_cache": False}`` for a model whose forward takes ``use_cache`` (decoders; BERT too,
    where it is off already), else nothing."""
    return {"use_cache": False} if "use_cache" in inspect.signature(type(model).forward).parameters else {}
