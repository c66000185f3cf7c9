"""Quantised embeddings for search (issue #26, item 7): nDCG@10, recall@100, index size and query
latency of float32, int8 and binary indexes of the same embeddings (dr/retrieval/quantized.py).

Data sets (``--data``): ``scifact`` (the bundled BEIR SciFact test split: 5,183 abstracts, 300
queries; nDCG@10 and R@100) and ``dl19-pool`` (TREC-DL 2019's 43 queries on the judged pool of
30,045 MS MARCO passages, ``--dl19-pool DIR`` with corpus.tsv, queries.dl19.tsv and
qrels.dl19.pool.trec; nDCG@10 and R(rel=2)@100; figures are "on the DL19 judged pool", not full
MS MARCO). The passages are encoded once with ``--model`` (default all-MiniLM-L6-v2, packaged) and
cached in ``--out``; each row then indexes the same float vectors:

- ``float32``: FAISS IndexFlatIP (exact);
- ``int8``: 8-bit codes calibrated on the corpus, float query against de-quantised passages;
- ``binary``: 1 bit a dimension, Hamming distance only (``rescore=none``);
- ``binary+rescore``: the Hamming top k·m rescored by the float query against the bits;
- ``binary+int8``: the same rescored against an int8 copy (stored beside the bits).

Index size is the FAISS codes (without docids); latency is the median over ``--repeats`` rounds
(the rows take turns in each round) of searching all queries (k = 100, the query embeddings
already computed) divided by the number of queries, on this machine's CPU threads, and its ratio
to float32's in the same run.

    python scripts/bench_quantize.py --data scifact dl19-pool --out bench/quantize
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from dr.config import bf16_supported
from dr.data import passage_texts, read_corpus, read_qrels, read_queries
from dr.evaluation import evaluate_run
from dr.models.encoder import BiEncoder
from dr.retrieval.index import DenseIndex
from dr.retrieval.quantized import QuantizedIndex

DATA = {
    "scifact": lambda pool: ("scifact:corpus", "scifact:test_queries", "scifact:test_qrels", ["nDCG@10", "R@100"]),
    "dl19-pool": lambda pool: (
        f"{pool}/corpus.tsv",
        f"{pool}/queries.dl19.tsv",
        f"{pool}/qrels.dl19.pool.trec",
        ["nDCG@10", "R(rel=2)@100"],
    ),
}
ROWS = [
    ("float32", None, None),
    ("int8", "int8", "none"),
    ("binary", "binary", "none"),
    ("binary+rescore", "binary", "binary"),
    ("binary+int8", "binary", "int8"),
]


def embeddings(encoder, name: str, texts: list[str], kind: str, cache: Path, args) -> np.ndarray:
    """The float embeddings of ``texts``, from ``cache`` when an earlier run wrote them."""
    path = cache / f"{name}.{kind}.npy"
    if path.is_file():
        return np.load(path)
    t0 = time.perf_counter()
    emb = encoder.encode(texts, kind, batch_size=args.batch_size, bf16=args.bf16, show_progress=True)
    print(f"encoded {len(texts)} {kind}s of {name} in {time.perf_counter() - t0:.0f} s")
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, emb)
    return emb


def latencies_ms(searches: list, q: np.ndarray, k: int, repeats: int) -> list[float]:
    """Median ms per query of each ``(index, kwargs)`` searching all of ``q``; the rows take turns
    within each repeat, so a load that comes and goes touches them alike."""
    times: list[list[float]] = [[] for _ in searches]
    for _ in range(repeats):
        for i, (index, kwargs) in enumerate(searches):
            t0 = time.perf_counter()
            index.search(q, k, **kwargs)
            times[i].append(time.perf_counter() - t0)
    return [1000 * statistics.median(t) / len(q) for t in times]


def bench(name: str, args, encoder) -> list[str]:
    corpus_path, queries_path, qrels_path, measures = DATA[name](args.dl19_pool)
    corpus, qrels = read_corpus(corpus_path), read_qrels(qrels_path)
    queries = {q: t for q, t in read_queries(queries_path).items() if q in qrels}
    qids, docids = list(queries), list(corpus["docid"])
    cache = Path(args.out) / name
    d = embeddings(encoder, name, passage_texts(corpus), "passage", cache, args)
    q = embeddings(encoder, name, [queries[i] for i in qids], "query", cache, args)
    lines = [
        f"{name}: {len(docids)} passages, {len(qids)} queries, {d.shape[1]} dims, k = {args.k}, "
        f"rescore_multiplier = {args.rescore_multiplier}",
        f"{'precision':<16}"
        + "".join(f"{m:>14}" for m in measures)
        + f"{'index MiB':>11}{'ms/query':>10}{'× fp32':>10}",
    ]
    rows, searches = [], []
    for row, precision, rescore in ROWS:
        if precision is None:
            index, size, kwargs = DenseIndex.build(d, docids, use_gpu=False), 4 * d.size, {}
        else:
            index = QuantizedIndex.build(d, docids, precision, rescore=rescore)
            size, kwargs = (
                index.nbytes,
                ({"rescore_multiplier": args.rescore_multiplier} if precision == "binary" else {}),
            )
        scores = evaluate_run(index.search_run(qids, q, args.k, **kwargs), qrels, measures)
        rows.append((row, scores, size))
        searches.append((index, kwargs))
    ms = latencies_ms(searches, q, args.k, args.repeats)
    for (row, scores, size), t in zip(rows, ms):
        lines.append(
            f"{row:<16}"
            + "".join(f"{scores[m]:>14.4f}" for m in measures)
            + f"{size / 2**20:>11.2f}{t:>10.3f}{t / ms[0]:>10.2f}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", default=["scifact"], choices=list(DATA))
    parser.add_argument("--dl19-pool", default="/work/shared/data/trec-dl")
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--passage-max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=bf16_supported(),
        help="encode under bf16 autocast (default: where the CPU has bf16 natively)",
    )
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=9, help="timing rounds; the median is reported")
    parser.add_argument("--rescore-multiplier", type=int, default=2)  # dr-search's and sentence-transformers' default
    parser.add_argument("--out", default="bench/quantize")
    args = parser.parse_args()
    encoder = BiEncoder.load(args.model, {"passage_max_length": args.passage_max_length}, device=None)
    for name in args.data:
        print("\n".join(bench(name, args, encoder)))
        print()


if __name__ == "__main__":
    main()
