"""Memory and time of one training step with and without GradCache (``module.grad_cache_chunk``).

The packaged all-MiniLM-L6-v2 takes training steps on one real SciFact batch: ``--batch-size``
queries (64 tokens), each with its positive and one BM25 negative from ranks 10-50 (passages at
``--passage-length`` tokens), InfoNCE at temperature 0.05, AdamW, gradients clipped at 1.0, fp32,
dropout on. A step is :meth:`dr.training.DenseRetrievalModule.batch_loss`, ``backward`` and the
optimizer step. Each arm (``plain``; ``cached``: chunks of ``--chunk`` texts) runs in its own
process, the script re-invoking itself with ``--only``.

Memory: the peak resident memory of the step above the resident memory just before it (Linux:
``VmHWM`` reset through ``/proc/self/clear_refs``), with glibc told to serve every allocation over
64 KiB by ``mmap`` (``MALLOC_MMAP_THRESHOLD_``) so freed tensors leave the resident set at once and
the peak is the step's own. The first step (optimizer state allocation, warm-up) is measured for
memory and left out of the times; the median of the others is reported. The module's own
estimate of the activation memory (``memory_estimate``, logged as ``train/grad_cache_activation_mib_*``)
is printed next to it.

    python scripts/bench_grad_cache.py                      # --batch-size 32 --passage-length 256 --chunk 8 --steps 3
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


def vm_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def run_arm(args) -> dict:
    import torch

    from dr.models.encoder import BiEncoder
    from dr.retrieval import BM25Negatives
    from dr.training import DenseRetrievalModule, RetrievalDataModule
    from dr.losses import InfoNCELoss

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dm = RetrievalDataModule(
        "scifact:corpus",
        "scifact:train_queries",
        "scifact:train_qrels",
        negatives=BM25Negatives(10, 50),
        num_negatives=1,
        batch_size=args.batch_size,
        seed=0,
        val_fraction=0,
    )
    dm.setup("fit")
    batch = dm.collate_train([dm.train_dataset[(i, 0)] for i in range(args.batch_size)])
    encoder = BiEncoder.from_pretrained("all-MiniLM-L6-v2", query_max_length=64, passage_max_length=args.passage_length)
    chunk = args.chunk if args.only == "cached" else None
    module = DenseRetrievalModule(encoder, InfoNCELoss(0.05), optimizer=torch.optim.AdamW, grad_cache_chunk=chunk)
    module.train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=3e-5)
    batch = module.on_before_batch_transfer(batch, 0)
    times, peaks = [], []
    for step in range(args.steps):
        before = vm_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set
        t0 = time.perf_counter()
        loss = module.batch_loss(batch)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        peaks.append((vm_kib("VmHWM") - before) / 1024)
        print(
            f"[{args.only}] step {step}: {times[-1]:.1f} s, peak +{peaks[-1]:.0f} MiB, loss {loss.item():.4f}",
            flush=True,
        )
    return {
        "arm": args.only,
        "chunk": chunk,
        "queries": args.batch_size,
        "passages": len(batch["passages"]),
        "passage_tokens": int(batch["passage_inputs"]["input_ids"].shape[1]),
        "step_seconds": times[1:],
        "median_step_s": statistics.median(times[1:]) if len(times) > 1 else times[0],
        "step_peak_mib": peaks,
        "first_step_peak_mib": peaks[0],
        "later_step_peak_mib": max(peaks[1:], default=peaks[0]),
        "estimate_mib": module.memory_estimate,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--passage-length", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("outputs/bench/grad_cache.json"))
    parser.add_argument("--only", choices=["plain", "cached"])
    args = parser.parse_args()
    if args.only:
        print("RESULT " + json.dumps(run_arm(args)), flush=True)
        return
    results = {}
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    for arm in ("plain", "cached"):
        cmd = [sys.executable, __file__, "--only", arm, *sys.argv[1:]]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        print("\n".join(line for line in done.stdout.splitlines() if not line.startswith("RESULT")), flush=True)
        results[arm] = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT"))[7:])
    plain, cached = results["plain"], results["cached"]
    print(
        f"\n{plain['queries']} queries, {plain['passages']} passages padded to {plain['passage_tokens']} tokens, fp32, "
        f"{args.threads} threads"
    )
    print(f"{'arm':<16}{'step s (median)':>16}{'peak MiB, step 1':>18}{'peak MiB, later':>17}")
    for name, r in (("plain", plain), (f"cached (chunk {args.chunk})", cached)):
        print(
            f"{name:<16}{r['median_step_s']:>16.1f}{r['first_step_peak_mib']:>18.0f}{r['later_step_peak_mib']:>17.0f}"
        )
    print(
        f"time ratio cached/plain: {cached['median_step_s'] / plain['median_step_s']:.2f}; "
        f"peak ratio (later steps): {cached['later_step_peak_mib'] / plain['later_step_peak_mib']:.2f}"
    )
    est = cached["estimate_mib"]
    print(
        f"module estimate of activations: {est['full']:.0f} MiB whole batch, {est['cached']:.0f} MiB per chunk, "
        f"{est['saved']:.0f} MiB saved"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
