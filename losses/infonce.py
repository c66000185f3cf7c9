"""InfoNCE (contrastive) loss over in-batch and hard negatives.

Formula (van den Oord et al. 2018, "Representation Learning with Contrastive Predictive Coding",
Eq. 4; as used for dense retrieval by Karpukhin et al. 2020, DPR, Eq. 2 with in-batch negatives)::

    L = -1/B · Σ_i log( exp(s(q_i, d_i⁺)/τ) / Σ_j exp(s(q_i, d_j)/τ) )

where j runs over every passage of the batch: each query's positive, the other queries'
positives (in-batch negatives) and all hard negatives. Passages that are known positives of
``q_i`` other than its target (the same document sampled for two queries, or a query with several
relevant documents) are removed from the denominator, so the loss never pushes a relevant
document away.

Inputs: query embeddings ``[B, H]``, passage embeddings ``[M, H]``, the index of each query's
positive among the M passages, and optionally a ``[B, M]`` boolean mask of passages to exclude.

Scores are computed in fp32 with autocast off (:mod:`dr.losses.scores`), whatever the training
precision. τ is on the raw score scale: the logits are s / τ.

Recommended settings: τ = 0.05 (scale 20, the sentence-transformers default) for cosine
similarity; τ = 1 for unnormalised dot products. Related: Margin-MSE (``losses/margin_mse.py``)
when teacher scores are available.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from dr.losses.base import Loss
from dr.losses.scores import student_scores


def info_nce(
    scores: torch.Tensor,
    target: torch.Tensor,
    exclude: torch.Tensor | None = None,
    temperature: float = 0.05,
) -> torch.Tensor:
    """InfoNCE on a precomputed ``[B, M]`` score matrix; ``target[i]`` indexes q_i's positive."""
    logits = scores.float() / temperature
    if exclude is not None:
        keep_target = F.one_hot(target, logits.shape[1]).bool()
        logits = logits.masked_fill(exclude & ~keep_target, float("-inf"))
    return F.cross_entropy(logits, target)


class InfoNCELoss(Loss):
    """InfoNCE over in-batch and hard negatives with a configurable temperature (see module docstring)."""

    fields = ("target", "exclude")
    required = ("target",)
    citation = (
        "van den Oord et al. 2018, Representation Learning with Contrastive Predictive Coding, Eq. 4; "
        "Karpukhin et al. 2020, Dense Passage Retrieval, Eq. 2 (in-batch negatives)"
    )
    score_scale = "logits = q·d / temperature (0.05: scale 20 on cosine)"

    def __init__(self, temperature: float = 0.05):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature

    def forward(
        self,
        q: torch.Tensor,
        d: torch.Tensor,
        target: torch.Tensor,
        exclude: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return info_nce(student_scores(q, d), target, exclude, self.temperature)

    def logit_scale(self) -> float:
        return 1.0 / self.temperature
