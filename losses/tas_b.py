"""TAS-B's dual-teacher supervision: pairwise Margin-MSE plus an in-batch term.

Formula (Hofstätter et al. SIGIR 2021, "Efficiently Teaching an Effective Dense Retriever with
Balanced Topic Aware Sampling", Sec. 3.3, Eq. 5–7)::

    L = L_pair + λ · L_inbatch          (λ = 0.75 in TAS-B)

L_pair is Margin-MSE against the pairwise teacher's scores (:mod:`dr.losses.margin_mse`). The in-batch
term: a teacher scores every (query, passage) pair of the batch (``teacher_matrix [B, P]``, from
``module.inbatch_teacher``). For query i with s_pos = s(q_i, d_i⁺)::

    L_pos = MarginMSE( s_pos − s(q_i, d_j⁺) ,  t_pos − t(q_i, d_j⁺) )   over j ≠ i   (in-batch positives)
    L_neg = MarginMSE( s_pos − s(q_i, d_j⁻) ,  t_pos − t(q_i, d_j⁻) )   over negatives of queries j ≠ i
    L_inbatch = 0.5 · (L_pos + L_neg)

"Each with its own diagonal masked", as the reference code (matchmaker's TAS-B in-batch loss)
does: in the positives block query i's own positive is s_pos itself; in the negatives block query
i's own negatives are already covered by the pairwise term, so both are left out. Entries whose
teacher score is NaN are skipped. When the batch has no hard negatives L_inbatch = L_pos (the mean
of the terms that have pairs).

:class:`DistillationLoss` returns ``{"loss", "pair", "inbatch"}`` (and the in-batch term's own
components), each logged as ``train/<name>``. Its in-batch term may also be the listwise KL of
:mod:`dr.losses.listwise_kl`.

Scale: both terms score with the same student scores, ``student_scale · q·d`` (fp32, autocast off:
:mod:`dr.losses.scores`), compared with the teachers' raw scores, so the pairwise and in-batch margins
target one student scale (:class:`DistillationLoss` shares its ``student_scale``).

Recommended settings: ``loss=tas_b`` with ``inbatch_teacher=fusion`` or ``biencoder`` and a
teacher file (``data.teacher_scores``). Related: :mod:`dr.losses.infonce`.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from dr.losses.base import BATCH_FIELDS, Loss
from dr.losses.margin_mse import margin_mse
from dr.losses.scores import FollowsScale, scaled_student_scores


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


class InBatchMarginMSELoss(FollowsScale, Loss):
    """TAS-B's in-batch Margin-MSE term against ``teacher_matrix`` (see module docstring).

    ``student_scale`` multiplies the student's q·d before taking margins, as in
    :class:`dr.losses.MarginMSELoss` (inside :class:`DistillationLoss` it follows the pair term's
    scale, fitted or learnt). Returns a dict: ``loss`` (= ``inbatch``), ``inbatch_pos`` and
    ``inbatch_neg``.
    """

    fields = ("target", "neg_index", "teacher_matrix")
    required = ("target", "teacher_matrix")
    citation = (
        "Hofstätter et al. 2021, Efficiently Teaching an Effective Dense Retriever with Balanced Topic "
        "Aware Sampling, Sec. 3.3, Eq. 6-7 (in-batch Margin-MSE)"
    )
    score_scale = "margins of student_scale · q·d against the in-batch teacher's raw margins"

    def __init__(self, student_scale: float = 1.0):
        super().__init__()
        if student_scale <= 0:
            raise ValueError(f"student_scale must be positive, got {student_scale}")
        self.student_scale = student_scale

    def forward(self, q, d, target, teacher_matrix, neg_index=None) -> dict[str, torch.Tensor]:
        parts = inbatch_margin_mse(scaled_student_scores(q, d, self.scale()), teacher_matrix, target, neg_index)
        return {"loss": parts["inbatch"], **parts}


class DistillationLoss(Loss):
    """``L = L_pair + inbatch_weight · L_inbatch`` (see module docstring).

    Args:
        pair: the pairwise loss (e.g. :class:`dr.losses.MarginMSELoss`).
        inbatch: the in-batch loss (e.g. :class:`dr.losses.InBatchMarginMSELoss`), or None.
        inbatch_weight: λ.
        student_scale: one scale for the student's q·d in *both* terms, so that they target the
            same student scores (TAS-B's two teachers are matched by one student). The in-batch
            term follows the pair term's scale, including a fitted (``auto``) or learnt one. None:
            the pair term's own; a value is set on the pair term, and must agree with its own
            non-default scale.
    """

    fields = tuple(BATCH_FIELDS)  # the terms' fields; an instance takes the union of its terms'
    citation = (
        "Hofstätter et al. 2021, Efficiently Teaching an Effective Dense Retriever with Balanced Topic "
        "Aware Sampling, Sec. 3.3, Eq. 5 (L = L_pair + 0.75 · L_in-batch)"
    )
    score_scale = "the pair term's (the in-batch term follows it)"

    def __init__(
        self, pair: Loss, inbatch: Loss | None = None, inbatch_weight: float = 0.75, student_scale: float | None = None
    ):
        super().__init__()
        self.pair = pair
        self.inbatch = inbatch
        self.inbatch_weight = inbatch_weight
        own = getattr(pair, "student_scale", None)
        if student_scale is not None:
            if not student_scale > 0:
                raise ValueError(f"student_scale must be positive, got {student_scale}")
            if own not in (None, 1.0, student_scale):
                raise ValueError(
                    f"DistillationLoss: student_scale={student_scale} but the pair term's is {own}; set one of them"
                )
            if hasattr(pair, "set_scale"):
                pair.set_scale(float(student_scale))
            elif own is not None:
                pair.student_scale = float(student_scale)
            elif inbatch is not None and hasattr(inbatch, "student_scale"):
                inbatch.student_scale = float(student_scale)
        if inbatch is not None and hasattr(inbatch, "follow_scale") and hasattr(pair, "scale"):
            inbatch.follow_scale(pair)
        self.student_scale = getattr(pair, "student_scale", student_scale)
        self._show_scale()

    def _show_scale(self) -> None:
        """The in-batch term's ``student_scale`` attribute shows the pair term's numeric scale
        (it computes with the pair term's :meth:`scale`, fitted or learnt, whatever the attribute)."""
        if (
            self.inbatch is not None
            and hasattr(self.inbatch, "student_scale")
            and isinstance(self.student_scale, float)
        ):
            self.inbatch.student_scale = self.student_scale

    def _terms(self) -> list[Loss]:
        return [t for t in (self.pair, self.inbatch) if t is not None]

    def input_fields(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f for t in self._terms() for f in t.input_fields()))

    def required_fields(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f for t in self._terms() for f in t.required_fields()))

    @classmethod
    def _term_classes(cls, node: Mapping[str, Any]) -> list[tuple[type, Mapping]]:
        from hydra.utils import get_class

        return [
            (get_class(term["_target_"]), term)
            for key in ("pair", "inbatch")
            if isinstance(term := node.get(key), Mapping) and term.get("_target_")
        ]

    @classmethod
    def config_fields(cls, node: Mapping[str, Any]) -> frozenset[str]:
        return frozenset().union(*(c.config_fields(term) for c, term in cls._term_classes(node)))

    @classmethod
    def config_citations(cls, node: Mapping[str, Any]) -> list[str]:
        return list(
            dict.fromkeys([cls.citation, *(x for c, term in cls._term_classes(node) for x in c.config_citations(term))])
        )

    def logit_scale(self) -> float | None:
        return self.pair.logit_scale()

    def scale_fit_queries(self) -> int | None:
        return self.pair.scale_fit_queries()

    def fit_scale(self, student_margins: torch.Tensor, teacher_margins: torch.Tensor) -> float:
        scale = self.pair.fit_scale(student_margins, teacher_margins)  # the in-batch term follows it
        self.student_scale = float(scale)
        self._show_scale()
        return scale

    def param_groups(self) -> list[dict]:
        return [g for t in self._terms() for g in t.param_groups()]

    def forward(self, q: torch.Tensor, d: torch.Tensor, **fields) -> dict[str, torch.Tensor]:
        def own(term: Loss) -> dict:
            return {k: v for k, v in fields.items() if k in term.input_fields()}

        pair = _components(self.pair(q, d, **own(self.pair)))
        out = {"pair": pair["loss"]}
        total = pair["loss"]
        if self.inbatch is not None:
            inbatch = _components(self.inbatch(q, d, **own(self.inbatch)))
            out.update({k: v for k, v in inbatch.items() if k != "loss"})
            out["inbatch"] = inbatch["loss"]
            total = total + self.inbatch_weight * inbatch["loss"]
        return {"loss": total, **out}


def _components(out) -> dict[str, torch.Tensor]:
    return out if isinstance(out, dict) else {"loss": out}
