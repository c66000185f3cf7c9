"""Teachers for distillation: frozen scorers of (query, passage) texts.

Every teacher is an ``nn.Module`` called as ``teacher(queries, passages)`` on a training batch's
texts; it returns the ``[B, P]`` float32 matrix of every query against every passage (TAS-B's
in-batch teacher, ``module.inbatch_teacher``, passed to the loss as ``teacher_matrix``). Every
teacher also scores per-query candidate lists, ``score_groups(queries, passages_per_query)``, which
``dr-score`` uses to write teacher-score files (:mod:`dr.teachers.scoring`).

- :class:`BiEncoderTeacher`: a frozen dual encoder (:class:`dr.models.BiEncoder`), q·d.
- :class:`CrossEncoderTeacher`: any Hugging Face ``AutoModelForSequenceClassification`` over all
  pairs (the teachers of Margin-MSE and TAS-B are BERT cross-encoders).
- :class:`ColBERTTeacher`: late interaction, Σ_i max_j q_i·d_j over the token embeddings of any
  Hugging Face encoder (Khattab & Zaharia 2020, Eq. 3; TAS-B's in-batch teacher is ColBERT).
- :class:`FusionTeacher`: BM25 + dense, normalised per query over its passages (:mod:`dr.teachers.fusion`);
  needs nothing but the corpus and the packaged all-MiniLM-L6-v2, so it works offline.

Teachers run in fp32 whatever the caller's autocast (``trainer.precision=bf16-mixed`` puts the
training step, where the in-batch teacher is called, under autocast): a teacher's scores are
targets, and bf16 puts a ColBERT score near 20 on a 0.125 grid. A teacher runs in bf16 only when
it is asked to (``bf16: true``). :func:`full_precision` turns autocast off for every call.

Models load on first use (instantiating a config costs nothing) and are kept out of the module's
``state_dict``, so checkpoints hold only the student. ``device=None`` picks the current CUDA
device when there is one (each DDP rank's own), else the CPU.
"""

from __future__ import annotations

import abc
import contextlib
from typing import Sequence

import numpy as np
import torch
from torch import nn

from dr.models.encoder import resolve_model_name


def _device(device: str | None) -> torch.device:
    if device:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def full_precision() -> contextlib.ExitStack:
    """A context with autocast off on the CPU and on CUDA (a teacher's own ``bf16: true`` turns it
    back on inside, :func:`dr.models.encoder.autocast_context`)."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast("cpu", enabled=False))
    if torch.cuda.is_available():
        stack.enter_context(torch.autocast("cuda", enabled=False))
    return stack


class Teacher(nn.Module, abc.ABC):
    """Base class: ``forward(queries, passages) -> [B, P]``; ``score_groups`` scores each query's
    own passages (by default one ``forward`` per query)."""

    def __init__(self, device: str | None = None):
        super().__init__()
        self.device_name = device
        self._loaded: dict = {}  # models live here, outside the state_dict

    @property
    def device(self) -> torch.device:
        return _device(self.device_name)

    def __call__(self, queries: Sequence[str], passages: Sequence[str]) -> torch.Tensor:
        with full_precision():  # the caller's autocast (a bf16-mixed training step) does not reach the teacher
            return super().__call__(queries, passages)

    #: whether :meth:`to_probability` maps this teacher's scores to a probability of relevance
    maps_to_probability: bool = False

    def to_probability(self, scores: np.ndarray) -> np.ndarray:
        """The scores as probabilities of relevance in [0, 1] (the scale of RocketQA's denoising
        threshold, :class:`dr.miners.DenoiseMiner`); only for a teacher with ``maps_to_probability``."""
        raise ValueError(
            f"{type(self).__name__}: its scores are not probabilities of relevance and have no map onto them"
        )

    @abc.abstractmethod
    def forward(self, queries: Sequence[str], passages: Sequence[str]) -> torch.Tensor:
        """The ``[B, P]`` teacher scores of every query against every passage."""

    def _hf_model(self, auto_class):
        """``(model, tokenizer)`` of ``self.model_name`` loaded with ``auto_class``, frozen on
        ``self.device``; loaded once, kept outside the state_dict."""
        if "model" not in self._loaded:
            from transformers import AutoTokenizer

            name = resolve_model_name(self.model_name)
            self._loaded["tokenizer"] = AutoTokenizer.from_pretrained(name)
            self._loaded["model"] = auto_class.from_pretrained(name).to(self.device).eval().requires_grad_(False)
        return self._loaded["model"], self._loaded["tokenizer"]

    def score_groups(
        self, queries: Sequence[str], passages: Sequence[Sequence[str]], show_progress: bool = False
    ) -> list[np.ndarray]:
        """Scores of ``passages[i]`` for ``queries[i]``, one array per query."""
        return [self.forward([q], list(p))[0].double().cpu().numpy() for q, p in zip(queries, passages)]
