"""``dr-search``: search queries against a saved index and write a TREC run file.

A quantised index (``dr-encode embedding_precision=int8|binary``) is searched with the float query
(:mod:`dr.retrieval.quantized`); a binary one shortlists ``k · rescore_multiplier`` passages by
Hamming distance and rescores them. ``embedding_precision=int8|binary`` on a float flat index
quantises it on loading."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from dr.cli import encoder_from_config, hydra_command
from dr.data import read_queries, write_run
from dr.config import ConfigError
from dr.retrieval import DenseIndex, search_queries
from dr.retrieval.quantized import QuantizedIndex, is_quantized


def run(cfg: DictConfig, out: Path) -> Path:
    """Search queries against a saved index and write a TREC run file."""
    encoder = encoder_from_config(cfg)
    index = load_index(cfg.index, cfg.get("embedding_precision"), cfg.get("rescore_precision"))
    queries = read_queries(cfg.queries)
    if isinstance(index, QuantizedIndex):
        qids = list(queries)
        emb = encoder.encode_queries([queries[q] for q in qids], batch_size=cfg.batch_size, bf16=cfg.bf16)
        run = index.search_run(qids, emb, k=cfg.k, rescore_multiplier=int(cfg.get("rescore_multiplier") or 2))
    else:
        run = search_queries(encoder, index, queries, k=cfg.k, batch_size=cfg.batch_size, bf16=cfg.bf16)
    target = Path(cfg.output) if cfg.get("output") else out / "run.trec"
    write_run(run, target, tag=cfg.tag)
    print(f"wrote {sum(len(v) for v in run.values())} results for {len(run)} queries to {target}")
    return target


def load_index(path: str, precision: str | None, rescore: str | None) -> DenseIndex | QuantizedIndex:
    """The index folder ``path``; ``embedding_precision`` null takes it as saved, int8/binary
    quantises a float flat index on loading (its own calibration), and must match a quantised one."""
    if is_quantized(path):
        index = QuantizedIndex.load(path)
        if precision not in (None, index.precision):
            raise ConfigError(
                f"embedding_precision={precision}: {path} holds {index.precision} codes; expected {index.precision} "
                f"or null"
            )
        if rescore is not None and index.precision == "binary":
            if rescore == "int8" and index.rescore_index is None:
                raise ConfigError(
                    f"rescore_precision=int8: {path} holds no int8 codes; expected binary or none "
                    "(or dr-encode embedding_precision=binary rescore_precision=int8)"
                )
            index.rescore = rescore
        return index
    index = DenseIndex.load(path)
    if precision in (None, "float32"):
        return index
    return QuantizedIndex.from_dense(index, precision, rescore=rescore or "binary")


main = hydra_command("search", run)
