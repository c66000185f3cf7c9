"""Matryoshka representation learning: one loss per nested prefix of the embedding, weighted.

Formula (Kusupati et al. 2022, "Matryoshka Representation Learning", NeurIPS 2022, Sec. 3, Eq. 1)::

    L = Σ_{m ∈ M} c_m · L_inner(q[:, :m], d[:, :m])

where ``M`` is the set of nested dimensions (``dims``), ``c_m`` their importance weights
(``weights``; the paper sets every c_m = 1) and ``L_inner`` any of our losses on the embeddings cut
to their first ``m`` components. The paper's Eq. 1 puts a linear classifier ``W^(m)`` on each
prefix; a retrieval loss scores the prefixes against each other instead (``q[:m] · d[:m]``), as
sentence-transformers' ``MatryoshkaLoss`` does. When the encoder normalises its embeddings
(``normalize``: cosine similarity), each prefix is normalised again before scoring, so every
dimension is trained on the cosine it will be searched with; the inner loss's temperature or
scale then keeps its meaning (cosines in [-1, 1]) at every dimension.

Inputs: query embeddings ``[B, H]``, passage embeddings ``[M, H]`` and the batch's supervision
tensors (``target``, ``exclude``, ``neg_index``, teacher scores...), passed through to the inner loss
unchanged. Every ``m`` must be at most ``H``; list ``H`` itself to train the full embedding too.

Returns ``{"loss": L, "loss_dim<m>": L_inner at m, ...}`` (each part is logged as ``train/<name>``).

Recommended settings: dims from the full dimension down by halves, e.g. [384, 256, 128, 64] for
all-MiniLM-L6-v2, all weights 1 (the paper's and sentence-transformers' default). Evaluate the
prefixes with ``test.truncate_dims`` and ship one with ``export.truncate_dim``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from dr.losses.base import BATCH_FIELDS, Loss


def truncate(x: torch.Tensor, dim: int, normalize: bool) -> torch.Tensor:
    """The first ``dim`` components of each row of ``x``, L2-normalised again when ``normalize``."""
    x = x[..., :dim]
    return F.normalize(x.float(), p=2, dim=-1) if normalize else x


class MatryoshkaLoss(Loss):
    """Σ_m c_m · loss(q[:, :m], d[:, :m]) over nested dimensions (see the module docstring).

    Args:
        loss: the inner loss (any :class:`dr.losses.base.Loss`); its batch fields, citation, score
            scale and scale hooks are this loss's (a fitted student scale is fitted on the full
            embedding and used at every dimension).
        dims: the nested dimensions ``M``, each a positive integer.
        weights: ``c_m`` per dimension (default: all 1, the paper's choice); non-negative.
        normalize: re-normalise each prefix (set it to the encoder's ``normalize``, cosine similarity).
    """

    fields = tuple(BATCH_FIELDS)  # the inner loss's; an instance takes exactly those
    citation = "Kusupati et al. 2022, Matryoshka Representation Learning (NeurIPS), Sec. 3, Eq. 1"
    score_scale = "the inner loss's, at every dimension (cosines in [-1, 1] when the prefixes are re-normalised)"

    def __init__(self, loss: Loss, dims: Sequence[int], weights: Sequence[float] | None = None, normalize: bool = True):
        super().__init__()
        dims = [int(m) for m in dims]
        if not dims or any(m < 1 for m in dims) or len(set(dims)) != len(dims):
            raise ValueError(f"dims must be distinct positive integers, got {list(dims)}")
        weights = [1.0] * len(dims) if weights is None else [float(w) for w in weights]
        if len(weights) != len(dims) or any(w < 0 for w in weights):
            raise ValueError(f"weights must be {len(dims)} non-negative numbers (one per dim), got {list(weights)}")
        self.loss = loss
        self.dims = dims
        self.weights = weights
        self.normalize = bool(normalize)

    # ------------------------------------------------------------------ the contract, from the inner loss
    def input_fields(self) -> tuple[str, ...]:
        return self.loss.input_fields()

    def required_fields(self) -> tuple[str, ...]:
        return self.loss.required_fields()

    @classmethod
    def _inner(cls, node: Mapping[str, Any]) -> tuple[type, Mapping] | None:
        from hydra.utils import get_class

        inner = node.get("loss")
        return (get_class(inner["_target_"]), inner) if isinstance(inner, Mapping) and inner.get("_target_") else None

    @classmethod
    def config_fields(cls, node: Mapping[str, Any]) -> frozenset[str]:
        inner = cls._inner(node)
        return inner[0].config_fields(inner[1]) if inner else frozenset()

    @classmethod
    def config_citations(cls, node: Mapping[str, Any]) -> list[str]:
        inner = cls._inner(node)
        return list(dict.fromkeys([cls.citation, *(inner[0].config_citations(inner[1]) if inner else [])]))

    def logit_scale(self) -> float | None:
        return self.loss.logit_scale()

    def scale_fit_queries(self) -> int | None:
        return self.loss.scale_fit_queries()

    def fit_scale(self, student_margins: torch.Tensor, teacher_margins: torch.Tensor) -> float:
        return self.loss.fit_scale(student_margins, teacher_margins)

    def param_groups(self) -> list[dict]:
        return self.loss.param_groups()

    def forward(
        self,
        q: torch.Tensor,
        d: torch.Tensor,
        target: torch.Tensor | None = None,
        exclude: torch.Tensor | None = None,
        neg_index: torch.Tensor | None = None,
        teacher_pos: torch.Tensor | None = None,
        teacher_neg: torch.Tensor | None = None,
        teacher_matrix: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The weighted sum over ``dims``; the batch's fields (those the inner loss declares) go to it as they came."""
        given = {
            "target": target,
            "exclude": exclude,
            "neg_index": neg_index,
            "teacher_pos": teacher_pos,
            "teacher_neg": teacher_neg,
            "teacher_matrix": teacher_matrix,
        }
        fields = {k: v for k, v in given.items() if v is not None}
        width = q.shape[-1]
        if max(self.dims) > width:
            raise ValueError(f"loss.dims={self.dims}: every dim must be at most the embedding dimension {width}")
        parts: dict[str, torch.Tensor] = {}
        total = q.new_zeros((), dtype=torch.float32)
        for m, c in zip(self.dims, self.weights):
            out = self.loss(truncate(q, m, self.normalize), truncate(d, m, self.normalize), **fields)
            value = out["loss"] if isinstance(out, dict) else out
            parts[f"loss_dim{m}"] = value.detach()
            total = total + c * value
        return {"loss": total, **parts}
