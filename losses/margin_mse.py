"""Margin-MSE: match the student's score margins to a teacher's.

Formula (Hofstätter et al. 2020, "Improving Efficient Neural Ranking Models with
Cross-Architecture Knowledge Distillation", arXiv:2010.02666, Eq. 1)::

    L = mean over valid (i, j) of ( (s(q_i, d_i⁺) − s(q_i, d_ij⁻)) − (t(q_i, d_i⁺) − t(q_i, d_ij⁻)) )²

where s is the student (here the dual encoder's q·d, times ``student_scale``, computed in fp32 with
autocast off: :mod:`dr.losses.scores`) and t the teacher. Only margins are matched,
so teacher and student may score on different scales (a cross-encoder's logits, a fused
BM25 + dense score in [0, 1], ...). The pairwise form is one negative per query (N = 1); with N
negatives per query there is one margin per negative and the loss averages all of them (the
multi-negative form, as in TAS-B's reference code).

A pair is skipped (masked out of the mean) when its negative is missing (``neg_index == -1``) or
either teacher score is NaN (unscored). When no pair of the batch is valid the loss is a zero
that still belongs to the graph, so a training step never crashes on a batch without teacher
scores.

Inputs (batch keys, see :meth:`dr.datamodule.RetrievalDataModule.collate_train`): query
embeddings ``q [B, H]``, passage embeddings ``d [P, H]``, ``target [B]`` (column of each query's
positive), ``neg_index [B, N]`` (columns of its negatives, -1 if missing), ``teacher_pos [B]`` and
``teacher_neg [B, N]``.

Recommended settings: a teacher file from ``dr-score`` (``data.teacher_scores``); with a cosine
student (scores in [-1, 1]) use a teacher whose margins are of the same order (the min-max
normalised fusion teacher: margins in [-1, 1]) or set ``student_scale`` (student scores are
multiplied by it before taking margins, like an inverse temperature). TAS-B: dot product, lr 7e-6.
Related: the TAS-B in-batch term (``losses/tas_b.py``), InfoNCE (``losses/infonce.py``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dr.losses.base import Loss
from dr.losses.scores import scaled_student_scores


def margin_mse(
    s_pos: torch.Tensor,
    s_neg: torch.Tensor,
    t_pos: torch.Tensor,
    t_neg: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Margin-MSE on precomputed scores.

    ``s_pos``/``t_pos`` are ``[B]``; ``s_neg``/``t_neg`` are ``[B]`` (pairwise form) or ``[B, N]``
    (one margin per negative). ``mask`` (same shape as ``s_neg``) marks the pairs to use; pairs
    whose teacher scores are NaN are skipped as well. Returns the mean squared margin difference
    over the valid pairs (a graph-connected zero when there is none).
    """
    if s_neg.dim() == 1:
        s_neg, t_neg = s_neg[:, None], t_neg[:, None]
        mask = None if mask is None else mask[:, None]
    s_pos, s_neg = s_pos.float(), s_neg.float()
    t_pos, t_neg = t_pos.to(s_pos), t_neg.to(s_pos)
    valid = torch.isfinite(t_pos)[:, None] & torch.isfinite(t_neg)
    if mask is not None:
        valid = valid & mask.bool()
    diff = (s_pos[:, None] - s_neg) - (t_pos[:, None] - t_neg)
    if not bool(valid.any()):
        return (s_pos.sum() + s_neg.sum()) * 0.0
    # where() instead of multiplying by the mask: NaN teacher entries must not reach the gradient.
    return torch.where(valid, diff, torch.zeros_like(diff)).pow(2).sum() / valid.sum()


