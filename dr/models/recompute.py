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

Supported layouts (found by attribute, so BERT-family models -- BERT, RoBERTa, XLM-R, ELECTRA,
MiniLM, MPNet-style ``intermediate``/``output`` -- and DistilBERT's ``FFN``):

- a layer with ``intermediate.dense``, ``intermediate.intermediate_act_fn``, ``output.dense``,
  ``output.dropout``, ``output.LayerNorm`` and a ``feed_forward_chunk`` method;
- a module with ``lin1``, ``activation``, ``lin2``, ``dropout`` and an ``ff_chunk`` method.
"""

from __future__ import annotations

import types
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

Recompute = Literal["none", "activation", "full"]
MODES = ("none", "activation", "full")


def _linear_grads(grad_out: torch.Tensor, inp: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  need_input: bool, need_weight: bool, need_bias: bool):
    """Gradients of ``out = inp @ weight.T + bias`` for ``grad_out``, computed in ``grad_out``'s
    dtype (the dtype the forward product ran in) and returned in each operand's own dtype."""
    dtype = grad_out.dtype
    g = grad_out.reshape(-1, grad_out.shape[-1])
    grad_inp = grad_w = grad_b = None
    if need_input:
        grad_inp = (g @ weight.to(dtype)).reshape(*grad_out.shape[:-1], weight.shape[1])
    if need_weight:
        grad_w = (g.t() @ inp.reshape(-1, inp.shape[-1]).to(dtype)).to(weight.dtype)
    if need_bias and bias is not None:
        grad_b = g.sum(0).to(bias.dtype)
    return grad_inp, grad_w, grad_b


class _FeedForward(torch.autograd.Function):
    """``W2 act(W1 x + b1) + b2`` that saves ``x`` (and ``h`` when ``keep_h``) for the backward pass."""

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, act: Callable, keep_h: bool):
        device_type = x.device.type
        autocast = torch.is_autocast_enabled(device_type)
        dtype = torch.get_autocast_dtype(device_type) if autocast else None
        h = F.linear(x, w1, b1)
        y = F.linear(act(h), w2, b2)
        ctx.act, ctx.device_type, ctx.autocast, ctx.dtype = act, device_type, autocast, dtype
        ctx.x_dtype = x.dtype
        x_saved = x.to(dtype) if autocast else x  # what F.linear multiplied
        ctx.save_for_backward(x_saved, h if keep_h else None, w1, b1, w2, b2)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, h, w1, b1, w2, b2 = ctx.saved_tensors
        need_x, need_w1, need_b1, need_w2, need_b2 = ctx.needs_input_grad[:5]
        with torch.autocast(ctx.device_type, dtype=ctx.dtype or torch.bfloat16, enabled=ctx.autocast):
            if h is None:
                with torch.no_grad():
                    h = F.linear(x, w1, b1)
            with torch.enable_grad():
                h = h.detach().requires_grad_(True)
                a = ctx.act(h)
        grad_y = grad_y.to(a.dtype)
        grad_a, grad_w2, grad_b2 = _linear_grads(grad_y, a.detach(), w2, b2, True, need_w2, need_b2)
        (grad_h,) = torch.autograd.grad(a, h, grad_a)
        grad_x, grad_w1, grad_b1 = _linear_grads(grad_h, x, w1, b1, need_x, need_w1, need_b1)
        if grad_x is not None:
            grad_x = grad_x.to(ctx.x_dtype)
        return grad_x, grad_w1, grad_b1, grad_w2, grad_b2, None, None


def feed_forward(x: torch.Tensor, up: nn.Linear, act: Callable, down: nn.Linear, mode: Recompute) -> torch.Tensor:
    """``down(act(up(x)))``, recomputing ``act`` (``mode="activation"``) or ``up`` and ``act``
    (``"full"``) in the backward pass; plain modules when no gradient is needed or ``mode="none"``."""
    if mode == "none" or not torch.is_grad_enabled():
        return down(act(up(x)))
    return _FeedForward.apply(x, up.weight, up.bias, down.weight, down.bias, act, mode == "activation")


def _bert_chunk(self, attention_output: torch.Tensor) -> torch.Tensor:
    # BertLayer.feed_forward_chunk = BertOutput(BertIntermediate(x), x), with the two dense layers fused
    out = self.output
    hidden = feed_forward(attention_output, self.intermediate.dense, self.intermediate.intermediate_act_fn,
                          out.dense, self._dr_recompute)
    return out.LayerNorm(out.dropout(hidden) + attention_output)


def _distilbert_chunk(self, x: torch.Tensor) -> torch.Tensor:
    # DistilBERT's FFN.ff_chunk = dropout(lin2(activation(lin1(x))))
    return self.dropout(feed_forward(x, self.lin1, self.activation, self.lin2, self._dr_recompute))


def _is_bert_layer(module: nn.Module) -> bool:
    inter, out = getattr(module, "intermediate", None), getattr(module, "output", None)
    return (hasattr(type(module), "feed_forward_chunk")
            and isinstance(getattr(inter, "dense", None), nn.Linear) and callable(getattr(inter, "intermediate_act_fn", None))
            and isinstance(getattr(out, "dense", None), nn.Linear) and isinstance(getattr(out, "LayerNorm", None), nn.Module)
            and isinstance(getattr(out, "dropout", None), nn.Module))


def _is_distilbert_ffn(module: nn.Module) -> bool:
    return (hasattr(type(module), "ff_chunk") and isinstance(getattr(module, "lin1", None), nn.Linear)
            and isinstance(getattr(module, "lin2", None), nn.Linear) and callable(getattr(module, "activation", None))
            and isinstance(getattr(module, "dropout", None), nn.Module))


def set_feed_forward_recompute(model: nn.Module, mode: Recompute) -> int:
    """Make every supported feed-forward block of ``model`` recompute in ``mode``; returns how many
    blocks were set. ``"none"`` restores the model's own code. The weights and the state dict are
    unchanged (the blocks' chunk methods are replaced on the instances)."""
    if mode not in MODES:
        raise ValueError(f"feed-forward recompute must be one of {MODES}, got {mode!r}")
    changed = 0
    for module in model.modules():
        for matches, name, chunk in ((_is_bert_layer, "feed_forward_chunk", _bert_chunk),
                                     (_is_distilbert_ffn, "ff_chunk", _distilbert_chunk)):
            if not matches(module):
                continue
            if mode == "none":
                module.__dict__.pop(name, None)
                module.__dict__.pop("_dr_recompute", None)
            else:
                module._dr_recompute = mode
                setattr(module, name, types.MethodType(chunk, module))
            changed += 1
    return changed
