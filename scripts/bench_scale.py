"""A synthetic scale run on this machine: the corpus/index side of an MS MARCO-sized training run.

Generated data (no model encodes anything: embeddings are random vectors around 1,000 centres,
normalised, 384-d like all-MiniLM-L6-v2; texts are random words):

- a corpus of 2M short passages (TSV, ~40 words each) and 200k training queries;
- 200k query embeddings (for TAS clustering) and 2M passage embeddings (float16 shards with a
  manifest, the layout :func:`dr.retrieval.shards.encode_sharded` writes);
- a teacher-score file of 4M triples (20 per query; MS MARCO's published files hold ~40M) and a
  negatives file of 200k queries x 50 scored negatives.

Stages, each in a fresh subprocess so that its peak RSS (``ru_maxrss``) is its own:

- ``read``: :func:`dr.data.read_corpus` into the Arrow cache, then every passage text in slices of
  100k rows (what a sharded encode does);
- ``cluster``: TAS k-means (:func:`dr.sampling.clustering.kmeans_assign`, spherical, 20 iterations) of
  the 200k query embeddings into ``default_num_clusters`` clusters (1,000: the paper's ~200 per cluster);
- ``sampler-dict`` / ``sampler-compact``: the TAS-Balanced sampler built from the teacher file read
  into :class:`dr.data.TeacherScores` (dicts) or :class:`dr.data.TeacherTriples` (arrays): the TAS
  batch sampler over the clusters, then the margin bins of every query
  (:meth:`BalancedMarginPairSampler.pairs_of`), then one epoch of batch indices;
- ``negatives-stream``: :func:`dr.data.iter_negatives` over the negatives file (bounded memory);
  ``negatives-compact``: :func:`dr.data.read_negatives_compact` (every record, in arrays);
- ``ivfpq``: :meth:`dr.retrieval.DenseIndex.build` (IVF-PQ, sqrt(N) lists, 48-byte codes) from the
  memory-mapped shards, then 10k queries (nprobe 32, top-100): each a corpus vector plus noise, so
  ``source@10`` says how often its source passage is in the top 10; recall@10 of 200 of them
  against exact search over the shards (low on this data: see the comment in ``stage_ivfpq``).

Every stage prints its wall time, peak RSS and the load average before and after: the machine has
2 cores shared with other jobs, so times are upper bounds of an idle machine's. ``--scale 0.1``
runs everything at a tenth of the size. The table is printed and written to ``<out>/scale.json``.

    python scripts/bench_scale.py                  # full size, ~15-20 min on 2 cores
    python scripts/bench_scale.py --scale 0.05     # a minute
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
STAGES = ["read", "cluster", "sampler-dict", "sampler-compact", "negatives-stream", "negatives-compact", "ivfpq"]
DIM, CENTRES = 384, 1000


def sizes(scale: float) -> dict:
    return {
        "passages": int(2_000_000 * scale),
        "queries": int(200_000 * scale),
        "triples_per_query": 20,
        "negatives_per_query": 50,
        "shard": 250_000 if scale >= 0.5 else max(1000, int(250_000 * scale)),
    }


# ---------------------------------------------------------------------- generation
def _unit_vectors(rng, centres, n):
    x = centres[rng.integers(len(centres), size=n)] + 0.6 * rng.standard_normal((n, centres.shape[1])).astype(
        np.float32
    )
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def generate(work: Path, s: dict) -> None:
    from dr.data.io import write_json

    rng = np.random.default_rng(0)
    vocab = np.array([f"w{i}" for i in range(20_000)])
    with open(work / "corpus.tsv", "w") as f:
        for start in range(0, s["passages"], 100_000):
            n = min(100_000, s["passages"] - start)
            words = vocab[rng.integers(len(vocab), size=(n, 40))]
            f.writelines(f"p{start + i}\t{' '.join(row)}\n" for i, row in enumerate(words))
    with open(work / "queries.tsv", "w") as f:
        words = vocab[rng.integers(len(vocab), size=(s["queries"], 6))]
        f.writelines(f"q{i}\t{' '.join(row)}\n" for i, row in enumerate(words))
    centres = rng.standard_normal((CENTRES, DIM)).astype(np.float32)
    np.save(work / "centres.npy", centres)
    np.save(work / "query_emb.npy", _unit_vectors(rng, centres, s["queries"]))
    emb = work / "embeddings"
    emb.mkdir(exist_ok=True)
    shards = []
    for i, start in enumerate(range(0, s["passages"], s["shard"])):
        stop = min(s["passages"], start + s["shard"])
        np.save(emb / f"shard-{i:05d}.npy", _unit_vectors(rng, centres, stop - start).astype(np.float16))
        shards.append({"file": f"shard-{i:05d}.npy", "start": start, "stop": stop})
    write_json(
        emb / "manifest.json",
        {
            "format": "dr-sharded-embeddings/1",
            "num_shards": len(shards),
            "num_passages": s["passages"],
            "dim": DIM,
            "depends": {"generated": True},
            "shards": shards,
        },
    )
    q, n_pass = s["queries"], s["passages"]
    with open(work / "teacher.tsv", "w") as f:
        for start in range(0, q, 10_000):
            qs = np.repeat(np.arange(start, min(q, start + 10_000)), s["triples_per_query"])
            pos, neg = rng.integers(n_pass, size=len(qs)), rng.integers(n_pass, size=len(qs))
            sp, sn = rng.normal(10, 2, len(qs)), rng.normal(5, 3, len(qs))
            f.writelines(
                f"{a:.4f}\t{b:.4f}\tq{c}\tp{d}\tp{e}\n"
                for a, b, c, d, e in zip(sp.tolist(), sn.tolist(), qs.tolist(), pos.tolist(), neg.tolist())
            )
    k = s["negatives_per_query"]
    with open(work / "negatives.jsonl", "w") as f:
        for i in range(q):
            docs, scores = rng.integers(n_pass, size=k).tolist(), np.round(rng.normal(5, 2, k), 4).tolist()
            negatives = ", ".join(f'{{"docid": "p{d}", "score": {v}}}' for d, v in zip(docs, scores))
            f.write(
                f'{{"qid": "q{i}", "positives": ["p{rng.integers(n_pass)}"], "positive_scores": [null], "negatives": '
                f"[{negatives}]}}\n"
            )


# ---------------------------------------------------------------------- stages
def stage_read(work: Path, s: dict) -> dict:
    from dr.data import passage_texts, read_corpus

    corpus = read_corpus(work / "corpus.tsv", cache_dir=str(work / "arrow"))
    chars = 0
    for start in range(0, len(corpus), 100_000):
        chars += sum(map(len, passage_texts(corpus, range(start, min(len(corpus), start + 100_000)))))
    return {"items": len(corpus), "unit": "passages", "mean_chars": chars / len(corpus)}


def stage_cluster(work: Path, s: dict) -> dict:
    from dr.data import write_clusters
    from dr.sampling.clustering import default_num_clusters, group, kmeans_assign

    emb = np.load(work / "query_emb.npy")
    k = default_num_clusters(len(emb), 32)
    clusters = group([f"q{i}" for i in range(len(emb))], kmeans_assign(emb, k, seed=42))
    write_clusters(work / "clusters.txt", clusters)
    return {"items": len(emb), "unit": "queries", "clusters": len(clusters)}


def _sampler(work: Path, teacher) -> dict:
    from dr.data import read_clusters
    from dr.sampling.tas import TASBatchSampler
    from dr.sampling.tas_balanced import BalancedMarginPairSampler

    qids = list(teacher.pairs)
    batches = TASBatchSampler(qids, read_clusters(work / "clusters.txt"), batch_size=32, seed=42)
    pair_sampler = BalancedMarginPairSampler()
    rng = np.random.default_rng(0)
    for qid in qids:
        pairs = teacher.pairs[qid]
        positives, negatives = sorted({p for p, _ in pairs}), sorted({n for _, n in pairs})
        pair_sampler(qid, positives, negatives, teacher, 1, rng)
    drawn = sum(len(b) for b in batches)
    return {"items": len(teacher), "unit": "triples", "queries": len(qids), "epoch_queries": drawn}


def stage_sampler_dict(work: Path, s: dict) -> dict:
    from dr.data import read_teacher_scores

    return _sampler(work, read_teacher_scores(work / "teacher.tsv"))


def stage_sampler_compact(work: Path, s: dict) -> dict:
    from dr.data import read_teacher_triples

    teacher = read_teacher_triples(work / "teacher.tsv")
    return {**_sampler(work, teacher), "arrays_mb": teacher.nbytes / 2**20}


def stage_negatives_stream(work: Path, s: dict) -> dict:
    from dr.data import iter_negatives

    lines = negatives = 0
    for record in iter_negatives(work / "negatives.jsonl"):
        lines += 1
        negatives += len(record.negatives)
    return {"items": lines, "unit": "lines", "negatives": negatives}


def stage_negatives_compact(work: Path, s: dict) -> dict:
    from dr.data import read_negatives_compact

    table = read_negatives_compact(work / "negatives.jsonl")
    return {
        "items": len(table),
        "unit": "lines",
        "negatives": int(len(table.negatives)),
        "arrays_mb": table.nbytes / 2**20,
    }


def stage_ivfpq(work: Path, s: dict) -> dict:
    from dr.retrieval import DenseIndex
    from dr.retrieval.shards import ShardedEmbeddings

    shards = ShardedEmbeddings(work / "embeddings")
    docids = [f"p{i}" for i in range(len(shards))]
    t0 = time.perf_counter()
    index = DenseIndex.build(shards, docids, kind="ivfpq", pq_m=48, nprobe=32, use_gpu=False)
    build_s = time.perf_counter() - t0
    # Queries: corpus vectors plus a little noise, so each has one true nearest passage (its source):
    # inside a generated cluster every other neighbour is at about the same distance (random noise
    # in 384-d), so recall@10 against exact search measures little but quantisation noise.
    rng = np.random.default_rng(1)
    n_queries = max(200, len(shards) // 200)
    sources = np.sort(rng.choice(len(shards), size=n_queries, replace=False))
    chunks = list(shards.shards())
    starts = np.cumsum([0] + [len(c) for c in chunks])
    rows = [
        np.asarray(chunks[j][i - starts[j]], dtype=np.float32)
        for i in sources.tolist()
        for j in [int(np.searchsorted(starts, i, "right") - 1)]
    ]
    queries = np.stack(rows) + 0.02 * rng.standard_normal((n_queries, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    t0 = time.perf_counter()
    _, found = index.search(queries, 100)
    search_s = time.perf_counter() - t0
    probe = queries[:200]  # exact top-10 over the shards, one shard at a time
    best = np.full((len(probe), 0), -np.inf, np.float32), np.zeros((len(probe), 0), np.int64)
    for shard, meta in zip(shards.shards(), shards.manifest["shards"]):
        scores = probe @ np.asarray(shard, dtype=np.float32).T
        top = np.argpartition(-scores, 10, axis=1)[:, :10]
        merged_s = np.concatenate([best[0], np.take_along_axis(scores, top, 1)], 1)
        merged_r = np.concatenate([best[1], top + meta["start"]], 1)
        keep = np.argsort(-merged_s, axis=1)[:, :10]
        best = np.take_along_axis(merged_s, keep, 1), np.take_along_axis(merged_r, keep, 1)
    recall = np.mean(
        [len({f"p{r}" for r in exact} & set(got[:10])) / 10 for exact, got in zip(best[1].tolist(), found)]
    )
    source_at_10 = np.mean([f"p{src}" in got[:10] for src, got in zip(sources.tolist(), found)])
    source_at_1_exact = np.mean(best[1][:, 0] == sources[: len(probe)])
    return {
        "items": len(shards),
        "unit": "vectors",
        "build_s": build_s,
        "queries": len(queries),
        "search_s": search_s,
        "recall@10": float(recall),
        "source@10": float(source_at_10),
        "exact_source@1": float(source_at_1_exact),
        "nlist": int(index.index.nlist),
        "index_mb": (len(shards) * (48 + 8)) / 2**20,
    }


# ---------------------------------------------------------------------- driver
def run_stage(name: str, work: Path, scale: float) -> dict:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    fn = generate if name == "generate" else globals()["stage_" + name.replace("-", "_")]
    result = fn(work, sizes(scale)) or {}
    result.update(
        stage=name,
        seconds=time.perf_counter() - t0,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        load_before=load_before,
        load_after=os.getloadavg()[0],
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every size (1.0: 2M passages, 200k queries)")
    parser.add_argument("--out", default="bench/scale")
    parser.add_argument(
        "--work", default=None, help="where the generated data goes (default: <out>/data; reused when complete)"
    )
    parser.add_argument("--stages", nargs="+", default=STAGES, choices=STAGES)
    parser.add_argument(
        "--faiss-threads",
        type=int,
        default=1,
        help="FAISS OpenMP threads (0: FAISS's default). 1 by default: on 2 cores shared with other jobs, "
        "OpenMP's spinning threads made k-means ~5x slower with 2 threads than with 1",
    )
    parser.add_argument("--stage", help=argparse.SUPPRESS)  # the child process of one stage
    args = parser.parse_args()
    out = Path(args.out)
    work = Path(args.work) if args.work else out / f"data-{args.scale:g}"
    if args.stage:
        if args.faiss_threads:
            import faiss

            faiss.omp_set_num_threads(args.faiss_threads)
        print("RESULT " + json.dumps(run_stage(args.stage, work, args.scale)), flush=True)
        return
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for name in (["generate"] if not (work / "negatives.jsonl").exists() else []) + args.stages:
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        t0 = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--stage",
                name,
                "--scale",
                str(args.scale),
                "--work",
                str(work),
                "--faiss-threads",
                str(args.faiss_threads),
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        if proc.returncode:
            sys.exit(f"stage {name} failed:\n{proc.stderr[-3000:]}")
        result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
        result["wall_s"] = time.perf_counter() - t0  # with the interpreter's start and imports
        results.append(result)
        print(
            f"{name:18s} {result['seconds']:8.1f} s  peak RSS {result['peak_rss_mb']:7.0f} MiB  load "
            f"{result['load_before']:.1f}->{result['load_after']:.1f}",
            flush=True,
        )
    print(table(results, args.scale))
    meta = {
        "scale": args.scale,
        "faiss_threads": args.faiss_threads,
        "sizes": sizes(args.scale),
        "cpus": os.cpu_count(),
        "embeddings": "generated (random, not encoded)",
        "note": "2 cores shared with other jobs: times are upper bounds",
        "stages": results,
    }
    (out / "scale.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"written: {out / 'scale.json'}")


def table(results: list[dict], scale: float) -> str:
    lines = [
        f"synthetic scale run (scale {scale:g}), measured on {os.cpu_count()} shared cores",
        f"{'stage':18s} {'items':>10s} {'unit':9s} {'time s':>8s} {'items/s':>10s} {'peak RSS MiB':>13s}  notes",
    ]
    for r in results:
        notes = {
            k: (round(v, 3) if isinstance(v, float) else v)
            for k, v in r.items()
            if k not in ("stage", "items", "unit", "seconds", "peak_rss_mb", "wall_s", "load_before", "load_after")
        }
        items = r.get("items", 0)
        rate = f"{items / r['seconds']:10.0f}" if items else f"{'':10s}"
        lines.append(
            f"{r['stage']:18s} {items:10d} {r.get('unit', ''):9s} {r['seconds']:8.1f} {rate} {r['peak_rss_mb']:13.0f}  "
            + ", ".join(f"{k}={v}" for k, v in notes.items())
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
