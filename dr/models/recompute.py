"""Selective recomputation of the feed-forward block: less activation memory for little compute.

A transformer layer's feed-forward block ``y = W2 act(W1 x + b1) + b2`` stores, for the backward
pass, its input ``x`` (for ``W1``'s gradient), the pre-activation ``h = W1 x + b1`` (for the
activation's gradient) and the activation ``a = act(h)`` (for ``W2``'s gradient). ``h`` and ``a``
are ``intermediate_size`` wide (4x the hidden size in BERT), so they are about half of everything
a BERT layer keeps for the backward pass (h + a = 3,072 of about 5,950 values per token and layer
for all-MiniLM-L6-v2).

This follows the selective activation recomputation of Korthikanti et al. 2022 ("Reducing
Activation Recomputation in Large Transformer Models", Sec. 4.2: recompute the parts of a layer
whose activations are large and cheap to recompute, instead of the whole layer as full
checkpointing does). Here the cheap-to-recompute part is the feed-forward block's:

- ``"activation"``: keep ``x`` and ``h``, recompute ``a = act(h)`` in the backward pass
  (an element-wise op: almost free) -- saves ``a``, a quarter of the layer's activations.
- ``"full"``: keep only ``x``, recompute ``h = W1 x + b1`` and ``a`` in the backward pass (one
  extra matrix product per layer, about 10% of a training step's arithmetic) -- saves ``h`` and
  ``a``, about half of the layer's activations.

The gradients are the same as without recomputation (the same operations on the same values; no
randomness inside the block: the dropout after ``W2`` stays outside). Under autocast the block
runs in the autocast dtype in both passes, as ``nn.Linear`` would.

A feed-forward block whose dense layers carry LoRA adapters (:mod:`dr.models.lora`) is not a
supported layout (the fused block multiplies the plain weights): it is left as it is, and the
training module says so.

Supported layouts (found by attribute, so BERT-family models -- BERT, RoBERTa, XLM-R, ELECTRA,
MiniLM, MPNet-style ``intermediate``/``output`` -- DistilBERT's ``FFN``, and the gated blocks of
decoders, ``*MLP`` with ``gate_proj``/``up_proj``/``down_proj``/``act_fn`` (Llama, Mistral,
Qwen2), which are checkpointed rather than chunked, :class:`_GatedForward`):

- a layer with ``intermediate.dense``, ``intermediate.intermediate_act_fn``, ``output.dense``,
  ``output.dropout``, ``output.LayerNorm`` and a ``feed_forward_chunk`` method;
- a module with ``lin1``, ``activation``, ``lin2``, ``dropout`` and an ``ff_chunk`` method.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.utils.checkpoint
from torch import nn

from dr.models.cpu_linear import matmul_t

Recompute = Literal["none", "activation", "full"]
MODES = ("none", "activation", "full")


class _FeedForward(torch.autograd.Function):
    """``W2 act(W1 x + b1) + b2`` over rows of ``chunk`` tokens, saving ``x`` (and ``h`` when
    ``keep_h``) for the backward pass, which recomputes the rest one chunk at a time."""

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, act: Callable, keep_h: bool, chunk: int):
        device_type = x.device.type
        autocast = torch.is_autocast_enabled(device_type)
        dtype = torch.get_autocast_dtype(device_type) if autocast else None
        rows = x.reshape(-1, x.shape[-1])
        hs, ys = [], []
        for part in rows.split(chunk):
            h = matmul_t(part, w1, b1)
            ys.append(matmul_t(act(h), w2, b2))
            if keep_h:
                hs.append(h)
            del h
        y = (ys[0] if len(ys) == 1 else torch.cat(ys)).reshape(*x.shape[:-1], w2.shape[0])
        ctx.act, ctx.device_type, ctx.autocast, ctx.dtype, ctx.chunk = act, device_type, autocast, dtype, chunk
        ctx.x_shape, ctx.x_dtype = x.shape, x.dtype
        saved_x = rows.to(dtype) if autocast else rows  # what the product multiplied
        saved_h = (hs[0] if len(hs) == 1 else torch.cat(hs)) if keep_h else None
        ctx.save_for_backward(saved_x, saved_h, w1, b1, w2, b2)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, h_all, w1, b1, w2, b2 = ctx.saved_tensors
        need_x, need_w1, need_b1, need_w2, need_b2 = ctx.needs_input_grad[:5]
        grad_rows = grad_y.reshape(-1, grad_y.shape[-1])
        grad_x = torch.empty(x.shape, dtype=ctx.x_dtype, device=x.device) if need_x else None
        sums = {}  # weight and bias gradients, accumulated over chunks in float32

        def add(name, value):
            sums[name] = value.float() if name not in sums else sums[name] + value

        for start in range(0, x.shape[0], ctx.chunk):
            part = slice(start, start + ctx.chunk)
            xc = x[part]
            with torch.autocast(ctx.device_type, dtype=ctx.dtype or torch.bfloat16, enabled=ctx.autocast):
                if h_all is None:
                    with torch.no_grad():
                        h = matmul_t(xc, w1, b1)
                else:
                    h = h_all[part]
                with torch.enable_grad():
                    h = h.detach().requires_grad_(True)
                    a = ctx.act(h)
            g = grad_rows[part].to(a.dtype)
            if need_w2:
                add("w2", g.t() @ a.detach())
            if need_b2 and b2 is not None:
                add("b2", g.sum(0))
            (gh,) = torch.autograd.grad(a, h, matmul_t(g, w2.to(g.dtype).t()))
            del a, h
            if need_w1:
                add("w1", gh.t() @ xc.to(gh.dtype))
            if need_b1 and b1 is not None:
                add("b1", gh.sum(0))
            if need_x:
                grad_x[part] = matmul_t(gh, w1.to(gh.dtype).t())
        grads = [
            None if name not in sums else sums[name].to(ref.dtype)
            for name, ref in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2))
        ]
        if grad_x is not None:
            grad_x = grad_x.reshape(ctx.x_shape)
        return (grad_x, *grads, None, None, None)


#: tokens per chunk of the recomputed feed-forward block: its transient [tokens, 4H] tensors are
#: this many rows (25 MB each in fp32 for MiniLM's 1,536) instead of the whole batch's
CHUNK_TOKENS = 4096


def feed_forward(
    x: torch.Tensor, up: nn.Linear, act: Callable, down: nn.Linear, mode: Recompute, chunk_tokens: int = CHUNK_TOKENS
) -> torch.Tensor:
    """``down(act(up(x)))``, recomputing ``act`` (``mode="activation"``) or ``up`` and ``act``
    (``"full"``) in the backward pass, ``chunk_tokens`` tokens at a time; plain modules when no
    gradient is needed or ``mode="none"``."""
    if mode == "none" or not torch.is_grad_enabled():
        return down(act(up(x)))
    return _FeedForward.apply(
        x, up.weight, up.bias, down.weight, down.bias, act, mode == "activation", int(chunk_tokens)
    )


class _BertChunk:
    """BertLayer.feed_forward_chunk = BertOutput(BertIntermediate(x), x), with the two dense layers
    fused into :func:`feed_forward`. A plain object, not a bound method, so that the layer pickles
    (``ddp_spawn`` sends the model to its processes) and deep-copies with its setting."""

    def __init__(self, layer: nn.Module, mode: Recompute, chunk_tokens: int):
        self.layer, self.mode, self.chunk_tokens = layer, mode, chunk_tokens

    def __call__(self, attention_output: torch.Tensor) -> torch.Tensor:
        inter, out = self.layer.intermediate, self.layer.output
        hidden = feed_forward(
            attention_output, inter.dense, inter.intermediate_act_fn, out.dense, self.mode, self.chunk_tokens
        )
        return out.LayerNorm(out.dropout(hidden) + attention_output)


class _DistilBertChunk(_BertChunk):
    """DistilBERT's FFN.ff_chunk = dropout(lin2(activation(lin1(x)))), fused as above."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        ffn = self.layer
        return ffn.dropout(feed_forward(x, ffn.lin1, ffn.activation, ffn.lin2, self.mode, self.chunk_tokens))


