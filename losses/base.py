"""The loss contract: what every training objective of ``dr.losses`` declares, as class attributes
that the rest of dr reads instead of matching ``_target_`` strings.

A loss is called as ``loss(q, d, **fields)``: ``q [B, H]`` are the batch's query embeddings,
``d [P, H]`` its passage embeddings, and ``fields`` the batch fields the loss declares (see
:data:`BATCH_FIELDS`). It returns a scalar, or a dict with ``"loss"`` and named components (each
logged as ``train/<name>``). A subclass declares:

- :attr:`Loss.fields`: the batch fields ``forward`` takes. The training module hands over exactly
  these; a field outside them is an error (no ``**_`` that swallows a misspelled key).
- :attr:`Loss.required`: those it cannot work without. Config validation asks
  :meth:`Loss.config_fields`, so a loss that needs teacher scores or an in-batch teacher is refused
  before any model loads when the config provides none.
- :attr:`Loss.citation`: the paper and the equation it implements (the model card cites it).
- :attr:`Loss.score_scale`: the score scale its logits (or margins) live on, in words.
- :meth:`Loss.logit_scale`: logits per unit of the student's similarity, when the loss has a scale
  of its own (InfoNCE: 1/τ). Kernels tuned on a retriever's logits (SimANS's a and b) read it
  through the score scale resolved once in :func:`dr.training.train`; None: the loss has none,
  and the encoder's similarity decides (cosine 20 = 1/0.05, dot 1).
- the scale hooks, for losses whose student scale is fitted to data or learnt:
  :meth:`Loss.scale_fit_queries`, :meth:`Loss.fit_scale` and :meth:`Loss.param_groups`.

Adding a loss is one file here (a subclass) and one file in ``conf/loss/``.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar, Mapping

import torch
from torch import nn

#: Every batch field a loss may declare -> what it is, and how a config provides it.
BATCH_FIELDS: dict[str, str] = {
    "target": "[B]: the column of each query's positive among the batch's passages",
    "exclude": "[B, P] bool: other known positives of each query, left out of its scores",
    "neg_index": "[B, N]: the columns of each query's hard negatives (-1: missing)",
    "teacher_pos": "[B]: the teacher's score of each query's positive; set data.teacher_scores=FILE (a dr-score "
    "TSV) or data.negatives=FILE data.teacher_from_negatives=true",
    "teacher_neg": "[B, N]: the teacher's scores of each query's negatives; set data.teacher_scores=FILE (a dr-score "
    "TSV) or data.negatives=FILE data.teacher_from_negatives=true",
    "teacher_matrix": "[B, P]: an in-batch teacher's scores of every (query, passage) pair of the batch; set "
    "inbatch_teacher=fusion|biencoder|cross_encoder|colbert",
}

#: The fields that come from a teacher-score file.
TEACHER_SCORE_FIELDS = frozenset({"teacher_pos", "teacher_neg"})


class Loss(nn.Module):
    """Base class of dr's losses (see the module docstring)."""

    fields: ClassVar[tuple[str, ...]] = ()
    required: ClassVar[tuple[str, ...]] = ()
    citation: ClassVar[str] = ""
    score_scale: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        unknown = sorted(set(cls.fields) - set(BATCH_FIELDS))
        if unknown:
            raise TypeError(
                f"{cls.__name__}.fields: {', '.join(unknown)} are not batch fields (known: {', '.join(BATCH_FIELDS)})"
            )
        if not set(cls.required) <= set(cls.fields):
            raise TypeError(
                f"{cls.__name__}.required: {sorted(set(cls.required) - set(cls.fields))} are not in its fields"
            )

    # ------------------------------------------------------------------ the fields
    def input_fields(self) -> tuple[str, ...]:
        """The batch fields this instance takes (a composite loss: its terms')."""
        return self.fields

    def required_fields(self) -> tuple[str, ...]:
        return self.required

    @classmethod
    def config_fields(cls, node: Mapping[str, Any]) -> frozenset[str]:
        """The batch fields a loss built from the config ``node`` (its ``_target_`` is this class)
        cannot do without: what config validation checks the data and module settings against."""
        return frozenset(cls.required)

    @classmethod
    def config_citations(cls, node: Mapping[str, Any]) -> list[str]:
        """The papers a loss built from ``node`` implements, for the model card."""
        return [cls.citation] if cls.citation else []

    def __call__(self, q: torch.Tensor, d: torch.Tensor, *args: Any, **fields: Any):
        if args:  # positional fields, in the order of forward's parameters after q and d
            names = list(inspect.signature(self.forward).parameters)[2:]
            fields = {**dict(zip(names, args)), **fields}
        declared = self.input_fields()
        unknown = [k for k in fields if k not in declared]
        if unknown:
            raise TypeError(
                f"{type(self).__name__} was given batch fields it does not declare: {', '.join(unknown)} "
                f"(it declares {', '.join(declared) or 'none'})"
            )
        for name in self.required_fields():
            if fields.get(name) is None:
                raise ValueError(f"{type(self).__name__} needs `{name}` in the batch: {BATCH_FIELDS[name]}")
        return super().__call__(q, d, **fields)

    # ------------------------------------------------------------------ the score scale
    def logit_scale(self) -> float | None:
        """Logits per unit of the student's similarity, or None when the loss has no scale of its own."""
        return None

    def scale_fit_queries(self) -> int | None:
        """How many training queries to fit the student scale on at train start (None: no fit)."""
        return None

    def fit_scale(self, student_margins: torch.Tensor, teacher_margins: torch.Tensor) -> float:
        """Fit the student scale to the teacher's margins and set it; return it. Called by the
        training module when :meth:`scale_fit_queries` is not None."""
        raise TypeError(f"{type(self).__name__} has no student scale to fit")

    def param_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter groups for the loss's own trained parameters (a learnable scale)."""
        return []