def gather_pair_scores(
    scores: torch.Tensor, target: torch.Tensor, neg_index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From a ``[B, P]`` score matrix: ``s_pos [B]``, ``s_neg [B, N]`` and the ``[B, N]`` mask of
    existing negatives (``neg_index >= 0``)."""
    rows = torch.arange(scores.shape[0], device=scores.device)
    s_pos = scores[rows, target]
    neg_index = neg_index.to(scores.device)
    present = neg_index >= 0
    s_neg = scores.gather(1, neg_index.clamp(min=0))
    return s_pos, s_neg, present


def fit_student_scale(student_margins: torch.Tensor, teacher_margins: torch.Tensor) -> float:
    """Least-squares scale c of ``teacher ≈ c · student`` margins (no intercept: margins are
    differences), ``c = Σ s·t / Σ s²`` over the pairs where both are finite; 1.0 without any."""
    s, t = student_margins.double().flatten(), teacher_margins.double().flatten().to(student_margins.device)
    ok = torch.isfinite(s) & torch.isfinite(t)
    denominator = (s[ok] ** 2).sum()
    if not bool(ok.any()) or float(denominator) == 0.0:
        return 1.0
    return float((s[ok] * t[ok]).sum() / denominator)


class MarginMSELoss(Loss):
    """Margin-MSE against pairwise teacher scores (see module docstring).

    Args:
        student_scale: student scores are multiplied by this before taking margins (1 = raw
            q·d), so the student's margins are on the teacher's scale. Useful when a cosine
            student must match a teacher on a wider scale. Inside :class:`dr.losses.DistillationLoss`
            the in-batch term uses the same scale. ``"auto"``: at train start, the least-squares
            fit of the untrained student's margins to the teacher's on a sample of training pairs
            (:func:`fit_student_scale`; :class:`dr.training.DenseRetrievalModule` fits and logs it
            as ``train/student_scale_fit``, from ``auto_scale_queries`` queries).
        learnable_scale: the scale is a trained parameter (log-parametrised, starting at
            ``student_scale`` or its fit), logged as ``train/student_scale``; it trains with its
            own learning rate ``scale_lr`` and no weight decay (the encoder's rate would barely move it).
    """

    fields = ("target", "neg_index", "teacher_pos", "teacher_neg")
    required = fields
    citation = (
        "Hofstätter et al. 2020, Improving Efficient Neural Ranking Models with Cross-Architecture "
        "Knowledge Distillation, arXiv:2010.02666, Eq. 1"
    )
    score_scale = "margins of student_scale · q·d against the teacher's raw margins"

    def __init__(
        self,
        student_scale: float | str = 1.0,
        learnable_scale: bool = False,
        auto_scale_queries: int = 256,
        scale_lr: float = 1e-2,
    ):
        super().__init__()
        self.scale_lr = scale_lr
        if student_scale != "auto" and (isinstance(student_scale, str) or student_scale <= 0):
            raise ValueError(f"student_scale must be positive or 'auto', got {student_scale}")
        self.student_scale = student_scale
        self.auto_scale_queries = auto_scale_queries
        self.log_scale = nn.Parameter(torch.zeros(())) if learnable_scale else None
        if learnable_scale and student_scale != "auto":
            self.set_scale(float(student_scale))

    def set_scale(self, value: float) -> None:
        """Set the scale (the fitted one for ``"auto"``; the learnable parameter's start)."""
        self.student_scale = float(value)
        if self.log_scale is not None:
            with torch.no_grad():
                self.log_scale.fill_(math.log(value))

    def scale_fit_queries(self) -> int | None:
        return int(self.auto_scale_queries) if self.student_scale == "auto" else None

    def fit_scale(self, student_margins: torch.Tensor, teacher_margins: torch.Tensor) -> float:
        """``student_scale: auto``: the least-squares fit (:func:`fit_student_scale`), set and returned."""
        scale = fit_student_scale(student_margins, teacher_margins)
        if not scale > 0:
            raise ValueError(
                f"loss.student_scale=auto: the fitted scale is {scale:.4g} (the untrained student's margins "
                "disagree with the teacher's); set loss.student_scale to a positive number"
            )
        self.set_scale(scale)
        return scale

    def param_groups(self) -> list[dict]:
        if self.log_scale is None:
            return []
        return [{"params": [self.log_scale], "lr": self.scale_lr, "weight_decay": 0.0}]

    def scale(self) -> torch.Tensor | float:
        if self.student_scale == "auto":
            raise RuntimeError(
                "student_scale='auto' is fitted at train start (DenseRetrievalModule); it was not fitted"
            )
        return self.log_scale.exp() if self.log_scale is not None else self.student_scale

    def forward(
        self,
        q: torch.Tensor,
        d: torch.Tensor,
        target: torch.Tensor,
        neg_index: torch.Tensor,
        teacher_pos: torch.Tensor,
        teacher_neg: torch.Tensor,
    ) -> torch.Tensor | dict:
        scale = self.scale()
        scores = scaled_student_scores(q, d, scale)
        s_pos, s_neg, present = gather_pair_scores(scores, target, neg_index)
        loss = margin_mse(s_pos, s_neg, teacher_pos.to(scores.device), teacher_neg.to(scores.device), present)
        if self.log_scale is not None:
            return {"loss": loss, "student_scale": scale.detach()}
        return loss
