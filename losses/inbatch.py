"""TAS-B's in-batch distillation term, and a listwise KL variant.

Margin form (Hofstätter et al. SIGIR 2021, "Efficiently Teaching an Effective Dense Retriever with
Balanced Topic Aware Sampling", Sec. 3.3, Eq. 5–6): a teacher scores every (query, passage) pair
of the batch (``teacher_matrix [B, P]``, from ``module.inbatch_teacher``). For query i with
s_pos = s(q_i, d_i⁺)::

    L_pos = MarginMSE( s_pos − s(q_i, d_j⁺) ,  t_pos − t(q_i, d_j⁺) )   over j ≠ i   (in-batch positives)
    L_neg = MarginMSE( s_pos − s(q_i, d_j⁻) ,  t_pos − t(q_i, d_j⁻) )   over negatives of queries j ≠ i
    L_inbatch = 0.5 · (L_pos + L_neg)

"Each with its own diagonal masked" (the reference code, see METHODS.md): in the positives block
query i's own positive is s_pos itself; in the negatives block query i's own negatives are
already covered by the pairwise Margin-MSE term, so both are left out. Entries whose teacher
score is NaN are skipped. When the batch has no hard negatives L_inbatch = L_pos (the mean of
the terms that have pairs).

Listwise variant (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network", Sec. 2;
used for retrieval e.g. by RocketQAv2 and in METHODS.md)::

    L_KL = mean_i  T² · KL( softmax(t_i / T) ‖ softmax(s_i / T) )

over all P passages of the batch (NaN teacher entries left out of both softmaxes). At a high T it
approaches matching centred scores, so T = 1 suits a cosine student (scores in [-1, 1]).

Recommended settings: weight 0.75 next to the pairwise Margin-MSE (``losses/combined.py``,
``loss=tas_b``), with a frozen teacher from :mod:`dr.teachers` (``inbatch_teacher=...``).
Related: ``losses/margin_mse.py``.
"""

from __future__ import annotations

import torch
from torch import nn

from losses.margin_mse import margin_mse


def inbatch_margin_mse(
    scores: torch.Tensor,
    teacher: torch.Tensor,
    target: torch.Tensor,
    neg_index: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """TAS-B's in-batch term on ``[B, P]`` student and teacher score matrices.

    Returns ``{"inbatch": L_inbatch, "inbatch_pos": L_pos, "inbatch_neg": L_neg}`` (``inbatch_neg``
    only when the batch has hard negatives).
    """
    B = scores.shape[0]
    scores = scores.float()
    teacher = teacher.to(scores)
    target = target.to(scores.device)
    rows = torch.arange(B, device=scores.device)
    s_pos, t_pos = scores[rows, target], teacher[rows, target]
    not_own = ~torch.eye(B, dtype=torch.bool, device=scores.device)
    parts = {"inbatch_pos": margin_mse(s_pos, scores[:, target], t_pos, teacher[:, target], not_own)}
    if neg_index is not None and neg_index.numel():
        neg_index = neg_index.to(scores.device)
        owner = rows[:, None].expand_as(neg_index)[neg_index >= 0]  # which query each negative belongs to
        cols = neg_index[neg_index >= 0]
        if cols.numel():
            mask = owner[None, :] != rows[:, None]  # [B, K]: another query's negative
            parts["inbatch_neg"] = margin_mse(s_pos, scores[:, cols], t_pos, teacher[:, cols], mask)
    return {"inbatch": torch.stack(list(parts.values())).mean(), **parts}


def listwise_kl(scores: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``mean_i T² · KL(softmax(t_i/T) ‖ softmax(s_i/T))`` over the entries where ``mask`` is true
    and the teacher score is finite; rows without any such entry are left out."""
    scores = scores.float()
    teacher = teacher.to(scores)
    valid = torch.isfinite(teacher)
    if mask is not None:
        valid = valid & mask.bool()
    row_ok = valid.any(1)
    if not bool(row_ok.any()):
        return scores.sum() * 0.0
    # -inf outside the list (0 in empty rows, which are dropped below, so no NaN reaches the graph)
    fill = torch.where(row_ok[:, None], torch.tensor(float("-inf"), device=scores.device), torch.tensor(0.0, device=scores.device))
    log_s = torch.log_softmax(torch.where(valid, scores / temperature, fill), dim=1)
    log_t = torch.log_softmax(torch.where(valid, torch.nan_to_num(teacher) / temperature, fill), dim=1)
    zero = torch.zeros_like(log_s)
    kl = torch.where(valid, log_t.exp() * (log_t - torch.where(valid, log_s, zero)), zero).sum(1)
    return kl[row_ok].mean() * temperature**2


class InBatchMarginMSELoss(nn.Module):
    """TAS-B's in-batch Margin-MSE term against ``teacher_matrix`` (see module docstring).

    Returns a dict: ``loss`` (= ``inbatch``), ``inbatch_pos`` and ``inbatch_neg``.
    """

    def forward(self, q, d, target, neg_index=None, teacher_matrix=None, **_) -> dict[str, torch.Tensor]:
        _require_matrix(teacher_matrix)
        parts = inbatch_margin_mse(q.float() @ d.float().T, teacher_matrix, target, neg_index)
        return {"loss": parts["inbatch"], **parts}


class InBatchKLLoss(nn.Module):
    """Listwise KL to the in-batch teacher's distribution over the batch's passages, times T²."""

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature

    def forward(self, q, d, teacher_matrix=None, **_) -> torch.Tensor:
        _require_matrix(teacher_matrix)
        return listwise_kl(q.float() @ d.float().T, teacher_matrix, self.temperature)


def _require_matrix(teacher_matrix) -> None:
    if teacher_matrix is None:
        raise ValueError(
            "the in-batch distillation term needs an in-batch teacher: set inbatch_teacher=biencoder|fusion|cross_encoder|colbert"
        )
