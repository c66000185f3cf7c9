"""A ColBERT-style teacher: late interaction Σ_i max_j q_i·d_j over the token embeddings of any
Hugging Face encoder (Khattab & Zaharia 2020, Eq. 3; TAS-B's in-batch teacher is ColBERT)."""

from __future__ import annotations

from typing import Sequence

import torch

from dr.models.encoder import autocast_context
from dr.teachers.base import Teacher


class ColBERTTeacher(Teacher):
    """Late interaction (ColBERT, Khattab & Zaharia SIGIR 2020, Eq. 3): ``Σ_i max_j q_i · d_j``
    over the (L2-normalised when ``normalize``) last-layer token embeddings of any HF encoder,
    padding excluded. ColBERT checkpoints' extra linear projection is not applied: point
    ``model`` at an encoder whose token states are the embeddings."""

    def __init__(
        self,
        model: str = "all-MiniLM-L6-v2",
        query_max_length: int = 32,
        passage_max_length: int = 180,
        batch_size: int = 32,
        normalize: bool = True,
        bf16: bool = False,
        device: str | None = None,
    ):
        super().__init__(device)
        self.model_name = model
        self.query_max_length = query_max_length
        self.passage_max_length = passage_max_length
        self.batch_size = batch_size
        self.normalize = normalize
        self.bf16 = bf16

    def _model(self):
        from transformers import AutoModel

        return self._hf_model(AutoModel)

    def token_embeddings(self, texts: Sequence[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``[N, L, H]`` token embeddings (zeros at padding) and the ``[N, L]`` mask."""
        model, tokenizer = self._model()
        inputs = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(
            self.device
        )
        with autocast_context(self.device, self.bf16):
            hidden = model(**inputs).last_hidden_state.float()
        if self.normalize:
            hidden = torch.nn.functional.normalize(hidden, dim=-1)
        mask = inputs["attention_mask"].bool()
        return hidden * mask[..., None], mask

    @torch.inference_mode()
    def forward(self, queries, passages) -> torch.Tensor:
        q, q_mask = self.token_embeddings(queries, self.query_max_length)
        out = torch.zeros(len(queries), len(passages))
        for start in range(0, len(passages), self.batch_size):
            d, d_mask = self.token_embeddings(passages[start : start + self.batch_size], self.passage_max_length)
            sim = torch.einsum("bih,pjh->bpij", q, d).masked_fill(~d_mask[None, :, None, :], float("-inf"))
            maxsim = sim.max(-1).values.masked_fill(~q_mask[:, None, :], 0.0)
            out[:, start : start + len(d)] = maxsim.sum(-1).cpu()
        return out
