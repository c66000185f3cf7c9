"""Mining: retrieve candidates for the training queries and apply a miner (``dr-mine``, index refresh).

Candidates come from a dense retriever (the corpus is encoded, indexed with FAISS and searched
top-k, on the GPU when faiss-gpu sees one) or from a run file. Queries are processed in chunks,
so memory stays bounded; corpus embeddings can be cached on disk (``embeddings_cache``) and are
reused when the model, corpus and lengths are unchanged.

For SimANS and the margin miners the positive's score matters: with an encoder it is computed
exactly (q · d⁺), whether or not the positive was retrieved; with a run file it is the positive's
score in the run when retrieved, else unknown (and the miners fall back as documented).

Score scale: kernels tuned on a retriever's logits (SimANS's a, b, τ) see ``score_scale × s``
(:func:`resolve_score_scale`: 1/temperature of the training loss, else 20 = 1/0.05 for a cosine
encoder and 1 for a dot-product one or a run file); the negatives file keeps the raw scores. The
statistics report each kernel's effective sample size 1/Σp² (mean over queries), so a flat kernel
shows up as a value close to its pool size.

Teacher: :func:`with_teacher_scores` has a teacher (cross-encoder, fusion) score every candidate and
positive before mining, for the miners that read teacher scores (``miner=denoise``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import hydra
import numpy as np
from tqdm.auto import tqdm

from dr.config import ConfigError
from dr.data.io import atomic_write
from dr.data.negatives import NegativesRecord
from dr.retrieval.index import DenseIndex
from dr.miners import Candidates

log = logging.getLogger(__name__)


def _fingerprint(encoder, corpus_path: str, n_docs: int) -> str:
    """What the cached embeddings depend on: every weight, the encoder settings and the corpus.

    An encoder with a ``fingerprint()`` (the onnxruntime one: a digest of its ONNX files) gives its
    own; a torch encoder's weights are hashed here.
    """
    if hasattr(encoder, "fingerprint"):
        digest = encoder.fingerprint()
    else:
        weights = hashlib.sha1()
        for name, tensor in sorted(encoder.state_dict().items()):
            weights.update(name.encode())
            weights.update(tensor.detach().float().cpu().numpy().tobytes())
        digest = weights.hexdigest()
    return json.dumps(
        {"weights": digest, "corpus": str(corpus_path), "docs": n_docs, **encoder.config_dict()}, sort_keys=True
    )


def corpus_embeddings(encoder, corpus, corpus_path: str, cache: str | None, batch_size: int, bf16: bool) -> np.ndarray:
    """Encode the corpus, or read the cached embeddings (a memory-mapped ``.npy``) if they match."""
    from dr.retrieval.search import encode_corpus

    if cache:
        cache_path = Path(cache)
        meta_path = cache_path.with_suffix(cache_path.suffix + ".json")
        fingerprint = _fingerprint(encoder, corpus_path, len(corpus))
        if cache_path.is_file() and meta_path.is_file() and meta_path.read_text() == fingerprint:
            log.info("reusing corpus embeddings from %s", cache_path)
            return np.load(cache_path, mmap_mode="r")
    embeddings = encode_corpus(encoder, corpus, batch_size=batch_size, bf16=bf16)
    if cache:
        with atomic_write(cache_path, "wb") as f:
            np.save(f, embeddings)
        with atomic_write(meta_path) as f:
            f.write(fingerprint)
    return embeddings


def _quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    q = np.quantile(np.asarray(values, np.float64), [0.05, 0.25, 0.5, 0.75, 0.95])
    return {f"p{p}": float(v) for p, v in zip((5, 25, 50, 75, 95), q)}


def dense_candidates(
    encoder,
    index: DenseIndex,
    embeddings: np.ndarray,
    row_of: dict[str, int],
    queries: dict[str, str],
    positives: dict[str, list[str]],
    top_k: int,
    batch_size: int = 64,
    bf16: bool = False,
):
    """A candidate source for :func:`mine_queries`: encode a chunk of queries and search ``index``.

    The positives' scores are exact (q · d⁺ with the corpus ``embeddings``), retrieved or not.
    """

    def candidates(chunk: list[str]):
        q_emb = encoder.encode_queries(
            [queries[q] for q in chunk], batch_size=batch_size, bf16=bf16, show_progress=False
        )
        scores, cand_ids = index.search(q_emb, top_k)
        cand_scores = [row[: len(ids)].tolist() for row, ids in zip(scores, cand_ids)]
        pos_scores = [
            [float(q_emb[i] @ np.asarray(embeddings[row_of[d]])) for d in positives[q] if d in row_of]
            for i, q in enumerate(chunk)
        ]
        return cand_ids, cand_scores, pos_scores

    return candidates


def run_candidates(run: dict[str, dict[str, float]], positives: dict[str, list[str]]):
    """A candidate source for :func:`mine_queries` from a run file's rankings."""

    def candidates(chunk: list[str]):
        cand_ids = [list(run.get(q, {})) for q in chunk]
        cand_scores = [list(run.get(q, {}).values()) for q in chunk]
        pos_scores = [[run.get(q, {}).get(d, np.nan) for d in positives[q]] for q in chunk]
        return cand_ids, cand_scores, pos_scores

    return candidates


