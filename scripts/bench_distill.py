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

``bench_common.DISTILL_ARMS`` maps each arm to its ``dr-train`` overrides; ``{teacher}`` stands for the path returned
by :func:`bench_common.fusion_teacher` (``str.format(teacher=path)``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import (
    DISTILL_ARMS as ARMS,
    arm_overrides,
    fusion_teacher,
    fusion_test_figures,
    smoke_data,
    table,
    train_arm,
    training_parser,
)  # noqa: E402


def main() -> None:
    args = training_parser(__doc__, list(ARMS)).parse_args()

    out = Path(args.out).resolve()
    data, extra = smoke_data(out, args.smoke_slice, args.extra)
    teacher = fusion_teacher(out, data)
    results = {
        name: [train_arm(out, name, arm_overrides(name, teacher) + extra, seed, args.steps) for seed in args.seeds]
        for name in args.arms
    }
    figures = fusion_test_figures(out, data)
    print(
        f"\nSciFact test, all-MiniLM-L6-v2, {args.steps} steps, batch 32 + 1 hard negative per query, passages 128 "
        f"tokens"
    )
    print(table(results, extra=figures))


if __name__ == "__main__":
    main()