def _is_bert_layer(module: nn.Module) -> bool:
    inter, out = getattr(module, "intermediate", None), getattr(module, "output", None)
    return (
        hasattr(type(module), "feed_forward_chunk")
        and isinstance(getattr(inter, "dense", None), nn.Linear)
        and callable(getattr(inter, "intermediate_act_fn", None))
        and isinstance(getattr(out, "dense", None), nn.Linear)
        and isinstance(getattr(out, "LayerNorm", None), nn.Module)
        and isinstance(getattr(out, "dropout", None), nn.Module)
    )


def _is_distilbert_ffn(module: nn.Module) -> bool:
    return (
        hasattr(type(module), "ff_chunk")
        and isinstance(getattr(module, "lin1", None), nn.Linear)
        and isinstance(getattr(module, "lin2", None), nn.Linear)
        and callable(getattr(module, "activation", None))
        and isinstance(getattr(module, "dropout", None), nn.Module)
    )


def _is_gated_mlp(module: nn.Module) -> bool:
    """A decoder's gated feed-forward block, ``down(act(gate(x)) * up(x))`` (Llama, Mistral, Qwen2)."""
    return (
        type(module).__name__.endswith("MLP")
        and all(isinstance(getattr(module, name, None), nn.Linear) for name in ("gate_proj", "up_proj", "down_proj"))
        and callable(getattr(module, "act_fn", None))
    )


