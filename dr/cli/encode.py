"""``dr-encode``: encode a corpus into a FAISS index (the ``index`` file plus ``docid``).

With ``shard_size=N`` the corpus is encoded N passages at a time into ``embeddings=DIR`` (default
``<run dir>/embeddings``; float16 with ``fp16=true``) and the index is built from those shards: memory
holds one shard, not the corpus. Run again with the same ``embeddings=DIR`` after a kill and it resumes
at the first unfinished shard (:mod:`dr.retrieval.shards`). ``index_kind=auto`` fits the index into
``index_memory_gb`` (flat, else HNSW, else IVF-PQ; :func:`dr.retrieval.index.choose_index`).
``embedding_precision=int8|binary`` stores quantised codes instead of float32 vectors
(sentence-transformers' ``quantize_embeddings`` semantics, :mod:`dr.retrieval.quantized`): int8
calibrated on the corpus's own per-dimension ranges, binary in a FAISS ``IndexBinaryFlat`` with
``rescore_precision=binary|int8|none`` for dr-search's rescoring.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dr.cli import encoder_from_config, hydra_command
from dr.data import read_corpus
from dr.retrieval import DenseIndex, build_index
from dr.retrieval.quantized import QuantizedIndex
from dr.retrieval.shards import encode_sharded
from dr.config import ConfigError


def run(cfg: DictConfig, out: Path) -> DenseIndex:
    """Encode a corpus and save a FAISS index (the ``index`` file plus ``docid``)."""
    if (cfg.get("embedding_precision") or "float32") != "float32" and cfg.index_kind != "flat":
        raise ConfigError(
            f"embedding_precision={cfg.embedding_precision}, index_kind={cfg.index_kind}: expected index_kind=flat "
            "(the quantised index is exact over its codes)"
        )
    encoder = encoder_from_config(cfg, backend=cfg.get("backend", "torch"))
    corpus = read_corpus(cfg.corpus)
    params = OmegaConf.to_container(cfg.index_params) if cfg.get("index_params") else {}
    index_args = {
        "memory_budget_gb": float(cfg.get("index_memory_gb", 8.0)),
        **{k: v for k, v in params.items() if v is not None},
    }
    if cfg.get("shard_size"):
        folder = Path(cfg.embeddings) if cfg.get("embeddings") else out / "embeddings"
        shards = encode_sharded(
            encoder,
            corpus,
            folder,
            shard_size=cfg.shard_size,
            fp16=cfg.get("fp16", False),
            batch_size=cfg.batch_size,
            bf16=cfg.bf16,
        )
        print(f"embeddings of {len(shards)} passages in {folder} ({shards.manifest['num_shards']} shards)")
        index = DenseIndex.build(shards, list(corpus["docid"]), kind=cfg.index_kind, **index_args)
    else:
        index = build_index(
            encoder, corpus, index_kind=cfg.index_kind, batch_size=cfg.batch_size, bf16=cfg.bf16, **index_args
        )
    target = Path(cfg.output) if cfg.get("output") else out / "index"
    precision = cfg.get("embedding_precision") or "float32"
    if precision != "float32":  # int8 / binary codes of the float vectors (dr.retrieval.quantized)
        quantized = QuantizedIndex.from_dense(index, precision, rescore=cfg.get("rescore_precision") or "binary")
        quantized.save(target)
        print(
            f"indexed {len(quantized)} passages of {cfg.corpus} into {target} ({precision}, rescoring with "
            f"{quantized.rescore}; {quantized.nbytes / 2**20:.1f} MiB of codes)"
        )
        return quantized
    index.save(target)
    print(f"indexed {len(index)} passages of {cfg.corpus} into {target} ({index.kind})")
    return index


main = hydra_command("encode", run)
