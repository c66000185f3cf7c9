"""A frozen dual encoder as teacher: q·d (cosine when it normalises)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from dr.teachers.base import Teacher


class BiEncoderTeacher(Teacher):
    """A frozen :class:`~dr.models.BiEncoder`: ``q · d`` (cosine when it normalises).

    Passage embeddings are cached by text (up to ``cache_size``), so a passage seen again in a
    later batch is not re-encoded.
    """

    def __init__(
        self,
        model: str = "all-MiniLM-L6-v2",
        query_max_length: int | None = 64,
        passage_max_length: int | None = 128,
        batch_size: int = 64,
        bf16: bool = False,
        device: str | None = None,
        cache_size: int = 200_000,
    ):
        super().__init__(device)
        self.model_name = model
        self.query_max_length = query_max_length
        self.passage_max_length = passage_max_length
        self.batch_size = batch_size
        self.bf16 = bf16
        self.cache_size = cache_size
        self._cache: dict[str, np.ndarray] = {}

    @property
    def encoder(self):
        if "encoder" not in self._loaded:
            from dr.models import BiEncoder

            encoder = BiEncoder.from_pretrained(
                self.model_name, query_max_length=self.query_max_length, passage_max_length=self.passage_max_length
            )
            self._loaded["encoder"] = encoder.to(self.device).eval().requires_grad_(False)
        return self._loaded["encoder"]

    def embed_passages(self, passages: Sequence[str], show_progress: bool = False) -> np.ndarray:
        missing = list(dict.fromkeys(p for p in passages if p not in self._cache))
        if missing:
            if len(self._cache) + len(missing) > self.cache_size:
                self._cache.clear()
            emb = self.encoder.encode_passages(
                missing, batch_size=self.batch_size, bf16=self.bf16, show_progress=show_progress
            )
            self._cache.update(zip(missing, emb))
        return np.stack([self._cache[p] for p in passages]) if passages else np.zeros((0, self.encoder.dim), np.float32)

    def embed_queries(self, queries: Sequence[str]) -> np.ndarray:
        return self.encoder.encode_queries(
            list(queries), batch_size=self.batch_size, bf16=self.bf16, show_progress=False
        )

    def scores(self, queries, passages) -> np.ndarray:
        """The float64 ``[B, P]`` score matrix."""
        q = self.embed_queries(queries).astype(np.float64)
        return q @ self.embed_passages(list(passages)).astype(np.float64).T

    def forward(self, queries, passages) -> torch.Tensor:
        return torch.from_numpy(self.scores(queries, passages)).float()

    def score_groups(self, queries, passages, show_progress: bool = False) -> list[np.ndarray]:
        q = self.embed_queries(queries)
        d = self.embed_passages([p for group in passages for p in group], show_progress=show_progress)
        out, start = [], 0
        for i, group in enumerate(passages):
            out.append(d[start : start + len(group)].astype(np.float64) @ q[i].astype(np.float64))
            start += len(group)
        return out
