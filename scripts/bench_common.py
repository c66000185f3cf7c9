"""Shared protocol for the training benchmarks (bench_mine --effect, bench_distill, bench_tas, bench_refresh).

Every arm trains the packaged all-MiniLM-L6-v2 on the SciFact train split from the same start,
with the same seed, steps, batch and lengths, and is evaluated on the full SciFact test split
(5,183 abstracts, 300 queries). Each arm is one ``dr-train`` process writing its own run
directory; an arm whose ``metrics.json`` exists is not run again, so an interrupted benchmark
resumes where it stopped.

The protocol is shortened for a 2-core CPU (see PROTOCOL): passages are truncated to 128 tokens
in training *and* evaluation, validation is off, and runs are short. The figures compare arms
with each other; they are not the quickstart's figures (256 tokens, 57 steps).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCIFACT = {
    "corpus": "scifact:corpus",
    "train_queries": "scifact:train_queries",
    "train_qrels": "scifact:train_qrels",
    "test_queries": "scifact:test_queries",
    "test_qrels": "scifact:test_qrels",
}

TEACHER = ["teacher=fusion", "teacher.query_max_length=64", "teacher.passage_max_length=128"]

#: The distillation arms (bench_distill, bench_tas): dr-train overrides; {teacher} is the fusion teacher file.
DISTILL_ARMS: dict[str, list[str]] = {
    "infonce_bm25": [],
    "mmse_fusion": ["loss=margin_mse", "data.teacher_scores={teacher}", "data.negatives=null"],
    "mmse_inbatch_fusion": [
        "loss=tas_b",
        "data.teacher_scores={teacher}",
        "data.negatives=null",
        "inbatch_teacher=fusion",
        "module.inbatch_teacher.passage_max_length=128",
    ],
}


def arm_overrides(name: str, teacher: Path) -> list[str]:
    return [o.format(teacher=teacher) for o in DISTILL_ARMS[name]]


PROTOCOL = [
    "encoder.passage_max_length=128",
    "data.val_fraction=0",
    "test.before=false",
    "test.bm25=false",
    "export.enabled=false",
]


def training_parser(doc: str, arms: list[str]) -> argparse.ArgumentParser:
    """The options every training benchmark takes: steps, seeds, output root, arms, and the hidden
    smoke-test knobs (a tiny data slice, extra dr-train overrides)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--out", default="bench/train")
    parser.add_argument("--arms", nargs="+", default=list(arms), choices=list(arms))
    parser.add_argument(
        "--smoke-slice", type=int, default=0, help=argparse.SUPPRESS
    )  # N train queries: a tiny end-to-end check
    parser.add_argument("--extra", nargs="*", default=[], help=argparse.SUPPRESS)  # more dr-train overrides
    return parser