def _gate(act: Callable, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return act(gate) * up


class _GatedForward:
    """A gated feed-forward block's forward under :func:`torch.utils.checkpoint.checkpoint` (non-reentrant):
    ``"full"`` keeps only the block's input and runs the whole block again in the backward pass;
    ``"activation"`` keeps the gate and up projections and recomputes ``act(gate) * up``, the two
    ``intermediate_size``-wide tensors the down projection and the activation's gradient would keep.
    No randomness inside the block; a plain object in the instance's ``__dict__`` (pickles and deep-copies)."""

    def __init__(self, module: nn.Module, mode: Recompute):
        self.module, self.mode = module, mode

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        if not torch.is_grad_enabled():
            return type(m).forward(m, x)
        if self.mode == "full":
            return torch.utils.checkpoint.checkpoint(type(m).forward, m, x, use_reentrant=False)
        inner = torch.utils.checkpoint.checkpoint(_gate, m.act_fn, m.gate_proj(x), m.up_proj(x), use_reentrant=False)
        return m.down_proj(inner)


def set_feed_forward_recompute(model: nn.Module, mode: Recompute, chunk_tokens: int = CHUNK_TOKENS) -> int:
    """Make every supported feed-forward block of ``model`` recompute in ``mode``, ``chunk_tokens``
    tokens at a time; returns how many blocks were set. ``"none"`` restores the model's own code. The weights and the
    state dict are
    unchanged (the blocks' chunk methods are replaced on the instances)."""
    if mode not in MODES:
        raise ValueError(f"feed-forward recompute must be one of {MODES}, got {mode!r}")
    if int(chunk_tokens) < 1:
        raise ValueError(f"chunk_tokens must be a positive integer, got {chunk_tokens}")
    changed = 0
    for module in model.modules():
        for matches, name, chunk in (
            (_is_bert_layer, "feed_forward_chunk", _BertChunk),
            (_is_distilbert_ffn, "ff_chunk", _DistilBertChunk),
        ):
            if not matches(module):
                continue
            if mode == "none":
                module.__dict__.pop(name, None)
            else:
                module.__dict__[name] = chunk(module, mode, int(chunk_tokens))
            changed += 1
        if _is_gated_mlp(module):  # a decoder's block: checkpointed, not chunked (chunk_tokens does not apply)
            if mode == "none":
                module.__dict__.pop("forward", None)
            else:
                module.__dict__["forward"] = _GatedForward(module, mode)
            changed += 1
    return changed


# ---------------------------------------------------------------------------- self-attention
#: the projections of a self-attention module, by layout: BERT-family, DistilBERT, MPNet, decoders (Llama, Qwen2)
_PROJECTIONS = (("query", "key", "value"), ("q_lin", "k_lin", "v_lin"), ("q", "k", "v"), ("q_proj", "k_proj", "v_proj"))


class _RecomputedForward:
    """A self-attention module's forward under :func:`torch.utils.checkpoint.checkpoint`
    (non-reentrant, RNG state replayed): only the module's inputs are kept for the backward pass,
    which runs the query/key/value projections and the attention kernel again. A plain object in
    the instance's ``__dict__`` (pickles and deep-copies with the module); without a gradient the
    module's own forward runs."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __call__(self, *args, **kwargs):
        forward = type(self.module).forward
        if not torch.is_grad_enabled():
            return forward(self.module, *args, **kwargs)
        return torch.utils.checkpoint.checkpoint(
            forward, self.module, *args, use_reentrant=False, preserve_rng_state=True, **kwargs
        )


def _is_linear(module: nn.Module | None) -> bool:
    """An ``nn.Linear``, or one with LoRA adapters (peft's layer keeps it as ``base_layer``)."""
    return isinstance(module, nn.Linear) or isinstance(getattr(module, "base_layer", None), nn.Linear)


def _is_self_attention(module: nn.Module) -> bool:
    """BERT's ``*SelfAttention``, or a decoder's ``*Attention`` with ``q_proj``/``k_proj``/``v_proj``
    (its forward takes the rotary embeddings and the mask as arguments, which the checkpoint keeps)."""
    kind = type(module).__name__
    decoder = kind.endswith("Attention") and _is_linear(getattr(module, "q_proj", None))
    return (kind.endswith("SelfAttention") or decoder) and any(
        all(_is_linear(getattr(module, name, None)) for name in names) for names in _PROJECTIONS
    )


def set_attention_recompute(model: nn.Module, enabled: bool) -> int:
    """Recompute every self-attention module of ``model`` in the backward pass (``enabled``) or
    restore the model's own code; returns how many modules were set.

    Selective recomputation (Korthikanti et al. 2022, Sec. 4.2) applied to the attention
    sub-block: a BERT layer keeps the query, key and value projections and the attention output
    for the backward pass of ``scaled_dot_product_attention`` (4 of the about 9.5 ``[tokens,
    hidden]`` tensors a layer stores once the feed-forward block is recomputed, see
    :func:`set_feed_forward_recompute`); recomputing them costs the three projections and the
    attention forward again (about a tenth of a training step's arithmetic at 256 tokens). The
    gradients are those of the plain pass (the same operations on the same inputs, dropout masks
    replayed from the saved RNG state). Weights and state dict are unchanged. Projections with
    LoRA adapters (:mod:`dr.models.lora`) are recomputed with them, their dropout replayed too."""
    changed = 0
    for module in model.modules():
        if not _is_self_attention(module):
            continue
        if enabled:
            module.__dict__["forward"] = _RecomputedForward(module)
        else:
            module.__dict__.pop("forward", None)
        changed += 1
    return changed
