"""Matryoshka representation learning against plain InfoNCE on SciFact (issue #26, item 4).

Both arms train all-MiniLM-L6-v2 from the same start under the shared protocol (bench_common.py:
passages at 128 tokens, no validation, ``--steps`` steps) and are evaluated on the full SciFact
test split at 384 (the full embedding), 256, 128 and 64 dimensions (``test.truncate_dims``: the
first m dims of the same embeddings, re-normalised):

- ``infonce``: the quickstart's InfoNCE (τ = 0.05), truncated only at evaluation;
- ``matryoshka``: ``loss=matryoshka``, InfoNCE at 384, 256, 128 and 64 dims, weights 1
  (Kusupati et al. 2022, Eq. 1).

The table gives nDCG@10 per dimension (mean ± standard deviation over the seeds), then ``dr-compare``
of the arms at each dimension (per-query means over the seeds, paired tests, Holm). A finished arm
(its ``metrics.json``) is not run again.

    python scripts/bench_matryoshka.py --seeds 42 1 2 --steps 57 --out bench/matryoshka
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import compare_runs, smoke_data, table, train_arm, training_parser  # noqa: E402

DIMS = (256, 128, 64)
ARMS: dict[str, list[str]] = {
    "infonce": [],
    "matryoshka": ["loss=matryoshka", "loss.dims=[384,256,128,64]"],
}
MEASURES = ("trained/nDCG@10", *(f"trained@{m}/nDCG@10" for m in DIMS))


def main() -> None:
    parser = training_parser(__doc__, list(ARMS))
    parser.set_defaults(out="bench/matryoshka")
    args = parser.parse_args()
    out = Path(args.out)
    data, extra = smoke_data(out, args.smoke_slice, args.extra)
    evaluation = [f"test.truncate_dims=[{','.join(map(str, DIMS))}]"]
    results = {
        name: [train_arm(out, name, [*ARMS[name], *evaluation, *extra], seed, args.steps) for seed in args.seeds]
        for name in args.arms
    }
    print(
        "nDCG@10 on the SciFact test split by embedding dimension (384 = full; the others: the first m dims, "
        "re-normalised)"
    )
    lines = table(results, measures=MEASURES).splitlines()
    lines[0] = f"{'arm':<28}" + "".join(f"{f'dim {m}':>16}" for m in (384, *DIMS)) + f"{'train min':>11}{'seeds':>7}"
    print("\n".join(lines))
    if len(args.arms) < 2:
        return
    qrels = (data or {}).get("test_qrels", "scifact:test_qrels")
    for m in (384, *DIMS):
        run = "trained.run" if m == 384 else f"trained@{m}.run"
        print(f"\ndim {m}: dr-compare of the arms (per-query nDCG@10 averaged over the seeds, Holm)")
        groups = {name: [out / f"{name}.seed{seed}" / "runs" / run for seed in args.seeds] for name in args.arms}
        compare_runs(groups, qrels, out / f"compare-dim{m}", measures="[nDCG@10]")


if __name__ == "__main__":
    main()
