"""Gold-label InfoNCE plus α × listwise distillation over each query's candidate list.

Formula::

    L = InfoNCE(s / τ)  +  α · mean_i KL( softmax(t_i / τ_t) ‖ softmax(s_i / τ_s) )

- InfoNCE: the gold label (the query's positive) against every passage of the batch, as
  :mod:`dr.losses.infonce` (van den Oord et al. 2018, Eq. 4; DPR, Karpukhin et al. 2020, Eq. 2).
- KD: for query i, the list is its positive and its N mined negatives (N up to ~15), s_i the
  student's scores and t_i the teacher's on that list; the KL of the teacher's softmax to the
  student's (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network", Sec. 2), with
  *separate* temperatures, since a cosine student and a teacher score on different scales: the
  student's logits are s/τ_s (τ_s = 0.05, InfoNCE's, is scale 20), the teacher's t/τ_t. This is the
  soft-target term of BGE's ``kl_div`` training mode (FlagEmbedding: InfoNCE plus the KL to the
  teacher's distribution over the query's candidates) and of Tevatron's distillation example
  (normalised student, student and teacher temperatures apart).

Entries without a teacher score (NaN, e.g. negatives an index refresh found that the teacher file
does not cover) and missing negatives (``neg_index == -1``) leave the list; a query whose positive
is unscored, or that keeps fewer than 2 entries, is left out of the KD mean. With no list left the
KD term is a graph-connected zero, so a step never fails on a batch without teacher scores.

Inputs (batch keys): ``q [B, H]``, ``d [P, H]``, ``target [B]``, ``exclude [B, P]``,
``neg_index [B, N]``, ``teacher_pos [B]``, ``teacher_neg [B, N]`` (``data.teacher_scores=FILE``).

Recommended settings: ``loss=infonce_kd`` (τ = τ_s = 0.05, α = 1, τ_t = 0.1 for the min-max
fusion teacher, whose scores lie in [0, 1]); 4-15 negatives per query. Related: Margin-MSE
(:mod:`dr.losses.margin_mse`), the in-batch KL (:mod:`dr.losses.listwise_kl`).
"""

from __future__ import annotations

import torch

from dr.losses.base import Loss
from dr.losses.infonce import info_nce
from dr.losses.margin_mse import gather_pair_scores
from dr.losses.scores import student_scores


def candidate_kd(
    s_pos: torch.Tensor,
    s_neg: torch.Tensor,
    t_pos: torch.Tensor,
    t_neg: torch.Tensor,
    present: torch.Tensor | None = None,
    student_temperature: float = 0.05,
    teacher_temperature: float = 1.0,
) -> torch.Tensor:
    """``mean_i KL(softmax(t_i/τ_t) ‖ softmax(s_i/τ_s))`` over lists [positive, negatives]
    (``s_pos``/``t_pos`` ``[B]``, ``s_neg``/``t_neg`` ``[B, N]``, ``present`` ``[B, N]``)."""
    s = torch.cat([s_pos.float()[:, None], s_neg.float()], 1)
    t = torch.cat([t_pos[:, None], t_neg], 1).to(s)
    valid = torch.isfinite(t)
    if present is not None:
        valid[:, 1:] &= present.to(valid.device).bool()
    rows = valid[:, 0] & (valid.sum(1) >= 2)
    if not bool(rows.any()):
        return s.sum() * 0.0
    s, t, valid = s[rows], t[rows], valid[rows]
    neg_inf = torch.tensor(float("-inf"), device=s.device)
    log_s = torch.log_softmax(torch.where(valid, s / student_temperature, neg_inf), 1)
    log_t = torch.log_softmax(torch.where(valid, torch.nan_to_num(t) / teacher_temperature, neg_inf), 1)
    zero = torch.zeros_like(log_s)
    # where(): -inf - -inf outside the list would be NaN, and must not reach the gradient
    kl = torch.where(valid, log_t.exp() * (log_t - torch.where(valid, log_s, zero)), zero).sum(1)
    return kl.mean()


class InfoNCEKDLoss(Loss):
    """InfoNCE on the gold labels plus ``alpha`` × listwise KD to the teacher (see module docstring).

    Returns ``{"loss", "infonce", "kd"}`` (the parts are logged as ``train/infonce``, ``train/kd``).

    Args:
        temperature: InfoNCE's τ on the student's similarity (0.05 = scale 20 for cosine).
        alpha: weight of the KD term.
        teacher_temperature: τ_t, on the teacher's score scale.
        student_temperature: τ_s of the KD term; None: ``temperature``.
    """

    fields = ("target", "exclude", "neg_index", "teacher_pos", "teacher_neg")
    required = ("target", "neg_index", "teacher_pos", "teacher_neg")
    citation = (
        "van den Oord et al. 2018, Eq. 4 (InfoNCE); Hinton et al. 2015, Distilling the Knowledge in a "
        "Neural Network, Sec. 2 (the KL to the teacher's softmax over each query's candidates)"
    )
    score_scale = (
        "InfoNCE logits q·d / temperature; KD: student q·d / student_temperature, teacher t / teacher_temperature"
    )

    def __init__(
        self,
        temperature: float = 0.05,
        alpha: float = 1.0,
        teacher_temperature: float = 1.0,
        student_temperature: float | None = None,
    ):
        super().__init__()
        for name, value in [
            ("temperature", temperature),
            ("teacher_temperature", teacher_temperature),
            ("student_temperature", student_temperature if student_temperature is not None else temperature),
        ]:
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if alpha < 0:
            raise ValueError(f"alpha must be non-negative, got {alpha}")
        self.temperature = temperature
        self.alpha = alpha
        self.teacher_temperature = teacher_temperature
        self.student_temperature = student_temperature if student_temperature is not None else temperature

    def logit_scale(self) -> float:
        return 1.0 / self.temperature

    def forward(self, q, d, target, neg_index, teacher_pos, teacher_neg, exclude=None) -> dict:
        scores = student_scores(q, d)
        contrastive = info_nce(scores, target, exclude, self.temperature)
        s_pos, s_neg, present = gather_pair_scores(scores, target, neg_index)
        kd = candidate_kd(
            s_pos,
            s_neg,
            teacher_pos.to(scores.device),
            teacher_neg.to(scores.device),
            present,
            self.student_temperature,
            self.teacher_temperature,
        )
        return {"loss": contrastive + self.alpha * kd, "infonce": contrastive.detach(), "kd": kd.detach()}
