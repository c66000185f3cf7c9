"""Teachers for distillation: frozen scorers of (query, passage) texts.

Every teacher is an ``nn.Module`` called as ``teacher(queries, passages)`` on a training batch's
texts; it returns the ``[B, P]`` float32 matrix of every query against every passage (TAS-B's
in-batch teacher, ``module.inbatch_teacher``, passed to the loss as ``teacher_matrix``). Every
teacher also scores per-query candidate lists, ``score_groups(queries, passages_per_query)``, which
``dr-score`` uses to write teacher-score files (:mod:`dr.score`).

- :class:`BiEncoderTeacher`: a frozen dual encoder (:class:`dr.encoder.BiEncoder`), q·d.
- :class:`CrossEncoderTeacher`: any Hugging Face ``AutoModelForSequenceClassification`` over all
  pairs (the teachers of Margin-MSE and TAS-B are BERT cross-encoders).
- :class:`ColBERTTeacher`: late interaction, Σ_i max_j q_i·d_j over the token embeddings of any
  Hugging Face encoder (Khattab & Zaharia 2020, Eq. 3; TAS-B's in-batch teacher is ColBERT).
- :class:`FusionTeacher`: BM25 + dense, normalised per query over its passages (:mod:`dr.fusion`);
  needs nothing but the corpus and the packaged all-MiniLM-L6-v2, so it works offline.

Models load on first use (instantiating a config costs nothing) and are kept out of the module's
``state_dict``, so checkpoints hold only the student. ``device=None`` picks the current CUDA
device when there is one (each DDP rank's own), else the CPU.
"""

from __future__ import annotations

import abc

from typing import Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from dr.encoder import autocast_context, resolve_model_name


def _device(device: str | None) -> torch.device:
    if device:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


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

    def score_groups(self, queries: Sequence[str], passages: Sequence[Sequence[str]], show_progress: bool = False) -> list[np.ndarray]:
        """Scores of ``passages[i]`` for ``queries[i]``, one array per query."""
        return [self.forward([q], list(p))[0].double().cpu().numpy() for q, p in zip(queries, passages)]


class BiEncoderTeacher(Teacher):
    """A frozen :class:`~dr.encoder.BiEncoder`: ``q · d`` (cosine when it normalises).

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
            from dr.encoder import BiEncoder

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
            emb = self.encoder.encode_passages(missing, batch_size=self.batch_size, bf16=self.bf16, show_progress=show_progress)
            self._cache.update(zip(missing, emb))
        return np.stack([self._cache[p] for p in passages]) if passages else np.zeros((0, self.encoder.dim), np.float32)

    def embed_queries(self, queries: Sequence[str]) -> np.ndarray:
        return self.encoder.encode_queries(list(queries), batch_size=self.batch_size, bf16=self.bf16, show_progress=False)

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
            inputs = tokenizer([queries[i] for i in idx], [passages[i] for i in idx], padding=True, truncation=True,
                               max_length=self.max_length, return_tensors="pt").to(self.device)
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

    def forward(self, queries, passages) -> torch.Tensor:
        B, P = len(queries), len(passages)
        scores = self.score_pairs([q for q in queries for _ in range(P)], list(passages) * B)
        return torch.from_numpy(scores.reshape(B, P)).float()

    def score_groups(self, queries, passages, show_progress: bool = False) -> list[np.ndarray]:
        flat = self.score_pairs([q for q, group in zip(queries, passages) for _ in group], [p for g in passages for p in g], show_progress)
        return list(np.split(flat, np.cumsum([len(g) for g in passages])[:-1])) if passages else []


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
        inputs = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(self.device)
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


class FusionTeacher(Teacher):
    """BM25 + dense score fusion (:mod:`dr.fusion`), normalised per query over its passages.

    In a batch (``forward``) each query's scores are normalised over the batch's passages; in
    ``score_groups`` over that query's candidates (positives and negatives). BM25 uses the
    statistics of ``corpus`` (:class:`dr.fusion.BM25Scorer`, any text pair); the
    dense part is a frozen :class:`BiEncoderTeacher` over ``model``.
    """

    def __init__(
        self,
        corpus: str = "scifact:corpus",
        model: str = "all-MiniLM-L6-v2",
        bm25_weight: float = 0.5,
        dense_weight: float = 0.5,
        normalization: str = "minmax",
        query_max_length: int | None = 64,
        passage_max_length: int | None = 128,
        batch_size: int = 64,
        bf16: bool = False,
        k1: float = 1.2,
        b: float = 0.75,
        stemmer: str | None = "english",
        stopwords: str | None = "en",
        device: str | None = None,
    ):
        super().__init__(device)
        if normalization not in ("minmax", "zscore"):
            raise ValueError(f"normalization must be 'minmax' or 'zscore', got {normalization!r}")
        self.corpus = corpus
        self.bm25_weight, self.dense_weight = bm25_weight, dense_weight
        self.normalization = normalization
        self.bm25_args = dict(k1=k1, b=b, stemmer=stemmer, stopwords=stopwords)
        self.dense = BiEncoderTeacher(model, query_max_length, passage_max_length, batch_size, bf16, device)

    @property
    def bm25(self):
        if "bm25" not in self._loaded:
            from dr.data import passage_texts, read_corpus
            from dr.fusion import BM25Scorer

            self._loaded["bm25"] = BM25Scorer(passage_texts(read_corpus(self.corpus)), **self.bm25_args)
        return self._loaded["bm25"]

    def _fuse(self, bm25: np.ndarray, dense: np.ndarray) -> np.ndarray:
        from dr.fusion import fuse

        return fuse([bm25, dense], [self.bm25_weight, self.dense_weight], self.normalization)

    def forward(self, queries, passages) -> torch.Tensor:
        bm25 = self.bm25.score(list(queries), list(passages))
        dense = self.dense.scores(queries, passages)
        return torch.from_numpy(self._fuse(bm25, dense)).float()

    def score_groups(self, queries, passages, show_progress: bool = False) -> list[np.ndarray]:
        dense = self.dense.score_groups(queries, passages, show_progress=show_progress)
        return [self._fuse(self.bm25.score([q], list(group))[0], d) for q, group, d in zip(queries, passages, dense)]