def with_teacher_scores(candidates, teacher, queries: dict[str, str], passage_text, positives: dict[str, list[str]]):
    """A candidate source that adds a teacher's scores of every candidate and positive.

    ``teacher`` has ``score_groups(queries, passages_per_query)`` (:mod:`dr.teachers`); each
    query's group is its candidates then its positives not among them, so a fusion teacher
    normalises over exactly what the miner sees.
    """

    def scored(chunk: list[str]):
        cand_ids, cand_scores, pos_scores = candidates(chunk)
        groups = []
        for q, ids in zip(chunk, cand_ids):
            ids = [str(d) for d in ids]
            groups.append(ids + [p for p in positives[q] if p not in set(ids)])
        scores = teacher.score_groups([queries[q] for q in chunk], [[passage_text(d) for d in g] for g in groups])
        t_cand, t_pos = [], []
        for q, ids, g, s in zip(chunk, cand_ids, groups, scores):
            by_doc = dict(zip(g, np.asarray(s, np.float64).tolist()))
            t_cand.append([by_doc[str(d)] for d in ids])
            t_pos.append([by_doc[p] for p in positives[q]])
        return cand_ids, cand_scores, pos_scores, t_cand, t_pos

    return scored


def mine_queries(
    qids: list[str],
    positives: dict[str, list[str]],
    candidates,
    miner,
    rng: np.random.Generator,
    chunk_size: int = 1024,
    show_progress: bool = True,
) -> tuple[list[NegativesRecord], dict]:
    """Apply ``miner`` to the candidates of ``qids``, chunk by chunk; returns the records and their statistics.

    ``candidates(chunk) -> (candidate ids, candidate scores, positive scores)``, one list per
    query (see :func:`dense_candidates`, :func:`run_candidates`), optionally followed by the
    teacher's candidate and positive scores (:func:`with_teacher_scores`). Shared by ``dr-mine``
    and the index refresh (:mod:`dr.refresh`).
    """
    records: list[NegativesRecord] = []
    pos_scores_all, neg_scores_all, retrieved = [], [], 0
    kernels = kernel_miners(miner)
    ess: dict[str, list[np.ndarray]] = {name: [] for name in kernels}
    for start in tqdm(range(0, len(qids), chunk_size), desc="mine", unit="chunk", disable=not show_progress):
        chunk = qids[start : start + chunk_size]
        cand_ids, cand_scores, pos_scores, *teacher = candidates(chunk)
        batch = Candidates.from_lists(cand_ids, cand_scores, [positives[q] for q in chunk], pos_scores, *teacher)
        mined = miner(batch, rng)
        for name, kernel in kernels.items():
            if kernel.last_effective_sample_size is not None:
                ess[name].append(kernel.last_effective_sample_size)
        neg_ids, neg_scores = mined.to_lists()
        retrieved += int(batch.is_positive.any(axis=1).sum())
        for q, p_scores, n_ids, n_scores in zip(chunk, pos_scores, neg_ids, neg_scores):
            p_scores = [None if np.isnan(s) else float(s) for s in p_scores]
            n_scores = [None if np.isnan(s) else float(s) for s in n_scores]
            records.append(NegativesRecord(q, positives[q], [str(d) for d in n_ids], n_scores, p_scores))
            pos_scores_all += [s for s in p_scores if s is not None]
            neg_scores_all += [s for s in n_scores if s is not None]
    counts = [len(r.negatives) for r in records]
    stats = {
        "queries": len(records),
        "negatives_per_query": float(np.mean(counts)) if counts else 0.0,
        "queries_without_negatives": int(sum(c == 0 for c in counts)),
        "positive_retrieved_in_top_k": retrieved / max(1, len(records)),
        "positive_score": _quantiles(pos_scores_all),
        "negative_score": _quantiles(neg_scores_all),
    }
    if kernels:
        stats["score_scale"] = {name: kernel.score_scale for name, kernel in kernels.items()}
        stats["effective_sample_size"] = {name: _nanmean(values) for name, values in ess.items()}
    return records, stats


