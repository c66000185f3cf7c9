"""Index refresh benchmark: no refresh vs synchronous vs asynchronous refresh every K steps.

Three arms train all-MiniLM-L6-v2 on SciFact with the shared protocol (scripts/bench_common.py),
the same seed and steps, starting from BM25 negatives:

- ``infonce_bm25``: no refresh (the canonical arm shared with the other benchmarks);
- ``refresh_sync_k{K}``: every K steps the trainer waits while the corpus is re-encoded, indexed
  and re-mined (SimANS over the top-200), then swaps the negatives in;
- ``refresh_async_k{K}``: the same work in a worker process; the trainer keeps stepping.

Reported: training wall time, trainer blocked time as a fraction of it (the time spent in the
refresh callback: snapshot, polling, swapping; the whole job in sync mode), refreshes used,
mean refresh duration and staleness (steps between snapshot and swap), test nDCG@10 and R@100.
Everything is read from each run's metrics.json (refresh/* keys; per-version rows are in
logs/metrics.csv).

On 2 CPU cores the async arm splits the threads: ``--trainer-threads`` for the trainer and
``--worker-threads`` for the worker (default 1 + 1); the other arms keep torch's default.

    python scripts/bench_refresh.py                 # --steps 30 --every 10 --seeds 42 --out bench/train
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import train_arm  # noqa: E402

COLUMNS = [
    ("train min", lambda m: m.get("time/train_s", float("nan")) / 60, "{:>10.1f}"),
    ("blocked %", lambda m: 100 * m.get("refresh/blocked_fraction", 0.0), "{:>10.2f}"),
    ("refreshes", lambda m: m.get("refresh/versions_used", 0.0), "{:>10.0f}"),
    ("refresh s", lambda m: m.get("refresh/mean_duration_s", float("nan")), "{:>10.1f}"),
    ("stale steps", lambda m: m.get("refresh/mean_staleness_steps", float("nan")), "{:>12.1f}"),
    ("nDCG@10", lambda m: m.get("trained/nDCG@10", float("nan")), "{:>9.4f}"),
    ("R@100", lambda m: m.get("trained/R@100", float("nan")), "{:>8.4f}"),
]


def refresh_table(results: dict[str, list[dict]]) -> str:
    lines = [f"{'arm':<24}" + "".join(f"{name:>{len(fmt.format(0))}}" for name, _, fmt in COLUMNS) + f"{'seed':>6}"]
    for arm, runs in results.items():
        for seed, m in runs:
            lines.append(f"{arm:<24}" + "".join(fmt.format(get(m)) for _, get, fmt in COLUMNS) + f"{seed:>6}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--every", type=int, default=10, help="refresh every K steps")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--out", default="bench/train")
    parser.add_argument("--miner", default="simans", help="conf/miner option used by the refresh")
    parser.add_argument("--trainer-threads", type=int, default=1)
    parser.add_argument("--worker-threads", type=int, default=1)
    parser.add_argument(
        "--backend",
        default="torch",
        choices=["torch", "onnx", "onnx-int8"],
        help="what the refresh encodes with (refresh.backend)",
    )
    parser.add_argument("--arms", nargs="+", default=["none", "sync", "async"], choices=["none", "sync", "async"])
    parser.add_argument("--extra", nargs="*", default=[], help=argparse.SUPPRESS)  # Hydra overrides for smoke tests
    args = parser.parse_args()

    out = Path(args.out)
    refresh = [
        f"miner@refresh.miner={args.miner}",
        f"refresh.every_n_steps={args.every}",
        f"refresh.backend={args.backend}",
    ]
    suffix = "" if args.backend == "torch" else f"_{args.backend}"
    arms = {
        "infonce_bm25": [],
        f"refresh_sync_k{args.every}{suffix}": ["refresh=sync", *refresh],
        f"refresh_async_k{args.every}{suffix}": [
            "refresh=async",
            *refresh,
            f"refresh.trainer_threads={args.trainer_threads}",
            f"refresh.worker_threads={args.worker_threads}",
        ],
    }
    wanted = {
        "none": "infonce_bm25",
        "sync": f"refresh_sync_k{args.every}{suffix}",
        "async": f"refresh_async_k{args.every}{suffix}",
    }
    arms = {name: overrides for name, overrides in arms.items() if name in {wanted[a] for a in args.arms}}
    results = {
        name: [(seed, train_arm(out, name, [*overrides, *args.extra], seed, args.steps)) for seed in args.seeds]
        for name, overrides in arms.items()
    }
    print(
        f"\nSciFact, {args.steps} steps, refresh every {args.every} steps ({args.miner}, backend {args.backend}); "
        f"async threads: trainer {args.trainer_threads} + worker {args.worker_threads}"
    )
    print(refresh_table(results))


if __name__ == "__main__":
    main()
