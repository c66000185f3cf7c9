"""Encoding speed: dr's encoders against ``SentenceTransformer.encode`` on the same work.

Same model (the packaged all-MiniLM-L6-v2), same passages (the first N SciFact abstracts, as
``"title text"`` like :func:`dr.data.passage_texts`), same max length (ST's ``max_seq_length`` is
set to it), same batch size, fp32, same torch thread count, one process. Arms:

- ``st``: ``SentenceTransformer.encode``, normalised as the model's own modules say (its
  ``Normalize`` module; no extra ``normalize_embeddings``);
- ``dr-torch``: :meth:`dr.models.BiEncoder.encode_passages` (fp32 products through oneDNN on CPU,
  :mod:`dr.models.cpu_linear`, as dr runs by default);
- ``dr-torch-aten``: the same with PyTorch's own linear kernel (``DR_CPU_LINEAR=aten``);
- ``dr-onnx``, ``dr-onnx-int8``: ``dr.models.load_encoder(..., backend="onnx" | "onnx-int8")``
  (skipped with a note where that function or its dependencies are missing).

Every arm encodes one small batch as a warm-up, then the N passages ``--repeats`` times; repeats
alternate the arms, so a slow spell of the machine hits them all. Reported per arm: the median
passages/s, the speed-up against ``st``, the one-off set-up time (for the ONNX arms the export and
quantisation inside ``load_encoder``, timed apart from the throughput; only a load time where it
reuses an export cached on disk), and the largest absolute
difference of the embeddings from ``dr-torch`` with their mean cosine to it (``st`` against
``dr-torch`` checks that the two compute the same thing).

``--effect`` also evaluates each arm on the full SciFact test split (5,183 abstracts, 300
queries; queries at ``--query-length`` tokens, exact inner-product search, top 100) and reports
nDCG@10 and its difference to ``dr-torch``. That takes about 10 minutes per arm on a 2-core CPU,
so it is opt-in and cached per arm in ``--out`` (delete ``effect.<arm>.*.json`` to redo one).

The table, the machine (CPU model and flags, library versions, threads) and the raw timings are
printed and written to ``--out`` as ``encode.txt`` / ``encode.json``.

    python scripts/bench_encode.py                    # N=1000, 256 tokens, batch 64, 2 threads, 3 repeats
    python scripts/bench_encode.py --effect           # + SciFact test nDCG@10 per arm (slow, cached)
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

MODEL = "all-MiniLM-L6-v2"
ARMS = ["st", "dr-torch", "dr-torch-aten", "dr-onnx", "dr-onnx-int8"]
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")


# ---------------------------------------------------------------------------------------- machine
def machine_info(threads: int) -> dict:
    """CPU model and the flags that decide which kernels run, library versions and thread count."""
    import torch
    import transformers

    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        model = platform.processor() or model
    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    for name in ("sentence_transformers", "onnxruntime", "pytorch_lightning"):
        try:
            versions[name.replace("_", "-")] = __import__(name).__version__
        except ImportError:
            pass
    return {
        "cpu": model,
        "cpu_flags": {flag: flag in flags for flag in CPU_FLAGS},
        "logical_cpus": _cpu_count(),
        "versions": versions,
        "torch_threads": threads,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)


def format_machine(info: dict) -> str:
    flags = " ".join(f"{f}{'+' if on else '-'}" for f, on in info["cpu_flags"].items())
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    return (
        f"CPU: {info['cpu']} ({info['logical_cpus']} logical CPUs; {flags})\n{versions}; torch threads "
        f"{info['torch_threads']}"
    )


def write_results(out: Path, name: str, table: str, payload: dict) -> None:
    """``<name>.txt`` (the printed table) and ``<name>.json`` (settings, machine, raw timings)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.txt").write_text(table + "\n")
    (out / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwritten: {out / (name + '.txt')}, {out / (name + '.json')}")


# ---------------------------------------------------------------------------------------- arms
class Arm:
    """One way of encoding: ``passages(texts)`` and ``queries(texts)`` return float32 ``[N, dim]``;
    ``setup_s`` is the one-off cost of building it (loading; for ONNX also export and quantisation)."""

    def __init__(self, name: str, passages, queries, setup_s: float, note: str = ""):
        self.name, self.passages, self.queries, self.setup_s, self.note = name, passages, queries, setup_s, note


def st_arm(model_dir: str, passage_length: int, query_length: int, batch_size: int) -> Arm:
    from sentence_transformers import SentenceTransformer

    t0 = time.perf_counter()
    model = SentenceTransformer(model_dir, device="cpu")
    setup = time.perf_counter() - t0
    normalizes = any(type(module).__name__ == "Normalize" for module in model)

    def encode(texts, length):
        model.max_seq_length = length
        return model.encode(list(texts), batch_size=batch_size, show_progress_bar=False, convert_to_numpy=True).astype(
            np.float32
        )

    note = f"Normalize module: {'yes' if normalizes else 'no'}"
    return Arm("st", lambda t: encode(t, passage_length), lambda t: encode(t, query_length), setup, note)


def dr_torch_arm(passage_length: int, query_length: int, batch_size: int, cpu_linear: str = "onednn") -> Arm:
    from dr.models import BiEncoder

    t0 = time.perf_counter()
    encoder = BiEncoder.load(
        MODEL, {"passage_max_length": passage_length, "query_max_length": query_length}, device="cpu"
    )
    layers = encoder.set_cpu_linear(cpu_linear)
    setup = time.perf_counter() - t0
    note = f"pooling {encoder.pooling}, normalize {encoder.normalize}, linear layers: {cpu_linear} ({layers} set)"
    return Arm(
        "dr-torch" if cpu_linear == "onednn" else "dr-torch-aten",
        lambda t: encoder.encode_passages(t, batch_size=batch_size, show_progress=False),
        lambda t: encoder.encode_queries(t, batch_size=batch_size, show_progress=False),
        setup,
        note,
    )


def onnx_arm(name: str, passage_length: int, query_length: int, batch_size: int, threads: int) -> Arm | str:
    """The ONNX arm, or the reason it cannot run (``load_encoder`` or its dependencies missing)."""
    try:
        from dr.models import load_encoder
    except ImportError as e:
        return f"dr.models.load_encoder is not available ({e})"
    backend = name.removeprefix("dr-")
    kwargs = {}
    accepted = inspect.signature(load_encoder).parameters
    for key in ("num_threads", "threads", "intra_op_num_threads"):
        if key in accepted:
            kwargs[key] = threads  # the same thread count as torch, where load_encoder takes one
            break
    t0 = time.perf_counter()
    try:
        encoder = load_encoder(
            MODEL, {"passage_max_length": passage_length, "query_max_length": query_length}, backend=backend, **kwargs
        )
    except ImportError as e:
        return f"load_encoder(backend={backend!r}) needs a missing package ({e})"
    setup = time.perf_counter() - t0
    queries = getattr(encoder, "encode_queries", None)
    note = "" if kwargs else "threads: onnxruntime's default"
    return Arm(
        name,
        lambda t: encoder.encode_passages(t, batch_size=batch_size, show_progress=False),
        (lambda t: queries(t, batch_size=batch_size, show_progress=False)) if queries else None,
        setup,
        note,
    )


# ---------------------------------------------------------------------------------------- measures
def deviation(emb: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Largest absolute element difference and mean row cosine between two ``[N, dim]`` arrays."""
    a = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    b = reference / np.maximum(np.linalg.norm(reference, axis=1, keepdims=True), 1e-12)
    return float(np.abs(emb - reference).max()), float((a * b).sum(1).mean())


def effect(arm: Arm, data: dict[str, str], cache: Path, settings: dict) -> dict:
    """nDCG@10 / R@100 of an arm on a test split (exact search, top 100); cached in ``cache``."""
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached.get("settings") == settings:
            print(f"  {arm.name}: test figures reused from {cache}")
            return cached
    from dr.data import passage_texts, read_corpus, read_qrels, read_queries
    from dr.evaluation import evaluate_run
    from dr.retrieval import DenseIndex

    corpus = read_corpus(data["corpus"])
    queries, qrels = read_queries(data["test_queries"]), read_qrels(data["test_qrels"])
    qids = [q for q in queries if q in qrels]
    print(
        f"[{time.strftime('%H:%M:%S')}] {arm.name}: encoding {len(corpus)} passages and {len(qids)} queries", flush=True
    )
    t0 = time.perf_counter()
    emb = arm.passages(passage_texts(corpus))
    q_emb = arm.queries([queries[q] for q in qids])
    run = DenseIndex.build(emb, list(corpus["docid"]), use_gpu=False).search_run(qids, q_emb, k=100)
    result = {
        "settings": settings,
        "seconds": time.perf_counter() - t0,
        **evaluate_run(run, qrels, ["nDCG@10", "R@100"]),
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(result, indent=2) + "\n")
    return result


def speed_table(rows: dict[str, dict], n: int, effect_rows: dict[str, dict]) -> str:
    head = (
        f"{'arm':<14}{'passages/s':>12}{'range':>17}{'vs st':>8}{'setup s':>9}{'max|Δ| vs torch':>17}"
        f"{'cos vs torch':>14}"
    )
    if effect_rows:
        head += f"{'nDCG@10':>9}{'Δ torch':>9}"
    lines = [head]
    base = rows.get("st", {}).get("passages_per_s")
    torch_ndcg = effect_rows.get("dr-torch", {}).get("nDCG@10")
    for name, r in rows.items():
        rates = [n / t for t in r["seconds"]]
        speedup = f"{r['passages_per_s'] / base:>7.2f}x" if base else f"{'-':>8}"
        line = (
            f"{name:<14}{r['passages_per_s']:>12.1f}{min(rates):>8.1f}-{max(rates):<8.1f}{speedup}{r['setup_s']:>9.1f}"
            f"{r['max_abs_dev']:>17.2e}{r['mean_cos']:>14.6f}"
        )
        if effect_rows:
            e = effect_rows.get(name, {})
            ndcg = e.get("nDCG@10")
            line += f"{ndcg:>9.4f}" if ndcg is not None else f"{'-':>9}"
            line += f"{ndcg - torch_ndcg:>+9.4f}" if ndcg is not None and torch_ndcg is not None else f"{'-':>9}"
        lines.append(line)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, default=1000, help="the first N SciFact corpus passages")
    parser.add_argument("--max-length", type=int, default=256, help="passage max length in tokens")
    parser.add_argument("--query-length", type=int, default=64, help="query max length (--effect only)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for every arm")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--arms", nargs="+", default=ARMS, choices=ARMS)
    parser.add_argument(
        "--effect", action="store_true", help="also nDCG@10 on the full SciFact test split (slow, cached)"
    )
    parser.add_argument("--out", default="bench/encode")
    parser.add_argument(
        "--allocator",
        default="system",
        choices=("system", "jemalloc"),
        help="malloc of the process (all arms share it): the system's, or jemalloc preloaded as dr's "
        "commands do (dr/allocator.py)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help=argparse.SUPPRESS
    )  # seconds-long end-to-end check on tiny data
    args = parser.parse_args()
    from dr import allocator

    if args.allocator == "jemalloc":
        os.environ["DR_MALLOC"] = "jemalloc"
        allocator.reexec_with_jemalloc("bench_encode.py")  # returns once jemalloc is loaded
    if allocator.active() != args.allocator:
        parser.error(
            f"--allocator {args.allocator}: this process runs on {allocator.active()} (LD_PRELOAD from the "
            f"environment?)"
        )
    if "dr-torch" not in args.arms:
        args.arms = ["dr-torch", *args.arms]  # the reference of the deviations
    out = Path(args.out)
    data = {"corpus": "scifact:corpus", "test_queries": "scifact:test_queries", "test_qrels": "scifact:test_qrels"}
    if args.smoke:
        from dr.data import write_subset

        args.passages, args.max_length, args.query_length, args.batch_size, args.repeats = 24, 32, 16, 8, 1
        out = out / "smoke"
        data = write_subset(out / "slice", n_train=2, n_test=4, n_extra=30)

    import torch
    import transformers

    torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    from dr.data import passage_texts, read_corpus
    from dr.models import resolve_model_name

    info = machine_info(torch.get_num_threads())
    print(format_machine(info))
    corpus = read_corpus(data["corpus"])
    texts = passage_texts(corpus, range(min(args.passages, len(corpus))))
    n = len(texts)
    print(
        f"{n} passages from {data['corpus']}, max length {args.max_length}, batch {args.batch_size}, {args.repeats} "
        f"repeats"
    )

    arms: dict[str, Arm] = {}
    skipped: dict[str, str] = {}
    for name in ARMS:
        if name not in args.arms:
            continue
        if name == "st":
            arm = st_arm(resolve_model_name(MODEL), args.max_length, args.query_length, args.batch_size)
        elif name in ("dr-torch", "dr-torch-aten"):
            arm = dr_torch_arm(
                args.max_length, args.query_length, args.batch_size, "onednn" if name == "dr-torch" else "aten"
            )
        else:
            arm = onnx_arm(name, args.max_length, args.query_length, args.batch_size, args.threads)
        if isinstance(arm, str):
            skipped[name] = arm
            print(f"skipping {name}: {arm}")
            continue
        arms[name] = arm
        print(f"{name}: set-up {arm.setup_s:.1f} s" + (f" ({arm.note})" if arm.note else ""))
        if torch.get_num_threads() != args.threads:  # a backend changed torch's pool: put it back
            print(f"  torch threads were changed to {torch.get_num_threads()} by {name}; reset to {args.threads}")
            torch.set_num_threads(args.threads)

    for arm in arms.values():  # warm-up: one small batch each
        arm.passages(texts[: args.batch_size])
    seconds: dict[str, list[float]] = {name: [] for name in arms}
    embeddings: dict[str, np.ndarray] = {}
    for repeat in range(args.repeats):
        for name, arm in arms.items():
            t0 = time.perf_counter()
            emb = arm.passages(texts)
            seconds[name].append(time.perf_counter() - t0)
            embeddings.setdefault(name, emb)
            print(
                f"[{time.strftime('%H:%M:%S')}] repeat {repeat + 1}/{args.repeats} {name}: "
                f"{n / seconds[name][-1]:.1f} passages/s",
                flush=True,
            )

    rows = {}
    for name, arm in arms.items():
        max_dev, cos = deviation(embeddings[name], embeddings["dr-torch"])
        rows[name] = {
            "passages_per_s": n / statistics.median(seconds[name]),
            "seconds": seconds[name],
            "setup_s": arm.setup_s,
            "max_abs_dev": max_dev,
            "mean_cos": cos,
            "note": arm.note,
        }

    effect_rows: dict[str, dict] = {}
    if args.effect:
        settings = {
            "corpus": data["corpus"],
            "passage_length": args.max_length,
            "query_length": args.query_length,
            "batch_size": args.batch_size,
        }
        tag = "smoke" if args.smoke else "scifact"
        for name, arm in arms.items():
            if arm.queries is None:
                print(f"  {name}: no encode_queries; left out of --effect")
                continue
            effect_rows[name] = effect(arm, data, out / f"effect.{name}.{tag}.L{args.max_length}.json", settings)

    title = (
        f"Encoding {n} SciFact passages, max length {args.max_length}, batch {args.batch_size}, fp32, "
        f"{args.threads} threads, malloc: {args.allocator}; median of {args.repeats} (range: min-max passages/s)"
    )
    table = "\n".join(
        [title, format_machine(info), speed_table(rows, n, effect_rows)]
        + [f"skipped {name}: {why}" for name, why in skipped.items()]
    )
    if effect_rows:
        table += "\nnDCG@10 on the SciFact test split" + (
            " (smoke slice)" if args.smoke else " (5,183 passages, 300 queries)"
        )
    print("\n" + table)
    payload = {
        "settings": {k: v for k, v in vars(args).items()},
        "passages": n,
        "machine": info,
        "arms": rows,
        "skipped": skipped,
        "effect": effect_rows,
    }
    write_results(out, "encode", table, payload)


if __name__ == "__main__":
    main()
