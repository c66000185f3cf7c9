"""Memory of a training step: what is stored for the backward pass, the peak resident memory, the time.

One configuration per fresh process (the script re-invokes itself with ``--only``), so peaks are not
mixed: the packaged all-MiniLM-L6-v2 (attention dropout 0, as ``dr-train`` trains), a batch of 32
SciFact training claims (64 tokens at most) and 64 SciFact abstracts (256 tokens), the quickstart's
batch; InfoNCE over the 64 passages, backward, AdamW step; ``--steps`` steps, the first a warm-up.
Configurations cross:

- precision: ``fp32`` or ``bf16`` (autocast, as ``dr-train`` runs where bf16 is native);
- recompute: ``none``, ``activation`` / ``full`` (``module.ffn_recompute``, :mod:`dr.models.recompute`),
  ``attention`` (``full`` and ``module.attention_recompute``: the self-attention recomputed too)
  or ``checkpoint`` (``module.gradient_checkpointing``: every layer recomputed);
- allocator: ``system`` (glibc's malloc) or ``jemalloc`` (preloaded with purging off, as ``dr``'s
  commands run when it is there; :mod:`dr.allocator`).

Reported: MiB stored for the backward pass (distinct tensor storages that autograd saved, the
parameters left out; step 1; the inputs a checkpointed module keeps are not among them: one
``[tokens, hidden]`` tensor per layer for ``attention`` and ``checkpoint``), the resident memory before the first step
(model, optimizer, libraries),
the peak resident memory, and the median step time over steps 2..N.

    python scripts/bench_memory.py                              # everything: about 10 minutes on 2 cores
    python scripts/bench_memory.py --precisions fp32 --allocators jemalloc
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_encode import format_machine, machine_info, write_results  # noqa: E402

MODEL = "all-MiniLM-L6-v2"
RECOMPUTE = ["none", "activation", "full", "attention", "checkpoint"]


def rss_mib() -> tuple[float, float]:
    """(current, peak) resident memory of this process in MiB."""
    current = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return current, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def batch_texts(n_queries: int, n_passages: int, seed: int) -> tuple[list[str], list[str]]:
    from dr.data import passage_texts, read_corpus, read_queries

    corpus = read_corpus("scifact:corpus")
    queries = list(read_queries("scifact:train_queries").values())
    rng = random.Random(seed)
    return rng.sample(queries, n_queries), passage_texts(corpus, rng.sample(range(len(corpus)), n_passages))


def run_one(args, precision: str, recompute: str) -> dict:
    import torch
    import transformers

    from dr.allocator import active
    from dr.models import BiEncoder
    from dr.models.encoder import autocast_context

    torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(args.seed)
    encoder = BiEncoder.from_pretrained(
        MODEL, query_max_length=args.query_length, passage_max_length=args.passage_length
    )
    encoder.set_attention_dropout(0.0)
    if recompute == "checkpoint":
        encoder.gradient_checkpointing_enable()
    elif recompute == "attention":  # the feed-forward block and the self-attention recomputed
        encoder.set_feed_forward_recompute("full")
        encoder.set_attention_recompute(True)
    else:
        encoder.set_feed_forward_recompute(recompute)
    encoder.train()
    optimizer = torch.optim.AdamW([p for p in encoder.parameters() if p.requires_grad], lr=3e-5)
    queries, passages = batch_texts(args.batch_size, 2 * args.batch_size, args.seed)
    q_in, d_in = encoder.tokenize(queries, "query"), encoder.tokenize(passages, "passage")
    params = {p.untyped_storage().data_ptr() for p in encoder.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    before = rss_mib()[0]
    times = []
    for step in range(args.steps):
        t0 = time.perf_counter()
        hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t) if step == 0 else None
        if hooks is not None:
            hooks.__enter__()
        with autocast_context("cpu", precision == "bf16"):
            q, d = encoder.embed_queries(q_in), encoder.embed_passages(d_in)
            loss = torch.nn.functional.cross_entropy((q.float() @ d.float().T) / 0.05, torch.arange(len(q)))
        if hooks is not None:
            hooks.__exit__(None, None, None)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return {
        "precision": precision,
        "recompute": recompute,
        "allocator": active(),
        "saved_mib": sum(saved.values()) / 2**20,
        "before_mib": before,
        "peak_mib": rss_mib()[1],
        "step_s": times,
        "loss": float(loss),
        "passage_tokens": int(d_in["attention_mask"].sum()),
        "passage_shape": list(d_in["input_ids"].shape),
    }


def run_child(args, config: tuple[str, str, str], out: Path) -> dict:
    precision, recompute, allocator = config
    name = f"{precision}.{recompute}.{allocator}"
    result_file = out / f"{name}.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for key in ("LD_PRELOAD", "MALLOC_CONF"):
        env.pop(key, None)
    if allocator == "jemalloc":
        from dr.allocator import find_jemalloc, jemalloc_environ

        library = find_jemalloc()
        if library is None:
            raise SystemExit(
                "bench_memory.py: no jemalloc library (scripts/setup.sh unpacks one into the venv); use --allocators "
                "system"
            )
        env = jemalloc_environ(library, env)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        *sys.argv[1:],
        "--only",
        f"{precision},{recompute}",
        "--result",
        str(result_file),
    ]
    print(f"[{time.strftime('%H:%M:%S')}] {name}", flush=True)
    with open(out / f"{name}.log", "w") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    if done.returncode or not result_file.is_file():
        raise SystemExit(f"bench_memory.py: {name} failed ({done.returncode}); see {out / (name + '.log')}")
    return json.loads(result_file.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--recompute", nargs="+", default=RECOMPUTE, choices=RECOMPUTE)
    parser.add_argument("--allocators", nargs="+", default=["system", "jemalloc"], choices=["system", "jemalloc"])
    parser.add_argument("--steps", type=int, default=4, help="steps per configuration; the first is the warm-up")
    parser.add_argument("--batch-size", type=int, default=32, help="queries per step (2 passages each)")
    parser.add_argument("--query-length", type=int, default=64)
    parser.add_argument("--passage-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/memory")
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # seconds-long end-to-end check
    parser.add_argument("--only", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2: the first step is the warm-up")
    if args.smoke:
        args.steps, args.batch_size, args.query_length, args.passage_length = 2, 2, 16, 32
    if args.only:
        precision, recompute = args.only.split(",")
        Path(args.result).write_text(json.dumps(run_one(args, precision, recompute), indent=2) + "\n")
        return
    out = Path(args.out) / ("smoke" if args.smoke else "")
    out.mkdir(parents=True, exist_ok=True)
    info = machine_info(args.threads)
    print(format_machine(info))
    configs = [(p, r, a) for p in args.precisions for a in args.allocators for r in args.recompute]
    results = [run_child(args, config, out) for config in configs]
    shape = results[0]["passage_shape"]
    title = (
        f"One training step of all-MiniLM-L6-v2: {args.batch_size} queries (max {args.query_length} tokens) and "
        f"{2 * args.batch_size} passages padded to {shape[1]} tokens ({results[0]['passage_tokens']} real), InfoNCE, "
        f"backward, AdamW; attention dropout 0; {args.threads} threads; median step over steps 2-{args.steps}"
    )
    head = (
        f"{'precision':<10}{'malloc':<10}{'recompute':<12}{'saved MiB':>10}{'before MiB':>11}{'peak MiB':>10}"
        f"{'s/step':>8}{'vs none':>9}"
    )
    lines = [title, format_machine(info), head]
    base = {}
    for r in results:
        step = statistics.median(r["step_s"][1:])
        key = (r["precision"], r["allocator"])
        if r["recompute"] == "none":
            base[key] = step
        ratio = f"{step / base[key]:>8.2f}x" if key in base else f"{'-':>9}"
        lines.append(
            f"{r['precision']:<10}{r['allocator']:<10}{r['recompute']:<12}{r['saved_mib']:>10.0f}{r['before_mib']:>11.0f}"
            f"{r['peak_mib']:>10.0f}{step:>8.2f}{ratio}"
        )
    table = "\n".join(lines)
    print("\n" + table)
    write_results(out, "memory", table, {"settings": vars(args), "machine": info, "results": results})


if __name__ == "__main__":
    main()
