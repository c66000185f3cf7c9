"""The seed recipe's ablation on SciFact (issue #11): each method added to the quickstart alone,
then all together (``experiment=scifact_recipe``), over several seeds, with ``dr-compare``.

Arms (``dr-train`` overrides; {pool} and {teacher} are made once, see below):

- ``baseline``: the quickstart (InfoNCE, one BM25 negative from ranks 10-50, random batches);
- ``simans``: + SimANS negatives on the student's scale, redrawn at every load from the
  all-MiniLM-L6-v2 top-200 pool ({pool}: ``dr-mine miner=pool top_k=200``);
- ``refresh``: ``simans`` + asynchronous index refresh re-mining the pool with the student;
- ``distillation``: + InfoNCE + α · listwise KD from the fusion teacher ({teacher}: ``dr-score
  teacher=fusion`` on the pool's first 30 candidates), teacher-pair filter, 4 negatives per query
  drawn uniformly from the teacher's candidates (instead of BM25's);
- ``tas_balanced``: + TAS-Balanced batches and pairs (clusters of training queries, pairs drawn
  from teacher-margin bins of {teacher});
- ``full``: ``experiment=scifact_recipe``: SimANS, refresh and distillation, random batches;
- ``full_tas``: the same with TAS batches (SimANS keeps the pair choice); the recipe's random
  batches were chosen over TAS batches on validation.

Protocols (``--protocol``): ``quickstart`` is dr-train's defaults (57 steps, passages 256 tokens);
``cheap`` trains at 128 tokens with ``--steps`` (default 30). Both keep ``data.val_fraction=0.05``:
5% of the training queries are held out and ``val/nDCG@10`` is measured on them; the arm to
recommend is chosen on that, and the test split (SciFact test, 300 queries) is only compared at the
end, with ``dr-compare`` of every arm against the baseline (per-query nDCG@10 averaged over the
seeds before the paired tests, Holm across arms).

A finished arm (its ``metrics.json``) is not run again, so an interrupted sweep resumes. ``--dry-run``
prints the commands without running anything. ``--smoke-slice N`` runs on a tiny SciFact slice (N
training queries) for an end-to-end check of the script, not for figures.

    python scripts/bench_recipe.py --protocol cheap --seeds 42 1 2 --out bench/recipe
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import SCIFACT, compare_runs, run_app, smoke_data  # noqa: E402

SIMANS = ["sampler=simans", "data.negatives={pool}"]
ARMS: dict[str, list[str]] = {
    "baseline": [],
    "simans": SIMANS,
    "refresh": SIMANS
    + [
        "refresh=async",
        "miner@refresh.miner=pool",
        "refresh.every_n_steps={refresh_every}",
        "refresh.backend=onnx-int8",
    ],
    "distillation": [
        "loss=infonce_kd",
        "data.teacher_scores={teacher}",
        "data.negatives=null",
        "data.teacher_pair_filter=true",
        "data.num_negatives=4",
    ],
    "tas_balanced": ["sampler=tas_balanced", "data.teacher_scores={teacher}", "data.negatives=null"],
    "full": [
        "experiment=scifact_recipe",
        "data.negatives={pool}",
        "data.teacher_scores={teacher}",
        "refresh.every_n_steps={refresh_every}",
    ],
}
ARMS["full_tas"] = ARMS["full"] + ["sampler=tas"]
# One held-out split for every arm, seed and the teacher (data.val_seed): the fine-tuned teacher never saw
# the validation queries, and seeds vary the training draws only.
VAL = ["data.val_fraction=0.05", "data.val_seed=0"]
COMMON = ["test.before=false", "test.bm25=false", "export.enabled=false", *VAL]
TEACHER_SEED = 0  # the fine-tuned teacher's own seed, none of the arms' seeds
PROTOCOLS = {"quickstart": [], "cheap": ["encoder.passage_max_length=128"]}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", choices=list(PROTOCOLS), default="cheap")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: 57 quickstart, 30 cheap)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--out", default="bench/recipe")
    parser.add_argument("--pool-k", type=int, default=200, help="candidates per query in the SimANS pool")
    parser.add_argument(
        "--teacher-negatives", type=int, default=30, help="pool candidates per query the teacher scores"
    )
    parser.add_argument(
        "--teacher",
        choices=["finetuned", "zeroshot"],
        default="finetuned",
        help="the fusion teacher's dense half: the quickstart trained at seed 0 on the training split "
        "minus the validation queries (finetuned), or all-MiniLM-L6-v2 as it is (zeroshot)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument(
        "--smoke-slice", type=int, default=0, help="N training queries of a tiny slice (a check of the script)"
    )
    parser.add_argument("--extra", nargs="*", default=[], help="more dr-train overrides for every arm")
    return parser.parse_args()


def inputs(out: Path, data: dict[str, str], args, dry: bool, extra: list[str]) -> dict[str, str]:
    """The SimANS pool (dr-mine miner=pool) and the fusion teacher's scores of its first candidates.

    The teacher fuses BM25 with a dense model: with ``--teacher finetuned`` (default) that is the
    quickstart trained at seed 0 on the same training queries (the validation queries held out),
    exported; fused with BM25 it is stronger than either alone (the issue's 0.760 against 0.74)."""
    folder = out / "inputs"
    pool = folder / "pool.jsonl"
    teacher = folder / f"fusion.{args.teacher}.tsv"
    dense = "all-MiniLM-L6-v2"
    steps = []
    if args.teacher == "finetuned":
        model_dir = folder / "teacher_model"
        dense = str(model_dir / "export")
        steps.append(
            (
                "dr-train",
                model_dir,
                model_dir / "export" / "config.json",
                [f"seed={TEACHER_SEED}", *VAL, "test.before=false", "test.bm25=false", "export.index=false", *extra],
            )
        )
    steps += [
        (
            "dr-mine",
            folder / "mine",
            pool,
            [
                "model=all-MiniLM-L6-v2",
                f"corpus={data['corpus']}",
                f"queries={data['train_queries']}",
                f"qrels={data['train_qrels']}",
                "miner=pool",
                f"top_k={args.pool_k}",
                f"output={pool}",
            ],
        ),
        (
            "dr-score",
            folder / f"score.{args.teacher}",
            teacher,
            [
                "teacher=fusion",
                f"teacher.model={dense}",
                "teacher.query_max_length=64",
                "teacher.passage_max_length=256",
                f"teacher.corpus={data['corpus']}",
                f"negatives={pool}",
                f"corpus={data['corpus']}",
                f"queries={data['train_queries']}",
                f"max_negatives={args.teacher_negatives}",
                f"output={teacher}",
            ],
        ),
    ]
    for app, run_dir, target, overrides in steps:
        if dry:
            print(app, " ".join(overrides))
        elif not target.is_file():
            print(f"{app} -> {target}", flush=True)
            run_app(app, run_dir, overrides)
    return {"pool": str(pool), "teacher": str(teacher)}


def train(out: Path, arm: str, seed: int, overrides: list[str], dry: bool) -> dict | None:
    """One arm and seed, cached by its metrics.json."""
    run_dir = out / f"{arm}.seed{seed}"
    if dry:
        print("dr-train", f"hydra.run.dir={run_dir}", " ".join(overrides + [f"seed={seed}"]))
        return None
    if not (run_dir / "metrics.json").is_file():
        print(f"training {arm} seed {seed} -> {run_dir}", flush=True)
        run_app("dr-train", run_dir, overrides + [f"seed={seed}"])
    return json.loads((run_dir / "metrics.json").read_text())


def spread(values: list[float]) -> str:
    values = [v for v in values if v == v]
    if not values:
        return "-"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}" if len(values) > 1 else f"{values[0]:.4f}"


