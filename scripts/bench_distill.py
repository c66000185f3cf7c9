"""Distillation on SciFact: InfoNCE with BM25 negatives against Margin-MSE from the offline
BM25 + dense fusion teacher, alone and with TAS-B's in-batch term.

Every arm trains the packaged all-MiniLM-L6-v2 from the same start under the shortened protocol
of ``scripts/bench_common.py`` (passages 128 tokens, no validation) and is evaluated on the full
SciFact test split:

- ``infonce_bm25``: the default recipe (InfoNCE, one BM25 negative from ranks 10-50 per query).
- ``mmse_fusion``: Margin-MSE against the fusion teacher's scores of the same (positive, BM25
  rank 10-50 negative) pairs, written by ``dr-score teacher=fusion`` (:func:`fusion_teacher`).
- ``mmse_inbatch_fusion``: the same plus 0.75 × TAS-B's in-batch Margin-MSE term, with the fusion
  teacher scoring the whole batch (``inbatch_teacher=fusion``); random batches.

Scale: the student scores with cosine similarity (the minilm config normalises), so its margins
lie in [-2, 2] and in practice well inside [-1, 1]; the teacher is min-max normalised per query
over its candidates and fused with weights 0.5/0.5, so its scores lie in [0, 1] and its margins
in [-1, 1]: the same order, so no rescaling (``loss.student_scale=1``). TAS-B used dot products
with a cross-encoder's logits instead. Same learning rate as InfoNCE (3e-5): AdamW normalises the
gradient scale, so the smaller Margin-MSE gradients need no larger rate.

The script also prints the fusion teacher's own test figures (BM25 and all-MiniLM-L6-v2 at 128
tokens, fused per query over the whole test corpus with z-score and min-max normalisation, weight
0.5).

    python scripts/bench_distill.py --steps 30 --seeds 42 --out bench/train

``ARMS`` maps each arm to its ``dr-train`` overrides; ``{teacher}`` stands for the path returned
by :func:`fusion_teacher` (``str.format(teacher=path)``). ``scripts/bench_tas.py`` imports both.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import run_app, table, train_arm, training_parser  # noqa: E402

SCIFACT = {
    "corpus": "scifact:corpus",
    "train_queries": "scifact:train_queries",
    "train_qrels": "scifact:train_qrels",
    "test_queries": "scifact:test_queries",
    "test_qrels": "scifact:test_qrels",
}

TEACHER = ["teacher=fusion", "teacher.query_max_length=64", "teacher.passage_max_length=128"]

ARMS: dict[str, list[str]] = {
    "infonce_bm25": [],
    "mmse_fusion": ["loss=margin_mse", "data.teacher_scores={teacher}", "data.negatives=null"],
    "mmse_inbatch_fusion": [
        "loss=tas_b", "data.teacher_scores={teacher}", "data.negatives=null",
        "inbatch_teacher=fusion", "module.inbatch_teacher.passage_max_length=128",
    ],
}


def fusion_teacher(out_root: Path, data: dict[str, str] | None = None) -> Path:
    """The fusion teacher's TSV for the train queries' BM25 candidates (created if missing).

    Candidates are BM25 ranks 10-50 (never a positive), as ``data.negatives=bm25``; every positive
    is paired with every candidate and scored by ``dr-score teacher=fusion`` (encoding at 128
    tokens). Returns ``out_root/teacher/fusion.train.tsv``.
    """
    data = data or SCIFACT
    folder = Path(out_root).resolve() / "teacher"
    target = folder / "fusion.train.tsv"
    if target.is_file():
        return target
    from dr.bm25 import BM25
    from dr.data import passage_texts, read_corpus, read_qrels, read_queries
    from dr.negatives import bm25_negatives, write_negatives

    negatives = folder / "negatives.bm25.jsonl"
    if not negatives.is_file():
        corpus = read_corpus(data["corpus"])
        queries, qrels = read_queries(data["train_queries"]), read_qrels(data["train_qrels"])
        row_of = set(corpus["docid"])
        positives = {q: {d for d, g in j.items() if g >= 1 and d in row_of} for q, j in qrels.items()}
        qids = [q for q in queries if positives.get(q)]
        bm25 = BM25(passage_texts(corpus), list(corpus["docid"]))
        write_negatives(negatives, bm25_negatives(bm25, qids, [queries[q] for q in qids], positives, 10, 50))
    print(f"[{time.strftime('%H:%M:%S')}] scoring the BM25 candidates with the fusion teacher -> {target}", flush=True)
    run_app("dr-score", folder / "score", [
        *TEACHER, f"negatives={negatives}", f"corpus={data['corpus']}", f"queries={data['train_queries']}",
        f"output={target}", f"negatives_output={folder / 'negatives.fusion.jsonl'}",
    ])
    return target


def arm_overrides(name: str, teacher: Path) -> list[str]:
    return [o.format(teacher=teacher) for o in ARMS[name]]


def fusion_test_figures(out_root: Path, data: dict[str, str] | None = None) -> dict[str, dict[str, float]]:
    """The fusion teacher's own test nDCG@10 / R@100, ranking the whole test corpus (cached)."""
    data = data or SCIFACT
    cache = Path(out_root).resolve() / "teacher" / "fusion.test.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    from dr.bm25 import BM25
    from dr.data import passage_texts, read_corpus, read_qrels, read_queries
    from dr.encoder import BiEncoder
    from dr.evaluate import evaluate_run
    from dr.fusion import fusion_search
    from dr.mine import corpus_embeddings

    corpus = read_corpus(data["corpus"])
    queries, qrels = read_queries(data["test_queries"]), read_qrels(data["test_qrels"])
    qids = [q for q in queries if q in qrels]
    texts = [queries[q] for q in qids]
    encoder = BiEncoder.from_pretrained("all-MiniLM-L6-v2", query_max_length=64, passage_max_length=128)
    emb = corpus_embeddings(encoder, corpus, data["corpus"], str(cache.parent / "corpus.minilm128.npy"), 64, False)
    q_emb = encoder.encode_queries(texts, show_progress=False)
    bm25 = BM25(passage_texts(corpus), list(corpus["docid"]))
    measures = ["nDCG@10", "R@100"]
    figures = {}
    for norm in ("zscore", "minmax"):
        run = fusion_search(bm25, emb, q_emb, qids, texts, depth=len(corpus), k=100, normalization=norm)
        figures[f"fusion teacher ({norm})"] = {f"trained/{m}": v for m, v in evaluate_run(run, qrels, measures).items()}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(figures, indent=2))
    return figures


