"""Mining throughput: dr's pipeline against sentence-transformers' ``mine_hard_negatives``.

Same model (the packaged all-MiniLM-L6-v2), same data (the SciFact train queries against a corpus
of their judged abstracts plus random others), same candidate depth, same filter (TopK-PercPos:
relative margin 0.05), same number of negatives, same batch size and max length, fp32, one
process. Each side encodes the corpus and the queries, searches exactly and picks negatives.
Repeats alternate the two tools; the table shows medians.

    python scripts/bench_mine.py --docs 1000 --repeats 3

With ``--effect`` it measures instead what the negatives do to retrieval quality: the packaged
all-MiniLM-L6-v2 is trained from the same start, seed and number of steps with BM25 negatives
(ranks 10-50), top-k, margin (TopK-PercPos 95%) and SimANS negatives mined by ``dr-mine`` with the
untrained model (top-200 candidates), one negative per query per step, and evaluated on the SciFact
test split under the shortened protocol of ``scripts/bench_common.py``.

    python scripts/bench_mine.py --effect --steps 30 --seeds 42 --out bench/mine
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def load(n_docs: int, seed: int = 0):
    from dr.data import bundled, passage_texts, read_corpus, read_qrels, read_queries

    files = bundled("scifact")
    corpus = read_corpus(files["corpus"])
    queries = read_queries(files["train_queries"])
    qrels = read_qrels(files["train_qrels"])
    qids = [q for q in queries if q in qrels]
    positives = {q: sorted(qrels[q]) for q in qids}
    judged = sorted({d for q in qids for d in positives[q]})
    others = sorted(set(corpus["docid"]) - set(judged))
    rng = np.random.default_rng(seed)
    extra = (
        rng.choice(others, size=max(0, n_docs - len(judged)), replace=False).tolist() if n_docs > len(judged) else []
    )
    keep = set(judged) | set(extra)
    rows = [i for i, d in enumerate(corpus["docid"]) if d in keep]
    docids = [corpus["docid"][i] for i in rows]
    texts = passage_texts(corpus, rows)
    return qids, [queries[q] for q in qids], positives, docids, texts


def run_dr(encoder, qids, qtexts, positives, docids, texts, top_k, num_negatives, batch_size):
    from dr.retrieval.index import DenseIndex
    from dr.miners import Candidates, MarginMiner

    d = encoder.encode_passages(texts, batch_size=batch_size, show_progress=False)
    q = encoder.encode_queries(qtexts, batch_size=batch_size, show_progress=False)
    index = DenseIndex.build(d, docids, use_gpu=False)
    scores, ids = index.search(q, top_k)
    row_of = {doc: i for i, doc in enumerate(docids)}
    pos_scores = [[float(q[i] @ d[row_of[p]]) for p in positives[qid]] for i, qid in enumerate(qids)]
    candidates = Candidates.from_lists(
        ids, [s[: len(r)] for s, r in zip(scores, ids)], [positives[x] for x in qids], pos_scores
    )
    mined = MarginMiner(num_negatives=num_negatives, relative_margin=0.05, range_max=top_k)(candidates, 0)
    return sum(len(x) for x in mined.to_lists()[0])


def run_st(model, qids, qtexts, positives, docids, texts, top_k, num_negatives, batch_size):
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    text_of = dict(zip(docids, texts))
    pairs = Dataset.from_dict(
        {
            "query": [t for qid, t in zip(qids, qtexts) for _ in positives[qid]],
            "positive": [text_of[p] for qid in qids for p in positives[qid]],
        }
    )
    out = mine_hard_negatives(
        pairs,
        model,
        corpus=texts,
        range_max=top_k,
        relative_margin=0.05,
        num_negatives=num_negatives,
        sampling_strategy="top",
        batch_size=batch_size,
        use_faiss=True,
        verbose=False,
        output_format="n-tuple",
    )
    return len(out) * num_negatives


# The miners' arms. The model scores with cosine similarity and trains at temperature 0.05, so the
# logits are 20 x cos: dr-mine's score_scale=auto applies SimANS's a=0.5 (reference code, on logits)
# to them, i.e. a = 0.5 * 20^2 = 200 on cosines.
EFFECT_MINERS = {
    "topk": ["miner=topk"],
    "margin_topk_percpos95": ["miner=margin"],
    "simans": ["miner=simans"],
}


def effect(args) -> None:
    from pathlib import Path

    from bench_common import run_app, table, train_arm

    out = Path(args.out).resolve()
    data = ["corpus=scifact:corpus", "queries=scifact:train_queries", "qrels=scifact:train_qrels"]
    results = {"bm25 (ranks 10-50)": [train_arm(out, "bm25", [], seed, args.steps) for seed in args.seeds]}
    for name, miner in EFFECT_MINERS.items():
        negatives = out / "negatives" / f"{name}.jsonl"
        if not negatives.is_file():
            print(f"[{time.strftime('%H:%M:%S')}] mining {name}", flush=True)
            run_app(
                "dr-mine",
                out / "negatives" / f"{name}.mine",
                [
                    "model=all-MiniLM-L6-v2",
                    *data,
                    *miner,
                    f"output={negatives}",
                    "top_k=200",
                    "encoder.passage_max_length=128",
                    f"embeddings_cache={out / 'negatives' / 'corpus.npy'}",
                ],
            )
        results[name] = [train_arm(out, name, [f"data.negatives={negatives}"], seed, args.steps) for seed in args.seeds]
    print(
        f"\nSciFact test, all-MiniLM-L6-v2, {args.steps} steps, batch 32 + 1 hard negative per query, passages 128 "
        f"tokens"
    )
    print(table(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--docs", type=int, default=1000, help="corpus size (the judged train abstracts plus random others)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--num-negatives", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--effect", action="store_true", help="train with each miner's negatives and compare test nDCG@10"
    )
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--out", default="bench/mine")
    args = parser.parse_args()
    if args.effect:
        return effect(args)

    from sentence_transformers import SentenceTransformer

    from dr.models.encoder import BiEncoder, resolve_model_name

    path = resolve_model_name("all-MiniLM-L6-v2")
    encoder = BiEncoder.from_pretrained(path, query_max_length=256, passage_max_length=256).eval()
    st_model = SentenceTransformer(path, device="cpu")
    st_model.max_seq_length = 256
    data = load(args.docs)
    n_pairs = sum(len(data[2][q]) for q in data[0])
    print(
        f"{len(data[0])} queries ({n_pairs} positive pairs), {len(data[3])} passages, top-{args.top_k}, "
        f"{args.num_negatives} negatives, batch {args.batch_size}, fp32, {args.repeats} repeats"
    )
    times = {"dr": [], "sentence-transformers": []}
    for _ in range(args.repeats):
        for name, fn, model in (("dr", run_dr, encoder), ("sentence-transformers", run_st, st_model)):
            t0 = time.perf_counter()
            fn(model, *data, args.top_k, args.num_negatives, args.batch_size)
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["sentence-transformers"])
    print(f"\n{'tool':<24}{'median s':>10}{'queries/s':>11}{'speed-up':>10}")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"{name:<24}{med:>10.1f}{len(data[0]) / med:>11.1f}{base / med:>9.2f}x")


if __name__ == "__main__":
    main()
