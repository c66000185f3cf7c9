"""A cross-encoder teacher: any Hugging Face ``AutoModelForSequenceClassification`` over every pair
(the teachers of Margin-MSE and TAS-B are BERT cross-encoders; Hofstätter et al. 2020, Sec. 3)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from dr.models.encoder import autocast_context
from dr.teachers.base import Teacher


class CrossEncoderTeacher(Teacher):
    """A cross-encoder: any ``AutoModelForSequenceClassification`` (hub name or local folder).

    The score of a pair is the logit when the model has one label, else the log-probability of
    label ``label`` (default 1, "relevant"). Pairs are tokenised as (query, passage), truncated to
    ``max_length`` and scored in batches sorted by length.
    """

    def __init__(
        self,
        model: str = "cross-encoder/ms-marco-MiniLM-L-6-v2",
        max_length: int = 256,
        batch_size: int = 32,
        bf16: bool = False,
        device: str | None = None,
        label: int = 1,
    ):
        super().__init__(device)
        self.model_name = model
        self.max_length = max_length
        self.batch_size = batch_size
        self.bf16 = bf16
        self.label = label

    def _model(self):
        from transformers import AutoModelForSequenceClassification

        return self._hf_model(AutoModelForSequenceClassification)

    @torch.inference_mode()
    def score_pairs(self, queries: Sequence[str], passages: Sequence[str], show_progress: bool = False) -> np.ndarray:
        """Scores of the pairs ``(queries[i], passages[i])``, float64 ``[n]``."""
        model, tokenizer = self._model()
        n = len(queries)
        out = np.zeros(n, dtype=np.float64)
        order = np.argsort([-(len(q) + len(p)) for q, p in zip(queries, passages)], kind="stable")
        bar = tqdm(total=n, desc="cross-encoder", unit="pair", disable=not show_progress, mininterval=2)
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            inputs = tokenizer(
                [queries[i] for i in idx],
                [passages[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            with autocast_context(self.device, self.bf16):
                logits = model(**inputs).logits.float()
            if logits.shape[-1] == 1:
                scores = logits[:, 0]
            else:
                scores = torch.log_softmax(logits, dim=-1)[:, self.label]
            out[idx] = scores.double().cpu().numpy()
            bar.update(len(idx))
        bar.close()
        return out

    maps_to_probability = True

    def to_probability(self, scores: np.ndarray) -> np.ndarray:
        """P(relevant): the sigmoid of a single-label model's logit (a binary relevance classifier,
        as the MS MARCO cross-encoders, whose sentence-transformers activation is the sigmoid), the
        exponential of a several-label model's log-probability of ``label``."""
        model, _ = self._model()
        s = np.asarray(scores, dtype=np.float64)
        with np.errstate(over="ignore"):
            return 1.0 / (1.0 + np.exp(-s)) if model.config.num_labels == 1 else np.exp(s)

    def forward(self, queries, passages) -> torch.Tensor:
        B, P = len(queries), len(passages)
        scores = self.score_pairs([q for q in queries for _ in range(P)], list(passages) * B)
        return torch.from_numpy(scores.reshape(B, P)).float()

    def score_groups(self, queries, passages, show_progress: bool = False) -> list[np.ndarray]:
        flat = self.score_pairs(
            [q for q, group in zip(queries, passages) for _ in group], [p for g in passages for p in g], show_progress
        )
        return list(np.split(flat, np.cumsum([len(g) for g in passages])[:-1])) if passages else []