def _nanmean(chunks: list[np.ndarray]) -> float | None:
    """The mean of the known values (None when there is none: JSON has no NaN)."""
    values = np.concatenate(chunks) if chunks else np.zeros(0)
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else None


def kernel_miners(miner) -> dict[str, object]:
    """The sampling kernels inside ``miner`` (itself or the stages of a chain), by name: the
    miners that record ``last_effective_sample_size`` (SimANS)."""
    stages = list(getattr(miner, "miners", [miner]))
    found = {}
    for i, stage in enumerate(stages):
        if hasattr(stage, "last_effective_sample_size"):
            name = type(stage).__name__.removesuffix("Miner").lower()
            found[name if len(stages) == 1 else f"{i}_{name}"] = stage
    return found


COSINE_TEMPERATURE = 0.05  # InfoNCE's default (sentence-transformers' scale 20)


def student_score_scale(loss=None, encoder=None) -> float:
    """Logits per unit of similarity: the training loss's own scale when it has one
    (:meth:`dr.losses.base.Loss.logit_scale`, InfoNCE's 1/temperature), else by the encoder's
    similarity: ``1 / 0.05 = 20`` for cosine, 1 for dot."""
    own = loss.logit_scale() if loss is not None else None
    if own:
        return float(own)
    if getattr(encoder, "similarity", None) == "cos":
        return 1.0 / COSINE_TEMPERATURE
    return 1.0


def resolve_score_scale(value, student: float) -> float:
    """``value`` as a positive float; ``"auto"`` or None: ``student``, the student's own
    (:func:`student_score_scale`)."""
    if value is None or value == "auto":
        return float(student)
    if not float(value) > 0:
        raise ConfigError(f"score_scale={value}: expected auto or a positive number")
    return float(value)


def set_score_scale(miner, score_scale: float) -> None:
    """Give ``score_scale`` to every stage of ``miner`` that takes one and has none set."""
    for stage in [miner, *getattr(miner, "miners", [])]:
        if hasattr(stage, "score_scale") and stage.score_scale is None:
            stage.score_scale = float(score_scale)


def score_lists(records: list[NegativesRecord]) -> tuple[list[float], list[float]]:
    """The known positive and negative scores of mined records (for the histogram)."""
    pos = [s for r in records for s in r.positive_scores if s is not None]
    neg = [s for r in records for s in r.negative_scores if s is not None]
    return pos, neg


def instantiate_miner(miner_cfg, docids, score_scale: float | None = None) -> object:
    """A miner from its Hydra config; a miner that draws from the whole corpus (``corpus=None``,
    e.g. :class:`dr.miners.RandomMiner`) is given the corpus's docids, and the kernels without a
    ``score_scale`` of their own are given ``score_scale`` (:func:`set_score_scale`)."""
    miner = hydra.utils.instantiate(miner_cfg)
    if getattr(miner, "corpus", False) is None:
        miner.corpus = np.asarray(docids)
    if score_scale is not None:
        set_score_scale(miner, score_scale)
    return miner