def _bin(name: str) -> str:
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def run_app(app: str, run_dir: Path, overrides: list[str], log_name: str = "stdout.log") -> float:
    """Run a dr Hydra app (``dr-train``, ``dr-mine``...) into ``run_dir``; returns its wall time."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [_bin(app), f"hydra.run.dir={run_dir}", *overrides]
    t0 = time.perf_counter()
    with open(run_dir / log_name, "w") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode:
        raise RuntimeError(f"{app} failed ({proc.returncode}); see {run_dir / log_name}")
    return time.perf_counter() - t0


def train_arm(out_root: Path, name: str, overrides: list[str], seed: int, steps: int) -> dict:
    """Train and evaluate one arm (cached by its metrics.json); returns the metrics."""
    run_dir = out_root / f"{name}.seed{seed}"
    metrics_file = run_dir / "metrics.json"
    if not metrics_file.is_file():
        print(f"[{time.strftime('%H:%M:%S')}] training {name} seed {seed} -> {run_dir}", flush=True)
        run_app("dr-train", run_dir, [*PROTOCOL, f"trainer.max_steps={steps}", f"seed={seed}", *overrides])
    return json.loads(metrics_file.read_text())


def compare_runs(groups: dict[str, list[Path]], qrels: str, out: Path, measures: str = "[nDCG@10,R@100]") -> None:
    """``dr-compare`` of run-file groups (one run per seed each; per-query means over the seeds, paired
    tests against the first group, Holm): prints its table and writes its folder ``out``."""
    runs = ",".join("[" + ",".join(str(f) for f in files) + "]" for files in groups.values())
    cmd = [
        sys.executable,
        "-m",
        "dr.cli.compare",
        f"run_files=[{runs}]",
        f"names=[{','.join(groups)}]",
        f"qrels={qrels}",
        f"measures={measures}",
        f"hydra.run.dir={Path(out).resolve()}",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    subprocess.run(cmd, check=True, env=env)


def table(
    results: dict[str, list[dict]], measures=("trained/nDCG@10", "trained/R@100"), extra: dict[str, dict] | None = None
) -> str:
    """Mean (and spread over seeds when more than one) of each measure per arm."""
    head = f"{'arm':<28}" + "".join(f"{m.split('/')[-1]:>16}" for m in measures) + f"{'train min':>11}{'seeds':>7}"
    lines = [head]
    for name, runs in results.items():
        cells = []
        for m in measures:
            values = [r[m] for r in runs if m in r]
            if not values:
                cells.append(f"{'-':>16}")
            elif len(values) == 1:
                cells.append(f"{values[0]:>16.4f}")
            else:
                cells.append(f"{statistics.mean(values):>9.4f}±{statistics.stdev(values):.4f}")
        minutes = statistics.median(r.get("time/train_s", float("nan")) for r in runs) / 60
        lines.append(f"{name:<28}" + "".join(cells) + f"{minutes:>11.1f}{len(runs):>7}")
    for name, row in (extra or {}).items():
        lines.append(
            f"{name:<28}" + "".join(f"{row.get(m, float('nan')):>16.4f}" for m in measures) + f"{'':>11}{'':>7}"
        )
    return "\n".join(lines)


def fusion_teacher(out_root: Path, data: dict[str, str] | None = None) -> Path:
    """The fusion teacher's TSV for the train queries' BM25 candidates (created if missing).

    Candidates are BM25 ranks 10-50 (never a positive), as the default ``data.negatives``; every positive
    is paired with every candidate and scored by ``dr-score teacher=fusion`` (encoding at 128
    tokens). Returns ``out_root/teacher/fusion.train.tsv``.
    """
    data = data or SCIFACT
    folder = Path(out_root).resolve() / "teacher"
    target = folder / "fusion.train.tsv"
    if target.is_file():
        return target
    from dr.data import read_corpus, read_positives, read_qrels, read_queries, write_negatives
    from dr.retrieval import BM25Negatives

    negatives = folder / "negatives.bm25.jsonl"
    if not negatives.is_file():
        corpus = read_corpus(data["corpus"])
        queries, qrels = read_queries(data["train_queries"]), read_qrels(data["train_qrels"])
        positives = read_positives(qrels, 1, known=set(corpus["docid"]))
        qids = [q for q in queries if positives.get(q)]
        write_negatives(negatives, BM25Negatives(10, 50)(corpus, qids, [queries[q] for q in qids], positives))
    print(f"[{time.strftime('%H:%M:%S')}] scoring the BM25 candidates with the fusion teacher -> {target}", flush=True)
    run_app(
        "dr-score",
        folder / "score",
        [
            *TEACHER,
            f"negatives={negatives}",
            f"corpus={data['corpus']}",
            f"queries={data['train_queries']}",
            f"output={target}",
            f"negatives_output={folder / 'negatives.fusion.jsonl'}",
        ],
    )
    return target


def fusion_test_figures(out_root: Path, data: dict[str, str] | None = None) -> dict[str, dict[str, float]]:
    """The fusion teacher's own test nDCG@10 / R@100, ranking the whole test corpus (cached)."""
    data = data or SCIFACT
    cache = Path(out_root).resolve() / "teacher" / "fusion.test.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    from dr.data import passage_texts, read_corpus, read_qrels, read_queries
    from dr.models import BiEncoder
    from dr.evaluation import evaluate_run
    from dr.retrieval import BM25
    from dr.miners.candidates import corpus_embeddings
    from dr.teachers import fusion_search

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


def smoke_data(out: Path, smoke_slice: int, extra: list[str]) -> tuple[dict[str, str] | None, list[str]]:
    """With ``smoke_slice`` N > 0: a tiny SciFact slice (N train queries) and the dr-train overrides
    that point data and test at it, for an end-to-end check of a benchmark script."""
    extra = list(extra)
    if not smoke_slice:
        return None, extra
    from dr.data import write_subset

    data = write_subset(out / "slice", smoke_slice)
    extra += [
        f"data.corpus={data['corpus']}",
        f"data.train_queries={data['train_queries']}",
        f"data.train_qrels={data['train_qrels']}",
        f"test.corpus={data['corpus']}",
        f"test.queries={data['test_queries']}",
        f"test.qrels={data['test_qrels']}",
    ]
    return data, extra
