"""GradCache: contrastive batches larger than activation memory, with exact gradients.

Method (Gao, Zhang, Han and Callan 2021, "Scaling Deep Contrastive Learning Batch Size under
Memory Limited Setup", RepL4NLP, Sec. 3.2, Algorithm 1). The loss of a batch depends on the
encoder only through the embeddings, so with f the encoder and s_j = f(x_j)::

    ∂L/∂θ = Σ_j (∂L/∂s_j) · (∂s_j/∂θ)

1. the B texts are encoded in chunks of ``chunk`` texts without keeping activations;
2. the loss is computed on all B embeddings and its gradient ∂L/∂s_j (the "gradient cache",
   ``[B, H]``) is taken;
3. each chunk is encoded again, with its graph, and back-propagated with its rows of the cache.

Peak activation memory falls from the whole batch's to one chunk's, for one extra forward pass.
Dropout must draw the same masks in steps 1 and 3, or the gradient is that of another network:
the RNG state (CPU and the inputs' device) is saved before each chunk and restored for its
re-encoding, as GradCache's ``RandContext`` does.

Implementation: each chunk's encoding is wrapped in ``torch.utils.checkpoint`` over the *whole
encoder* (non-reentrant, ``preserve_rng_state=True``). Its forward keeps no activations (step 1);
the loss's backward computes the embedding gradients (step 2) and reaches each chunk in turn,
which checkpointing re-encodes with its saved RNG state and back-propagates (step 3; autograd
runs the chunks one after the other, the last first). These are GradCache's three steps, run by
one ``backward()`` call, which is what lets Lightning's automatic optimization keep working
unchanged: gradient accumulation, clipping, mixed precision, and DDP (its reducer expects one
backward per step; GradCache's reference code needs ``no_sync`` juggling instead).
``tests/test_grad_cache.py`` checks the gradients against the full batch with dropout on.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint

Embed = Callable[[dict], torch.Tensor]


def embed_in_chunks(embed: Embed, inputs: dict, chunk: int) -> torch.Tensor:
    """``embed(inputs)`` computed ``chunk`` rows at a time, GradCache-style (module docstring):
    the result is the same ``[N, H]`` tensor with the same gradient, for one chunk's activations."""
    n = len(inputs["input_ids"])
    if not torch.is_grad_enabled():
        return torch.cat([embed(_rows(inputs, lo, lo + chunk)) for lo in range(0, n, chunk)])
    parts = [
        checkpoint(embed, _rows(inputs, lo, lo + chunk), use_reentrant=False, preserve_rng_state=True)
        for lo in range(0, n, chunk)
    ]
    return torch.cat(parts)


def _rows(inputs: dict, lo: int, hi: int) -> dict:
    return {k: v[lo:hi] for k, v in inputs.items() if torch.is_tensor(v)}


def activation_bytes(embed: Embed, inputs: dict, params: list[torch.Tensor]) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of ``embed(inputs)``: the
    activation memory of encoding these rows with a graph (parameters left out, shared storages
    counted once). Runs one forward pass whose graph is dropped; the RNG state is left untouched."""
    skip = {p.untyped_storage().data_ptr() for p in params}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    device = inputs["input_ids"].device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.enable_grad():
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            embed(inputs)
    return sum(seen.values())


def memory_estimate(
    embed_queries: Embed,
    embed_passages: Embed,
    query_inputs: dict,
    passage_inputs: dict,
    chunk: int,
    params: list[torch.Tensor],
) -> dict[str, float]:
    """Estimated activation memory (MiB) of one step: the whole batch encoded with its graph
    (``full``) versus GradCache's one chunk at a time (``cached``, the larger of a query and a
    passage chunk), from the saved-tensor bytes of the first chunk of each, scaled by rows."""
    q = activation_bytes(embed_queries, _rows(query_inputs, 0, chunk), params)
    p = activation_bytes(embed_passages, _rows(passage_inputs, 0, chunk), params)
    nq, np_ = len(query_inputs["input_ids"]), len(passage_inputs["input_ids"])
    full = q / min(chunk, nq) * nq + p / min(chunk, np_) * np_
    cached = max(q, p)
    mib = 2.0**20
    return {"full": full / mib, "cached": cached / mib, "saved": (full - cached) / mib}
