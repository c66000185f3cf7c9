"""TAS and TAS-Balanced batches against random batches on SciFact, with the same loss.

Every arm trains the packaged all-MiniLM-L6-v2 from the same start under the shortened protocol
of ``scripts/bench_common.py`` (passages 128 tokens, no validation) with TAS-B's loss: Margin-MSE
against the offline BM25 + dense fusion teacher plus 0.75 × the in-batch term with the fusion
teacher scoring the whole batch (the ``mmse_inbatch_fusion`` arm of ``scripts/bench_distill.py``, defined in
``bench_common``,
whose teacher file and overrides are reused). Only the sampler differs:

- ``mmse_inbatch_fusion``: random batches, one (positive, negative) teacher pair per query drawn uniformly.
- ``tas``: each batch from one query cluster (Hofstätter et al. 2021, Sec. 3.1).
- ``tas_balanced``: TAS batches and balanced margin sampling of the pair (Sec. 3.2).

The clusters are made at set-up by the model being trained (k = round(queries / 200): 4 clusters of
~200 queries for SciFact's 809 training queries) and cached in each arm's run directory.

Besides test nDCG@10 and R@100, the script measures the sampling overhead: the time to compose a
batch (batch sampler + pair sampler + collate, no model) over many batches, median and mean (the
mean includes each epoch's one-off batch composition and the first visit's per-query binning),
next to the training step time of the runs (whole step: encoders, in-batch teacher, loss, optimizer).

    python scripts/bench_tas.py --steps 30 --seeds 42 --out bench/train
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import PROTOCOL, arm_overrides, fusion_teacher, smoke_data, table, train_arm, training_parser  # noqa: E402

SAMPLERS = {"mmse_inbatch_fusion": [], "tas": ["sampler=tas"], "tas_balanced": ["sampler=tas_balanced"]}
BASE = "mmse_inbatch_fusion"


def overrides_of(name: str, teacher: Path) -> list[str]:
    return arm_overrides(BASE, teacher) + SAMPLERS[name]


def sampling_overhead(run_dir: Path, overrides: list[str], batches: int) -> dict[str, float]:
    """Seconds to compose a training batch (sampler, pair choice, collate), as in the arm's run.

    The data module is built from the arm's own config; with ``clusters: null`` the clusters
    cached in the arm's run directory are reused. Epochs are iterated until ``batches`` batches.
    """
    import hydra
    from hydra import compose, initialize_config_dir

    from dr.cli import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[*PROTOCOL, *overrides, f"paths.output_dir={run_dir}"])
    datamodule = hydra.utils.instantiate(cfg.data, output_dir=str(run_dir))
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    times: list[float] = []
    epoch = 0
    while len(times) < batches:
        loader.batch_sampler.set_epoch(epoch)
        it = iter(loader)
        while len(times) < batches:
            t0 = time.perf_counter()
            try:
                next(it)
            except StopIteration:
                break
            times.append(time.perf_counter() - t0)
        epoch += 1
    return {
        "median_s": statistics.median(times),
        "mean_s": statistics.fmean(times),
        "batches": len(times),
        "epochs": epoch,
    }


def cluster_summary(run_dir: Path) -> str:
    path = run_dir / "clusters.txt"
    if not path.is_file():
        return "-"
    from dr.sampling.clustering import read_clusters

    sizes = sorted(len(c) for c in read_clusters(path))
    return f"{len(sizes)} clusters, sizes {sizes[0]}-{sizes[-1]} (median {statistics.median(sizes):.0f})"


def main() -> None:
    parser = training_parser(__doc__, list(SAMPLERS))
    parser.add_argument("--overhead-batches", type=int, default=200, help="batches timed per sampler for the overhead")
    args = parser.parse_args()

    out = Path(args.out).resolve()
    data, extra = smoke_data(out, args.smoke_slice, args.extra)
    teacher = fusion_teacher(out, data)
    results = {
        name: [train_arm(out, name, overrides_of(name, teacher) + extra, seed, args.steps) for seed in args.seeds]
        for name in args.arms
    }

    print(
        f"[{time.strftime('%H:%M:%S')}] timing batch composition ({args.overhead_batches} batches per sampler)",
        flush=True,
    )
    seed = args.seeds[0]
    rows = []
    for name in args.arms:
        run_dir = out / f"{name}.seed{seed}"
        cost = sampling_overhead(run_dir, overrides_of(name, teacher) + extra + [f"seed={seed}"], args.overhead_batches)
        step_s = statistics.median(
            r["time/train_s"] / max(1.0, r.get("train/global_step", args.steps)) for r in results[name]
        )
        rows.append((name, cost, step_s, cluster_summary(run_dir)))

    print(
        f"\nSciFact test, all-MiniLM-L6-v2, {args.steps} steps, TAS-B loss (Margin-MSE + 0.75 in-batch, fusion "
        f"teacher), "
        "passages 128 tokens"
    )
    print(table(results))
    print(f"\nsampling overhead per batch (no model), seed {seed}")
    print(f"{'arm':<28}{'compose ms (median)':>20}{'(mean)':>10}{'train s/step':>14}{'overhead %':>12}  clusters")
    for name, cost, step_s, clusters in rows:
        share = 100 * cost["median_s"] / step_s if step_s > 0 else float("nan")
        print(
            f"{name:<28}{1000 * cost['median_s']:>20.2f}{1000 * cost['mean_s']:>10.2f}{step_s:>14.2f}{share:>12.3f}  "
            f"{clusters}"
        )


if __name__ == "__main__":
    main()
