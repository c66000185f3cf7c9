"""Pairwise plus in-batch distillation: TAS-B's dual supervision.

Formula (Hofstätter et al. SIGIR 2021, "Efficiently Teaching an Effective Dense Retriever with
Balanced Topic Aware Sampling", Sec. 3.3, Eq. 7)::

    L = L_pair + λ · L_inbatch          (λ = 0.75 in TAS-B)

with L_pair the Margin-MSE against the pairwise teacher's scores (``losses/margin_mse.py``) and
L_inbatch the in-batch term against the in-batch teacher (``losses/inbatch.py``: TAS-B's margin
form, or the listwise KL). Returns ``{"loss", "pair", "inbatch"}`` (and the in-batch term's own
components), each logged as ``train/<name>``.

Recommended settings: ``loss=tas_b`` with ``inbatch_teacher=fusion`` or ``biencoder`` and a
teacher file (``data.teacher_scores``). Related: ``losses/infonce.py``.
"""

from __future__ import annotations

import torch
from torch import nn


class DistillationLoss(nn.Module):
    """``L = L_pair + inbatch_weight · L_inbatch`` (see module docstring).

    Args:
        pair: the pairwise loss (e.g. :class:`losses.MarginMSELoss`).
        inbatch: the in-batch loss (e.g. :class:`losses.InBatchMarginMSELoss`), or None.
        inbatch_weight: λ.
    """

    def __init__(self, pair: nn.Module, inbatch: nn.Module | None = None, inbatch_weight: float = 0.75):
        super().__init__()
        self.pair = pair
        self.inbatch = inbatch
        self.inbatch_weight = inbatch_weight

    def forward(self, q: torch.Tensor, d: torch.Tensor, **inputs) -> dict[str, torch.Tensor]:
        pair = _components(self.pair(q, d, **inputs))
        out = {"pair": pair["loss"]}
        total = pair["loss"]
        if self.inbatch is not None:
            inbatch = _components(self.inbatch(q, d, **inputs))
            out.update({k: v for k, v in inbatch.items() if k != "loss"})
            out["inbatch"] = inbatch["loss"]
            total = total + self.inbatch_weight * inbatch["loss"]
        return {"loss": total, **out}


def _components(out) -> dict[str, torch.Tensor]:
    return out if isinstance(out, dict) else {"loss": out}
