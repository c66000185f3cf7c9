"""LoRA against full fine-tuning: trainable parameters, optimizer state, checkpoint size, peak memory, step time.

One arm per fresh process (the script re-invokes itself with ``--only``), so peaks are not mixed:
the packaged all-MiniLM-L6-v2 (attention dropout 0, as ``dr-train`` trains), a batch of
``--batch-size`` SciFact training claims (64 tokens at most) and twice as many SciFact abstracts
(``--passage-length`` tokens); InfoNCE over the passages, backward, AdamW step; ``--steps``
steps, the first a warm-up. No recomputation lever in any arm (the fused feed-forward block does
not apply to layers with adapters, :mod:`dr.models.recompute`), so the arms differ only in what
is trained. Arms:

- ``full``: every weight trained (the pooler head aside, as ``dr-train`` does);
- ``lora8``, ``lora16``: ``encoder.lora`` with r = 8 or 16 (alpha = 2r, dropout 0.1) on every
  attention and feed-forward linear layer (:data:`dr.models.lora.DEFAULT_TARGETS`).
- ``lora8_nodrop``: r = 8 with adapter dropout 0 (peft then feeds each adapter the layer's input
  itself instead of a dropped-out copy that the backward pass has to keep).

Reported: trainable parameters, optimizer state (AdamW's moments after a step), the checkpoint
``dr-train`` would write (the training module's state dict, which leaves frozen weights out with
adapters, and the optimizer state, saved with ``torch.save``), the resident memory before the
first step and the peak, and the median step time over steps 2..N as a ratio to ``full``.

    python scripts/bench_lora.py                       # the defaults: batch 16, 256 tokens, 5 steps per arm
    python scripts/bench_lora.py --batch-size 8 --steps 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_encode import format_machine, machine_info, write_results  # noqa: E402
from bench_memory import batch_texts, rss_mib  # noqa: E402

MODEL = "all-MiniLM-L6-v2"
ARMS = {
    "full": None,
    "lora8": {"r": 8, "alpha": 16},
    "lora16": {"r": 16, "alpha": 32},
    "lora8_nodrop": {"r": 8, "alpha": 16, "dropout": 0.0},  # no dropout: peft keeps no dropped copy of the input
}


def run_one(args, arm: str) -> dict:
    import torch
    import transformers

    from dr.losses.infonce import InfoNCELoss
    from dr.models import BiEncoder
    from dr.training import DenseRetrievalModule

    torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(args.seed)
    encoder = BiEncoder.from_pretrained(
        MODEL, query_max_length=64, passage_max_length=args.passage_length, lora=ARMS[arm]
    )
    module = DenseRetrievalModule(
        encoder, InfoNCELoss(), partial(torch.optim.AdamW, lr=3e-5), attention_dropout=0.0, length_buckets=1
    )
    optimizer = module.configure_optimizers()
    encoder.train()
    queries, passages = batch_texts(args.batch_size, 2 * args.batch_size, args.seed)
    q_in, d_in = encoder.tokenize(queries, "query"), encoder.tokenize(passages, "passage")
    target = torch.arange(0, 2 * args.batch_size, 2)  # each claim's passage, the next one a negative
    before = rss_mib()[0]
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        q, d = encoder.embed_queries(q_in), encoder.embed_passages(d_in)
        loss = torch.nn.functional.cross_entropy((q.float() @ d.float().T) / 0.05, target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    peak = rss_mib()[1]
    state_bytes = sum(
        t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "step.ckpt"
        torch.save({"state_dict": module.state_dict(), "optimizer_states": [optimizer.state_dict()]}, path)
        checkpoint_bytes = path.stat().st_size
    return {
        "arm": arm,
        "lora": ARMS[arm],
        "trainable": sum(p.numel() for p in encoder.parameters() if p.requires_grad),
        "parameters": sum(p.numel() for p in encoder.parameters()),
        "optimizer_state_bytes": state_bytes,
        "checkpoint_bytes": checkpoint_bytes,
        "before_mib": before,
        "peak_mib": peak,
        "step_s": times,
        "loss": float(loss),
        "passage_shape": list(d_in["input_ids"].shape),
    }


def run_child(args, arm: str, out: Path) -> dict:
    result_file = out / f"{arm}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:], "--only", arm, "--result", str(result_file)]
    print(f"[{time.strftime('%H:%M:%S')}] {arm}", flush=True)
    with open(out / f"{arm}.log", "w") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if done.returncode or not result_file.is_file():
        raise SystemExit(f"bench_lora.py: {arm} failed ({done.returncode}); see {out / (arm + '.log')}")
    return json.loads(result_file.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--steps", type=int, default=5, help="steps per arm; the first is the warm-up")
    parser.add_argument("--batch-size", type=int, default=16, help="queries per step (2 passages each)")
    parser.add_argument("--passage-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/lora")
    parser.add_argument("--only", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2: the first step is the warm-up")
    if args.only:
        Path(args.result).write_text(json.dumps(run_one(args, args.only), indent=2) + "\n")
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = machine_info(args.threads)
    print(format_machine(info))
    results = [run_child(args, arm, out) for arm in args.arms]
    shape = results[0]["passage_shape"]
    title = (
        f"Full fine-tuning against LoRA, all-MiniLM-L6-v2: {args.batch_size} queries and "
        f"{2 * args.batch_size} passages "
        f"padded to {shape[1]} tokens, InfoNCE, backward, AdamW; fp32, attention dropout 0, no recomputation; "
        f"{args.threads} threads; median step over steps 2-{args.steps}"
    )
    head = (
        f"{'arm':<8}{'trainable':>12}{'share':>8}{'optim. state MiB':>18}{'checkpoint MiB':>16}"
        f"{'before MiB':>12}{'peak MiB':>10}{'s/step':>8}{'vs full':>9}"
    )
    lines = [title, format_machine(info), head]
    full = next((statistics.median(r["step_s"][1:]) for r in results if r["arm"] == "full"), None)
    for r in results:
        step = statistics.median(r["step_s"][1:])
        ratio = f"{step / full:>8.2f}x" if full else f"{'-':>9}"
        lines.append(
            f"{r['arm']:<8}{r['trainable']:>12,}{100 * r['trainable'] / r['parameters']:>7.2f}%"
            f"{r['optimizer_state_bytes'] / 2**20:>18.2f}{r['checkpoint_bytes'] / 2**20:>16.2f}"
            f"{r['before_mib']:>12.0f}{r['peak_mib']:>10.0f}{step:>8.2f}{ratio}"
        )
    table = "\n".join(lines)
    print("\n" + table)
    write_results(out, "lora", table, {"settings": vars(args), "machine": info, "results": results})


if __name__ == "__main__":
    main()
