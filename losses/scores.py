"""The student's score matrix, in fp32 with autocast off: what every loss scores with.

Under ``bf16-mixed`` (or fp16) precision, autocast runs a matmul in the low precision even when its
inputs were cast to fp32 first (``q.float() @ d.float().T`` is still a bf16 matmul inside an autocast
region). bf16 keeps 8 significant bits: dot-product scores of 64–128 come out in steps of 0.5, coarse
next to teacher margins of a few points, and Margin-MSE on scores around 70 moves by about 1%.
Disabling autocast for this one product costs nothing measurable (a [B, H] × [H, P] matmul) and makes
the losses exact whatever the training precision.
"""

from __future__ import annotations

import torch


def student_scores(q: torch.Tensor, d: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``scale · q dᵀ`` (``[B, P]``) computed in fp32 with autocast disabled on ``q``'s device."""
    with torch.autocast(device_type=q.device.type, enabled=False):
        scores = q.float() @ d.float().T
        return scores if scale == 1.0 else scale * scores


def scaled_student_scores(q: torch.Tensor, d: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """:func:`student_scores` times ``scale``: a number, or a 0-dim tensor (a learnt scale, whose
    gradient is kept)."""
    if isinstance(scale, torch.Tensor):
        return student_scores(q, d) * scale
    return student_scores(q, d, float(scale))


class FollowsScale:
    """For a term with a ``student_scale``: :meth:`scale` is its own, or, after :meth:`follow_scale`,
    another term's (inside :class:`dr.losses.DistillationLoss` the in-batch term follows the pair
    term's, fitted or learnt, so that both terms target the same student scores: TAS-B, Sec. 3.3)."""

    student_scale: float

    def follow_scale(self, owner) -> None:
        # kept out of nn.Module's registry: the owner is another term of the same loss, whose
        # parameters must not appear twice in the state dict
        self.__dict__["_scale_owner"] = owner

    def scale(self) -> float | torch.Tensor:
        owner = self.__dict__.get("_scale_owner")
        return owner.scale() if owner is not None else self.student_scale