def main() -> None:
    args = parse_args()
    out = Path(args.out).resolve() / args.protocol
    data, extra = smoke_data(out, args.smoke_slice, args.extra) if not args.dry_run else (None, list(args.extra))
    data = data or SCIFACT
    steps = args.steps or (57 if args.protocol == "quickstart" else 30)
    files = inputs(out, data, args, args.dry_run, extra)
    values = {**files, "refresh_every": max(1, steps // 3)}
    protocol = COMMON + PROTOCOLS[args.protocol] + [f"trainer.max_steps={steps}"]
    arms = ["baseline"] + [a for a in args.arms if a != "baseline"]
    results = {
        arm: [
            train(out, arm, seed, protocol + [o.format(**values) for o in ARMS[arm]] + extra, args.dry_run)
            for seed in args.seeds
        ]
        for arm in arms
    }
    if args.dry_run:
        return
    print(f"\nSciFact, {args.protocol} protocol ({steps} steps), seeds {args.seeds}: mean ± sd over seeds")
    print(f"{'arm':<14}{'val nDCG@10':>22}{'test nDCG@10':>22}{'test R@100':>22}")
    for arm, runs in results.items():
        print(
            f"{arm:<14}"
            + "".join(
                f"{spread([r.get(m, float('nan')) for r in runs]):>22}"
                for m in ("val/nDCG@10", "trained/nDCG@10", "trained/R@100")
            )
        )
    chosen = max(results, key=lambda a: statistics.mean(r.get("val/nDCG@10", float("-inf")) for r in results[a]))
    print(f"chosen on validation (held-out training queries): {chosen}")
    compare_runs(
        {arm: [out / f"{arm}.seed{s}" / "runs" / "trained.run" for s in args.seeds] for arm in arms},
        data["test_qrels"],
        out / "compare",
    )


if __name__ == "__main__":
    main()