def _write_slice(out: Path, n_train: int, n_test: int = 20, n_extra: int = 300) -> dict[str, str]:
    """A small SciFact slice for smoke runs: the queries' judged abstracts plus random others."""
    import numpy as np

    from dr.data import read_corpus, read_qrels, read_queries

    out.mkdir(parents=True, exist_ok=True)
    train_q, test_q = read_queries(SCIFACT["train_queries"]), read_queries(SCIFACT["test_queries"])
    train_r, test_r = read_qrels(SCIFACT["train_qrels"]), read_qrels(SCIFACT["test_qrels"])
    train_ids = sorted(q for q in train_q if q in train_r)[:n_train]
    test_ids = sorted(q for q in test_q if q in test_r)[:n_test]
    corpus = read_corpus(SCIFACT["corpus"])
    keep = {d for q in train_ids for d in train_r[q]} | {d for q in test_ids for d in test_r[q]}
    others = sorted(set(corpus["docid"]) - keep)
    keep |= set(np.random.default_rng(0).choice(others, size=n_extra, replace=False).tolist())
    rows = [i for i, d in enumerate(corpus["docid"]) if d in keep]
    with open(out / "corpus.jsonl", "w") as f:
        for i in rows:
            f.write(json.dumps({"_id": corpus[i]["docid"], "title": corpus[i]["title"], "text": corpus[i]["text"]}) + "\n")
    for split, ids, q, r in (("train", train_ids, train_q, train_r), ("test", test_ids, test_q, test_r)):
        (out / f"queries.{split}.tsv").write_text("".join(f"{x}\t{q[x]}\n" for x in ids))
        (out / f"qrels.{split}.trec").write_text("".join(f"{x} 0 {d} {g}\n" for x in ids for d, g in r[x].items()))
    return {"corpus": str(out / "corpus.jsonl"), "train_queries": str(out / "queries.train.tsv"),
            "train_qrels": str(out / "qrels.train.trec"), "test_queries": str(out / "queries.test.tsv"),
            "test_qrels": str(out / "qrels.test.trec")}


def smoke_data(out: Path, smoke_slice: int, extra: list[str]) -> tuple[dict[str, str] | None, list[str]]:
    """With ``smoke_slice`` N > 0: a tiny SciFact slice (N train queries) and the dr-train overrides
    that point data and test at it, for an end-to-end check of a benchmark script."""
    extra = list(extra)
    if not smoke_slice:
        return None, extra
    data = _write_slice(out / "slice", smoke_slice)
    extra += [f"data.corpus={data['corpus']}", f"data.train_queries={data['train_queries']}",
              f"data.train_qrels={data['train_qrels']}", f"test.corpus={data['corpus']}",
              f"test.queries={data['test_queries']}", f"test.qrels={data['test_qrels']}"]
    return data, extra


def main() -> None:
    args = training_parser(__doc__, list(ARMS)).parse_args()

    out = Path(args.out).resolve()
    data, extra = smoke_data(out, args.smoke_slice, args.extra)
    teacher = fusion_teacher(out, data)
    results = {name: [train_arm(out, name, arm_overrides(name, teacher) + extra, seed, args.steps) for seed in args.seeds]
               for name in args.arms}
    figures = fusion_test_figures(out, data)
    print(f"\nSciFact test, all-MiniLM-L6-v2, {args.steps} steps, batch 32 + 1 hard negative per query, passages 128 tokens")
    print(table(results, extra=figures))


if __name__ == "__main__":
    main()
