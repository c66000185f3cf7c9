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
    parser.add_argument("--smoke-slice", type=int, default=0, help=argparse.SUPPRESS)  # N train queries: a tiny end-to-end check
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


def table(results: dict[str, list[dict]], measures=("trained/nDCG@10", "trained/R@100"), extra: dict[str, dict] | None = None) -> str:
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
        lines.append(f"{name:<28}" + "".join(f"{row.get(m, float('nan')):>16.4f}" for m in measures) + f"{'':>11}{'':>7}")
    return "\n".join(lines)
