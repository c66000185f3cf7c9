"""The evidence the recipe (the main job's stage 2) lacks, issue #24: each comparison trains a
variant of stage 2 at the quickstart protocol on several seeds, against the recipe itself.

Comparisons (arms; each is ``dr-pipeline`` with ``+extra.<stage>=[...]``, so the split, stage 1,
the pool and the teacher are the main job's cached stages, and only what an arm changes is redone):

- ``refresh``: ``no_refresh`` (``refresh.enabled=false``) against the recipe's asynchronous refresh;
- ``distillation``: Margin-MSE (Hofstätter et al. 2020) with the student scale fitted
  (``loss.student_scale=auto``), multi-negative (``margin_mse``: the 4 SimANS negatives) and
  pairwise (``margin_mse_pair``: 1 negative), against the recipe's InfoNCE + listwise KD;
- ``tas``: TAS topic batches (``sampler=tas``) at ``queries_per_cluster`` 16, 32, 64, 200
  (at most training queries / batch size clusters: 22 on SciFact, so 16 and 32 both give 22);
- ``pool``: the SimANS pool mined with the zero-shot model (``pool_zero_shot``) against stage 1's,
  the main job's since this comparison (stage 1's won on validation).

The arm to keep is chosen on validation only: the best-checkpoint validation nDCG@10 of stage 2's
held-out training queries (``train/best_score``), averaged over seeds. A comparison with several
variants (distillation, tas) screens them on the first seed's validation score and trains only the
best on the other seeds (``--no-screen`` trains every variant on every seed); ``--arms`` restricts
a comparison to some of its variants. The SciFact test split is
reported with ``dr-compare`` of each arm against the recipe (per-query nDCG@10 averaged over seeds,
paired tests, Holm across the comparison's arms). ``--ood`` also runs the main job's evaluation
stages (the DL19 pool) for each arm.

A finished stage is cached by ``dr-pipeline``, so an interrupted sweep resumes; ``--dry-run`` prints
the commands.

    python scripts/bench_evidence.py --cache CACHE --comparisons refresh distillation --seeds 42 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import compare_runs  # noqa: E402

ARMS: dict[str, dict[str, list[str]]] = {
    "recipe": {},
    "no_refresh": {"stage2": ["refresh.enabled=false"]},
    "margin_mse": {"stage2": ["loss=margin_mse", "loss.student_scale=auto"]},
    "margin_mse_pair": {"stage2": ["loss=margin_mse", "loss.student_scale=auto", "data.num_negatives=1"]},
    **{
        f"tas_q{n}": {"stage2": ["sampler=tas", f"data.batch_sampler.queries_per_cluster={n}"]}
        for n in (16, 32, 64, 200)
    },
    "pool_zero_shot": {"pool": ["model=${zero_shot}"]},
}
COMPARISONS = {
    "refresh": ["no_refresh"],
    "distillation": ["margin_mse", "margin_mse_pair"],
    "tas": ["tas_q16", "tas_q32", "tas_q64", "tas_q200"],
    "pool": ["pool_zero_shot"],
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", required=True, help="the main job's cache_dir (dr-pipeline cache_dir=...)")
    parser.add_argument("--comparisons", nargs="+", choices=list(COMPARISONS), default=list(COMPARISONS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument(
        "--arms",
        nargs="+",
        choices=[a for arms in COMPARISONS.values() for a in arms],
        help="only these variants of the chosen comparisons",
    )
    parser.add_argument(
        "--screen",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="screen a comparison's variants on the first seed, the best on every seed",
    )
    parser.add_argument("--ood", action="store_true", help="also the main job's evaluation stages (DL19 pool)")
    parser.add_argument("--pipeline", nargs="*", default=[], help="more dr-pipeline overrides for every arm")
    parser.add_argument("--out", default="bench/evidence", help="where the dr-compare folders go")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    return parser.parse_args()


def arm_overrides(arm: str, seed: int, args) -> list[str]:
    extra = [
        f"+extra.{stage}=[" + ",".join(f"'{o}'" for o in overrides) + "]" for stage, overrides in ARMS[arm].items()
    ]
    until = [] if args.ood else ["until=stage2"]
    return [f"cache_dir={args.cache}", f"seed={seed}", *until, *extra, *args.pipeline]


def stage_dir(overrides: list[str], name: str = "stage2") -> Path:
    """Where ``dr-pipeline`` with ``overrides`` puts stage ``name`` (its cache key, planned in-process)."""
    from hydra import compose, initialize_config_dir

    from dr.cli import config_dir
    from dr.cli.pipeline import compose_command
    from dr.pipeline import job_specs, plan

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("pipeline", overrides=[o for o in overrides if not o.startswith("until=")])
    (stage,) = [s for s in plan(job_specs(cfg), cfg.cache_dir, compose_command) if s.name == name]
    return stage.dir


def run_arm(arm: str, seed: int, args) -> Path:
    overrides = arm_overrides(arm, seed, args)
    print("dr-pipeline " + " ".join(overrides), flush=True)
    if args.dry_run:
        return Path()
    folder = stage_dir(overrides)
    if not (folder / "DONE.json").is_file() or args.ood:
        subprocess.run([str(Path(sys.executable).parent / "dr-pipeline"), *overrides], check=True)
    return folder


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}" if len(values) > 1 else f"{values[0]:.4f}"


def validation_score(folder: Path) -> float:
    return json.loads((folder / "metrics.json").read_text()).get("train/best_score", float("-inf"))


def variants(comparison: str, args) -> list[str]:
    return [a for a in COMPARISONS[comparison] if not args.arms or a in args.arms]


def run_comparison(comparison: str, args) -> dict[str, list[Path]]:
    """Every variant on every seed, or (``--screen``) every variant on the first seed and the one
    with the best validation score on the others."""
    arms = variants(comparison, args)
    if not args.screen or len(arms) == 1 or len(args.seeds) == 1:
        return {arm: [run_arm(arm, seed, args) for seed in args.seeds] for arm in arms}
    first = {arm: run_arm(arm, args.seeds[0], args) for arm in arms}
    if args.dry_run:
        print(f"# then the best of {', '.join(arms)} on validation, on seeds {args.seeds[1:]}")
        return {}
    best = max(arms, key=lambda a: validation_score(first[a]))
    scores = ", ".join(f"{a} {validation_score(first[a]):.4f}" for a in arms)
    print(f"{comparison}: screened on seed {args.seeds[0]}'s validation nDCG@10 ({scores}): {best}", flush=True)
    return {best: [first[best]] + [run_arm(best, seed, args) for seed in args.seeds[1:]]}


def main() -> None:
    args = parse_args()
    folders = {"recipe": [run_arm("recipe", seed, args) for seed in args.seeds]}
    chosen = {}
    for comparison in args.comparisons:
        chosen[comparison] = run_comparison(comparison, args)
        folders.update(chosen[comparison])
    if args.dry_run:
        return
    metrics = {arm: [json.loads((f / "metrics.json").read_text()) for f in dirs] for arm, dirs in folders.items()}
    arms = list(folders)
    print(f"\nstage 2 variants, quickstart protocol, seeds {args.seeds}: mean ± sd over seeds")
    print(f"{'arm':<17}{'val nDCG@10 (best ckpt)':>26}{'test nDCG@10':>20}{'test R@100':>20}")
    for arm in arms:
        row = [
            [m.get(k, float("nan")) for m in metrics[arm]]
            for k in ("train/best_score", "trained/nDCG@10", "trained/R@100")
        ]
        print(f"{arm:<17}" + f"{spread(row[0]):>26}" + "".join(f"{spread(v):>20}" for v in row[1:]))
    for comparison in args.comparisons:
        group = ["recipe", *chosen[comparison]]
        best = max(group, key=lambda a: statistics.mean(m.get("train/best_score", float("-inf")) for m in metrics[a]))
        print(f"\n{comparison}: chosen on validation: {best}")
        compare_runs(
            {a: [f / "runs" / "trained.run" for f in folders[a]] for a in group},
            "scifact:test_qrels",
            Path(args.out) / comparison,
        )


if __name__ == "__main__":
    main()
