"""Listwise distillation: KL divergence between the teacher's and the student's softmax over the batch.

Formula (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network", Sec. 2; used for
retrieval e.g. by RocketQAv2, Ren et al. 2021, Eq. 3)::

    L_KL = mean_i  T² · KL( softmax(t_i / T) ‖ softmax(s_i / T) )

over all P passages of the batch (NaN teacher entries left out of both softmaxes). At a high T it
approaches matching centred scores, so T = 1 suits a cosine student (scores in [-1, 1]); T is on
the score scale of both student (q·d times ``student_scale``) and teacher.

Recommended settings: as the in-batch term of :class:`dr.losses.tas_b.DistillationLoss`
(``loss=margin_mse_kl``), weight 0.75. Related: :mod:`dr.losses.tas_b`.
"""

from __future__ import annotations

import torch

from dr.losses.base import Loss
from dr.losses.scores import FollowsScale, scaled_student_scores


def listwise_kl(
    scores: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0, mask: torch.Tensor | None = None
) -> torch.Tensor:
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
    fill = torch.where(
        row_ok[:, None], torch.tensor(float("-inf"), device=scores.device), torch.tensor(0.0, device=scores.device)
    )
    log_s = torch.log_softmax(torch.where(valid, scores / temperature, fill), dim=1)
    log_t = torch.log_softmax(torch.where(valid, torch.nan_to_num(teacher) / temperature, fill), dim=1)
    zero = torch.zeros_like(log_s)
    kl = torch.where(valid, log_t.exp() * (log_t - torch.where(valid, log_s, zero)), zero).sum(1)
    return kl[row_ok].mean() * temperature**2


class InBatchKLLoss(FollowsScale, Loss):
    """Listwise KL to the in-batch teacher's distribution over the batch's passages, times T².

    ``student_scale`` multiplies the student's q·d first (as Margin-MSE's; inside
    :class:`dr.losses.DistillationLoss` it is the pair term's), so s is on the teacher's scale.
    """

    fields = ("teacher_matrix",)
    required = ("teacher_matrix",)
    citation = (
        "Hinton et al. 2015, Distilling the Knowledge in a Neural Network, Sec. 2; "
        "Ren et al. 2021, RocketQAv2, Eq. 3 (listwise distillation over the batch)"
    )
    score_scale = "student_scale · q·d and the teacher's scores, both divided by temperature T"

    def __init__(self, temperature: float = 1.0, student_scale: float = 1.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if student_scale <= 0:
            raise ValueError(f"student_scale must be positive, got {student_scale}")
        self.temperature = temperature
        self.student_scale = student_scale

    def forward(self, q, d, teacher_matrix) -> torch.Tensor:
        return listwise_kl(scaled_student_scores(q, d, self.scale()), teacher_matrix, self.temperature)
