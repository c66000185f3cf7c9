"""Training speed: ``dr-train`` against the sentence-transformers trainer on the same work.

Both train the packaged all-MiniLM-L6-v2 on the same batches of SciFact train triples (query, one
positive, one BM25 hard negative: one negative per query, drawn once from BM25 ranks 10-50 with
``--seed``), with the same loss (InfoNCE at temperature 0.05 over in-batch and hard negatives, which
is sentence-transformers' ``MultipleNegativesRankingLoss(scale=20)``), the same optimizer
(``torch.optim.AdamW``, lr 3e-5, weight decay 0.01, constant after 10 linear warm-up steps,
gradient norm clipped at 1.0), the same lengths (queries 64 tokens, passages 256), batch size,
fp32, seed and torch thread count.

- ``dr``: :func:`dr.training.train` in-process on a composed ``conf/train.yaml`` (no validation,
  test evaluation, checkpoints, logger or export), with a Lightning callback timing the steps.
- ``st``: ``SentenceTransformerTrainer`` with ``SentenceTransformerTrainingArguments`` (``max_steps``,
  ``per_device_train_batch_size``, ``dataloader_drop_last``, no evaluation or saving,
  ``report_to="none"``, ``use_cpu=True``, ``optim="adamw_torch"``), with a trainer callback
  timing the steps. Its dataset is the triples in the order dr's batch sampler visits them, read
  sequentially, so both train on identical batches.

A step's time is the wall time between the ends of two consecutive optimizer steps, so it
includes fetching and tokenising the batch, forward, backward, clipping and the optimizer; the
first step is the warm-up and is left out. Reported: median seconds per step, examples/s, the
dr/st throughput ratio, the training loss after the last step (a sanity check: same batches and
loss, so similar values), and the peak resident memory at the end of training. Each system runs in
its own process (the script re-invokes itself with ``--only st|dr``), one after the other, so the
memory figures are not mixed.

Remaining differences: sentence-transformers' trainer exempts biases and LayerNorm weights from
weight decay (dr decays all trainable weights); dr leaves out of a query's denominator the other
positives of that query that appear in the batch (sentence-transformers counts them as negatives);
sentence-transformers has one ``max_seq_length``, so the rare query above 64 tokens is cut to 64
tokens in its dataset (the count is printed).

``--effect`` also evaluates both trained models on the SciFact test split with the same code
(dr's test-split evaluation, exact search, top 100) and reports nDCG@10 and R@100 (slow: about
10 minutes per system on a 2-core CPU).

The table, the machine (CPU model and flags, library versions, threads) and the raw per-step times
are printed and written to ``--out`` as ``train.txt`` / ``train.json``.

    python scripts/bench_train.py                     # --steps 6 --batch-size 32 --threads 2
    python scripts/bench_train.py --steps 20 --effect
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_encode import format_machine, machine_info, write_results  # noqa: E402

MODEL = "all-MiniLM-L6-v2"
SYSTEMS = ["st", "dr"]


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def step_seconds(step_ends: list[float]) -> list[float]:
    """Per-step wall times from the end times of consecutive steps; the first step (warm-up) has none."""
    return [b - a for a, b in zip(step_ends, step_ends[1:])]


# ---------------------------------------------------------------------------------------- data
def prepare_data(args, out: Path) -> dict[str, str]:
    """The training files both systems read, created once in ``out/data`` (paths in ``data.json``):

    - ``queries.train.tsv``: the train queries with a positive in the corpus and a BM25 negative;
    - ``negatives.seed<S>.jsonl``: one BM25 negative per query (ranks 10-50, never a positive), seeded;
    - ``triples.<steps>x<batch>.seed<S>.jsonl``: (query, positive, negative) texts of the first
      ``steps`` batches in the order dr's batch sampler draws them (its data module, epoch after
      epoch), for sentence-transformers.
    """
    folder = out / "data"
    files = {
        "corpus": "scifact:corpus",
        "train_queries": "scifact:train_queries",
        "train_qrels": "scifact:train_qrels",
        "test_queries": "scifact:test_queries",
        "test_qrels": "scifact:test_qrels",
    }
    if args.smoke:
        from dr.data import write_subset

        files = write_subset(folder / "slice", n_train=4 * args.batch_size, n_test=5, n_extra=100)
    data = {
        **files,
        "queries": str(folder / "queries.train.tsv"),
        "negatives": str(folder / f"negatives.seed{args.seed}.jsonl"),
        "triples": str(folder / f"triples.{args.steps}x{args.batch_size}.seed{args.seed}.jsonl"),
    }
    if not Path(data["negatives"]).is_file():
        write_negatives_file(data, args.seed)
    if not Path(data["triples"]).is_file():
        write_triples(data, args)
    (folder / "data.json").write_text(json.dumps(data, indent=2) + "\n")
    return data


def write_negatives_file(data: dict[str, str], seed: int) -> None:
    """BM25 ranks 10-50 as in ``scripts/bench_common.py``; one of them per query, drawn with ``seed``."""
    from dr.data import read_corpus, read_positives, read_qrels, read_queries, write_negatives
    from dr.retrieval import BM25Negatives

    corpus = read_corpus(data["corpus"])
    queries, qrels = read_queries(data["train_queries"]), read_qrels(data["train_qrels"])
    positives = read_positives(qrels, 1, known=set(corpus["docid"]))
    qids = [q for q in queries if positives.get(q)]
    print(f"[{time.strftime('%H:%M:%S')}] BM25 negatives (ranks 10-50) for {len(qids)} train queries", flush=True)
    records = BM25Negatives(10, 50)(corpus, qids, [queries[q] for q in qids], positives)
    rng = np.random.default_rng(seed)
    for record in records:
        if record.negatives:
            i = int(rng.integers(len(record.negatives)))
            record.negatives, record.negative_scores = [record.negatives[i]], [record.negative_scores[i]]
    kept = [r for r in records if r.negatives]
    Path(data["queries"]).parent.mkdir(parents=True, exist_ok=True)
    Path(data["queries"]).write_text("".join(f"{r.qid}\t{queries[r.qid]}\n" for r in kept))
    write_negatives(data["negatives"], kept)


def write_triples(data: dict[str, str], args) -> None:
    """dr's own data module and batch sampler give the batches; each becomes ``batch_size`` triples."""
    from dr.training import RetrievalDataModule

    datamodule = RetrievalDataModule(
        corpus=data["corpus"],
        train_queries=data["queries"],
        train_qrels=data["train_qrels"],
        negatives=data["negatives"],
        num_negatives=1,
        batch_size=args.batch_size,
        seed=args.seed,
        val_fraction=0,
    )
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    rows: list[dict] = []
    epoch = 0
    while len(rows) < args.steps * args.batch_size:
        loader.batch_sampler.set_epoch(epoch)
        for batch in loader:
            b = len(batch["queries"])
            if batch["neg_index"].shape != (b, 1) or bool((batch["neg_index"] < 0).any()):
                raise RuntimeError(
                    f"expected one negative per query, got neg_index of shape {tuple(batch['neg_index'].shape)}"
                )
            # a passage two queries share is in the batch once (datamodule.collate_train): look each up
            passages, target, negative = batch["passages"], batch["target"].tolist(), batch["neg_index"][:, 0].tolist()
            rows += [
                {"anchor": batch["queries"][i], "positive": passages[target[i]], "negative": passages[negative[i]]}
                for i in range(b)
            ]
            if len(rows) >= args.steps * args.batch_size:
                break
        epoch += 1
    with open(data["triples"], "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


# ---------------------------------------------------------------------------------------- dr
def step_clock(out_file: str):
    """A Lightning callback recording the end time and loss of every training step; when training
    ends it writes them to ``out_file`` (JSON) with the torch thread count and the peak resident memory.
    A factory, so that Lightning is imported only in the dr process."""
    import pytorch_lightning as pl
    import torch

    class StepClock(pl.Callback):
        def __init__(self):
            self.ends, self.losses, self.threads = [], [], None

        def on_train_start(self, trainer, pl_module):
            self.threads = torch.get_num_threads()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.ends.append(time.perf_counter())
            self.losses.append(float(outputs["loss"] if isinstance(outputs, dict) else outputs))

        def on_train_end(self, trainer, pl_module):
            record = {
                "step_ends": self.ends,
                "losses": self.losses,
                "threads": self.threads,
                "peak_rss_mib": peak_rss_mib(),
            }
            Path(out_file).write_text(json.dumps(record) + "\n")

    return StepClock()


def dr_config(args, data: dict[str, str], run_dir: Path, extra: list[str] = ()):
    """``conf/train.yaml`` composed with the benchmark's settings (as ``dr-train`` would with these
    overrides), then ``extra`` (a ``--variant``'s overrides)."""
    from hydra import compose, initialize_config_dir

    from dr.cli import config_dir

    overrides = [
        f"paths.output_dir={run_dir}",
        f"seed={args.seed}",
        f"encoder.name_or_path={MODEL}",
        f"encoder.query_max_length={args.query_length}",
        f"encoder.passage_max_length={args.passage_length}",
        f"data.corpus={data['corpus']}",
        f"data.train_queries={data['queries']}",
        f"data.train_qrels={data['train_qrels']}",
        f"data.negatives={data['negatives']}",
        "data.num_negatives=1",
        f"data.batch_size={args.batch_size}",
        "data.val_fraction=0",
        "loss=infonce",
        f"loss.temperature={args.temperature}",
        f"optimizer.lr={args.lr}",
        f"optimizer.weight_decay={args.weight_decay}",
        "scheduler=constant",
        f"scheduler.num_warmup_steps={args.warmup}",
        "trainer.accelerator=cpu",
        "trainer.precision=32-true",
        f"trainer.max_steps={args.steps}",
        "trainer.gradient_clip_val=1.0",
        "trainer.enable_progress_bar=false",
        "+trainer.enable_checkpointing=false",
        "+trainer.enable_model_summary=false",
        "logger=none",
        "~callbacks.model_checkpoint",
        "~callbacks.lr_monitor",
        "+callbacks.step_clock._target_=__main__.step_clock",
        f"+callbacks.step_clock.out_file={run_dir / 'steps.json'}",
        "export.enabled=false",
    ]
    if args.effect:
        overrides += [
            "test=scifact",
            f"test.corpus={data['corpus']}",
            f"test.queries={data['test_queries']}",
            f"test.qrels={data['test_qrels']}",
            "test.before=false",
            "test.bm25=false",
            "test.after=true",
            "test.bf16=false",
            "test.cache_dir=null",
            "test.batch_size=64",
            "test.measures=[nDCG@10,R@100]",
            "test.k=100",
        ]
    else:
        overrides.append("test=none")
    overrides += list(extra)
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=overrides)


def run_dr(args, data: dict[str, str], run_dir: Path, extra: list[str] = ()) -> dict:
    from dr.training import train

    cfg = dr_config(args, data, run_dir, extra)
    metrics = train(cfg)
    record = json.loads((run_dir / "steps.json").read_text())
    result = {
        "step_ends": record["step_ends"],
        "losses": record["losses"],
        "threads": record["threads"],
        "peak_rss_mib": record["peak_rss_mib"],
    }
    if args.effect:
        result["test"] = {m: metrics[f"trained/{m}"] for m in ("nDCG@10", "R@100")}
    return result


# ---------------------------------------------------------------------------------------- sentence-transformers
def sequential_batches(dataset, batch_size, drop_last, valid_label_columns=None, generator=None, seed=0):
    """A ``batch_sampler`` for the ST trainer: the dataset's rows in order (they are already in dr's batch order)."""
    from torch.utils.data import SequentialSampler

    try:
        from sentence_transformers import DefaultBatchSampler  # 6.x
    except ImportError:
        from sentence_transformers.sampler import DefaultBatchSampler  # 3.x-5.x

    return DefaultBatchSampler(
        SequentialSampler(dataset),
        batch_size=batch_size,
        drop_last=drop_last,
        valid_label_columns=valid_label_columns,
        generator=generator,
        seed=seed,
    )


def cut_queries(texts: list[str], tokenizer, max_length: int) -> tuple[list[str], int]:
    """Texts cut at the character where their ``max_length``-th token (special tokens included) ends."""
    cut, n = [], 0
    for text in texts:
        enc = tokenizer(text, truncation=True, max_length=max_length, return_offsets_mapping=True)
        if len(tokenizer(text)["input_ids"]) > max_length:
            end = max(e for _, e in enc["offset_mapping"])
            text, n = text[:end], n + 1
        cut.append(text)
    return cut, n


def run_st(args, data: dict[str, str], run_dir: Path) -> dict:
    import datasets
    import torch
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from transformers import TrainerCallback

    try:
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss  # 6.x
    except ImportError:
        from sentence_transformers.losses import MultipleNegativesRankingLoss  # 3.x-5.x

    from dr.models import resolve_model_name

    class StepClock(TrainerCallback):
        def __init__(self):
            self.ends, self.threads, self.peak = [], None, None

        def on_train_begin(self, args, state, control, **kwargs):
            self.threads = torch.get_num_threads()

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

        def on_train_end(self, args, state, control, **kwargs):
            self.peak = peak_rss_mib()

    rows = [json.loads(line) for line in open(data["triples"])]
    model = SentenceTransformer(resolve_model_name(MODEL), device="cpu")
    model.max_seq_length = args.passage_length
    anchors, n_cut = cut_queries([r["anchor"] for r in rows], model.tokenizer, args.query_length)
    dataset = datasets.Dataset.from_dict(
        {"anchor": anchors, "positive": [r["positive"] for r in rows], "negative": [r["negative"] for r in rows]}
    )
    training_args = SentenceTransformerTrainingArguments(
        output_dir=str(run_dir),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=args.warmup,
        optim="adamw_torch",
        max_grad_norm=1.0,
        seed=args.seed,
        batch_sampler=sequential_batches,
        dataloader_drop_last=True,
        dataloader_num_workers=0,
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="steps",
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    clock = StepClock()
    loss = MultipleNegativesRankingLoss(model, scale=1.0 / args.temperature)
    trainer = SentenceTransformerTrainer(
        model=model, args=training_args, train_dataset=dataset, loss=loss, callbacks=[clock]
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    result = {
        "step_ends": clock.ends,
        "losses": losses,
        "threads": clock.threads,
        "peak_rss_mib": clock.peak,
        "queries_cut": n_cut,
    }
    if args.effect:
        result["test"] = evaluate_saved(model, args, data, run_dir)
    return result


def evaluate_saved(model, args, data: dict[str, str], run_dir: Path) -> dict:
    """The trained ST model through the evaluation dr-train runs on its own model (same config, same code)."""
    from dr.models import BiEncoder
    from dr.evaluation import evaluate_run
    from dr.training import TestSplit

    folder = run_dir / "model"
    model.save(str(folder))
    encoder = BiEncoder.from_pretrained(
        str(folder), query_max_length=args.query_length, passage_max_length=args.passage_length
    ).eval()
    test = TestSplit(dr_config(args, data, run_dir).test)
    return evaluate_run(test.dense(encoder), test.qrels, test.measures)


# ---------------------------------------------------------------------------------------- FLOPs
def step_token_lengths(data: dict[str, str], args) -> list[tuple[list[int], list[int]]]:
    """Per step, the token counts (special tokens included, cut at the lengths) of its queries and
    of its passages (positives then negatives), from the triples both systems train on."""
    from transformers import AutoTokenizer

    from dr.models import resolve_model_name

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_name(MODEL))
    rows = [json.loads(line) for line in open(data["triples"])]

    def lengths(texts: list[str], max_length: int) -> list[int]:
        return [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]

    steps = []
    for i in range(args.steps):
        batch = rows[i * args.batch_size : (i + 1) * args.batch_size]
        steps.append(
            (
                lengths([r["anchor"] for r in batch], args.query_length),
                lengths([r["positive"] for r in batch] + [r["negative"] for r in batch], args.passage_length),
            )
        )
    return steps


def encoder_flops(lengths: list[int], layers: int, hidden: int, intermediate: int) -> dict[str, float]:
    """Forward FLOPs of a BERT encoder over sequences of these lengths (a multiply-add is 2 FLOPs),
    by part: per layer and token, the Q, K, V and output projections 8·H², the feed-forward block
    4·H·I; per layer and sequence of n tokens, the attention scores and weighted sum 4·n²·H.
    Embeddings, LayerNorms, softmax and pooling are left out (under 1%). No padding is counted:
    these are the model's FLOPs, whatever a system pads."""
    tokens = float(sum(lengths))
    squares = float(sum(n * n for n in lengths))
    return {
        "qkv": layers * 6 * hidden * hidden * tokens,
        "out": layers * 2 * hidden * hidden * tokens,
        "ffn_up": layers * 2 * hidden * intermediate * tokens,
        "ffn_down": layers * 2 * hidden * intermediate * tokens,
        "attention": layers * 4 * hidden * squares,
    }


def step_flops(
    steps, layers: int, hidden: int, intermediate: int, recompute: dict[str, object]
) -> list[dict[str, float]]:
    """Per step: ``model`` = forward + backward (3× the forward: the backward computes the gradients
    of both the inputs and the weights of every product), ``executed`` = that plus what the
    recomputation runs again in the backward pass: ``ffn_recompute=full`` the up-projection,
    ``attention_recompute`` the Q/K/V projections and the attention kernel, ``gradient_checkpointing``
    a whole forward."""
    out = []
    for query_lengths, passage_lengths in steps:
        queries = encoder_flops(query_lengths, layers, hidden, intermediate)
        passages = encoder_flops(passage_lengths, layers, hidden, intermediate)
        parts = {k: queries[k] + passages[k] for k in queries}
        forward = sum(parts.values())
        extra = 0.0
        if recompute.get("gradient_checkpointing"):
            extra = forward
        else:
            if recompute.get("ffn_recompute") == "full":
                extra += parts["ffn_up"]
            if recompute.get("attention_recompute"):
                extra += parts["qkv"] + parts["attention"]
        out.append({"model": 3 * forward, "executed": 3 * forward + extra})
    return out


def matmul_peak(dtype_name: str, seconds: float = 1.5) -> float:
    """The machine's own matmul rate (GFLOP/s) with this process's torch threads: the best of a
    square 2048 product and all-MiniLM-L6-v2's feed-forward product (16,384 tokens × 384 → 1,536),
    each repeated for ``seconds`` after a warm-up."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    best = 0.0
    for m, k, n in ((2048, 2048, 2048), (16384, 384, 1536)):
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        torch.mm(a, b)
        count, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            torch.mm(a, b)
            count += 1
        best = max(best, 2.0 * m * k * n * count / (time.perf_counter() - t0) / 1e9)
    return best


def flops_rows(results: dict[str, dict], steps, recompute_of: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Per system: median model and executed GFLOP per step and the median achieved GFLOP/s (each
    timed step's FLOPs over its time; steps 2.. as in the speed table)."""
    from transformers import AutoConfig

    from dr.models import resolve_model_name

    config = AutoConfig.from_pretrained(resolve_model_name(MODEL))
    rows = {}
    for name, result in results.items():
        flops = step_flops(
            steps, config.num_hidden_layers, config.hidden_size, config.intermediate_size, recompute_of.get(name, {})
        )
        seconds = step_seconds(result["step_ends"])
        timed = flops[len(flops) - len(seconds) :]
        rows[name] = {
            "model_gflop": statistics.median(f["model"] for f in timed) / 1e9,
            "executed_gflop": statistics.median(f["executed"] for f in timed) / 1e9,
            "model_gflops": statistics.median(f["model"] / s for f, s in zip(timed, seconds)) / 1e9,
            "executed_gflops": statistics.median(f["executed"] / s for f, s in zip(timed, seconds)) / 1e9,
        }
    return rows


def flops_table(rows: dict[str, dict[str, float]], peaks: dict[str, float]) -> str:
    fp32 = peaks.get("fp32") or float("nan")
    lines = [
        f"matmul peak of this machine ({', '.join(f'{k} {v:.0f} GFLOP/s' for k, v in peaks.items())}; "
        f"scripts/bench_train.py matmul_peak)",
        f"{'system':<14}{'GFLOP/step':>12}{'+ recompute':>13}{'GFLOP/s':>10}{'% fp32 peak':>13}"
        f"{'executed GFLOP/s':>18}{'% fp32 peak':>13}",
    ]
    for name, r in rows.items():
        lines.append(
            f"{name:<14}{r['model_gflop']:>12.0f}{r['executed_gflop']:>13.0f}{r['model_gflops']:>10.0f}"
            f"{100 * r['model_gflops'] / fp32:>12.0f}%{r['executed_gflops']:>18.0f}"
            f"{100 * r['executed_gflops'] / fp32:>12.0f}%"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- parent
def run_child(system: str, out: Path, allocator: str = "system") -> dict:
    """``--only system`` in a fresh process (its output in ``out/<system>.log``) with the system's
    malloc or jemalloc preloaded (:mod:`dr.allocator`); returns its result."""
    result_file = out / f"{system}.result.json"
    result_file.unlink(missing_ok=True)
    log = out / f"{system}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:], "--only", system]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if allocator == "jemalloc":
        from dr.allocator import find_jemalloc, jemalloc_environ

        library = find_jemalloc()
        if library is None:
            raise RuntimeError(f"{system}: jemalloc asked for but not found (scripts/setup.sh puts it in the venv)")
        env = jemalloc_environ(library, env)
    print(f"[{time.strftime('%H:%M:%S')}] {system}: {' '.join(cmd[1:])} > {log}", flush=True)
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if proc.returncode or not result_file.is_file():
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise RuntimeError(f"{system} failed ({proc.returncode}); last lines of {log}:\n{tail}")
    return json.loads(result_file.read_text())


def allocator_of(system: str, dr_allocator: str) -> str:
    """The malloc a system's process runs on: ``st`` the system's (as its users run it), ``st-jemalloc``
    jemalloc, dr and its variants ``--allocator`` (``auto``: jemalloc when found, like dr's commands)."""
    if system == "st":
        return "system"
    if system == "st-jemalloc":
        return "jemalloc"
    if dr_allocator == "auto":
        from dr.allocator import find_jemalloc

        return "jemalloc" if find_jemalloc() else "system"
    return dr_allocator


def summarise(result: dict, batch_size: int) -> dict:
    steps = step_seconds(result["step_ends"])
    median = statistics.median(steps) if steps else float("nan")
    return {
        "median_step_s": median,
        "examples_per_s": batch_size / median,
        "step_s": steps,
        "last_loss": result["losses"][-1] if result["losses"] else float("nan"),
    }


def speed_table(rows: dict[str, dict], results: dict[str, dict], effect: bool) -> str:
    head = (
        f"{'system':<14}{'s/step':>9}{'range':>15}{'examples/s':>12}{'vs st':>8}{'last loss':>11}"
        f"{'peak RSS MiB':>14}{'threads':>9}{'malloc':>10}"
    )
    if effect:
        head += f"{'nDCG@10':>9}{'R@100':>8}"
    lines = [head]
    base = rows.get("st", {}).get("examples_per_s")
    for name, r in rows.items():
        steps = r["step_s"] or [float("nan")]
        ratio = f"{r['examples_per_s'] / base:>7.2f}x" if base else f"{'-':>8}"
        line = (
            f"{name:<14}{r['median_step_s']:>9.2f}{min(steps):>7.2f}-{max(steps):<7.2f}{r['examples_per_s']:>12.1f}"
            f"{ratio}"
            f"{r['last_loss']:>11.4f}{results[name]['peak_rss_mib']:>14.0f}{results[name]['threads']:>9}"
            f"{results[name].get('allocator', '?'):>10}"
        )
        if effect:
            test = results[name].get("test", {})
            line += f"{test.get('nDCG@10', float('nan')):>9.4f}{test.get('R@100', float('nan')):>8.4f}"
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per system; the first is the warm-up")
    parser.add_argument("--batch-size", type=int, default=32, help="triples per step")
    parser.add_argument("--query-length", type=int, default=64)
    parser.add_argument("--passage-length", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--warmup", type=int, default=10, help="linear warm-up steps, then a constant learning rate")
    parser.add_argument(
        "--temperature", type=float, default=0.05, help="InfoNCE temperature (ST scale = 1/temperature)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for both systems")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--systems",
        nargs="+",
        default=SYSTEMS,
        choices=SYSTEMS + ["st-jemalloc"],
        help="run in this order (st-jemalloc: the st trainer with jemalloc preloaded)",
    )
    parser.add_argument(
        "--effect", action="store_true", help="also evaluate both trained models on the SciFact test split (slow)"
    )
    parser.add_argument("--out", default="bench/train_speed")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=OVERRIDE[,OVERRIDE...]",
        help="also run dr with these dr-train overrides, as system NAME, e.g. "
        "--variant ckpt=module.gradient_checkpointing=true,module.attention_dropout=0",
    )
    parser.add_argument(
        "--allocator",
        default="auto",
        choices=("auto", "jemalloc", "system"),
        help="malloc of dr's runs (auto: jemalloc when found, as dr's commands do); st runs on the "
        "system's malloc, st-jemalloc on jemalloc",
    )
    parser.add_argument(
        "--only", help=argparse.SUPPRESS
    )  # the child process of one system  # the child process of one system
    parser.add_argument(
        "--smoke", action="store_true", help=argparse.SUPPRESS
    )  # seconds-long end-to-end check on tiny data
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2: the first step is the warm-up")
    variants = {}
    for spec in args.variant:
        name, _, overrides = spec.partition("=")
        if not name or not overrides or name in SYSTEMS:
            parser.error(f"--variant {spec!r}: expected NAME=OVERRIDE[,OVERRIDE...] with a NAME other than {SYSTEMS}")
        variants[name] = overrides.split(",")
    out = Path(args.out).resolve()
    if args.smoke:
        args.steps, args.batch_size, args.query_length, args.passage_length = 3, 4, 16, 32
        out = out / "smoke"
    out.mkdir(parents=True, exist_ok=True)

    import torch

    torch.set_num_threads(args.threads)
    if args.only:
        import transformers

        transformers.utils.logging.disable_progress_bar()
        data = json.loads((out / "data" / "data.json").read_text())  # written by the parent
        if args.only in ("st", "st-jemalloc"):
            result = run_st(args, data, out / f"{args.only}_run")
        else:
            result = run_dr(args, data, out / f"{args.only}_run", variants.get(args.only, []))
        from dr.allocator import active

        result["allocator"] = active()
        (out / f"{args.only}.result.json").write_text(json.dumps(result, indent=2) + "\n")
        return

    info = machine_info(torch.get_num_threads())
    print(format_machine(info))
    data = prepare_data(args, out)
    systems = list(args.systems) + list(variants)
    results = {system: run_child(system, out, allocator_of(system, args.allocator)) for system in systems}
    rows = {system: summarise(results[system], args.batch_size) for system in systems}
    cut = results.get("st", {}).get("queries_cut")
    title = (
        f"Training all-MiniLM-L6-v2 on SciFact train triples{' (smoke slice)' if args.smoke else ''}: {args.steps} "
        f"steps "
        f"of {args.batch_size} (query, positive, BM25 negative), queries {args.query_length} / passages "
        f"{args.passage_length} "
        f"tokens, InfoNCE t={args.temperature}, AdamW lr {args.lr}, fp32, {args.threads} threads; median over steps "
        f"2-{args.steps}"
    )
    recompute_of = {}
    for system in systems:
        if system.startswith("st"):
            recompute_of[system] = {}
        else:
            module = dr_config(args, data, out / f"{system}_run", variants.get(system, [])).module
            recompute_of[system] = {
                k: module.get(k) for k in ("gradient_checkpointing", "ffn_recompute", "attention_recompute")
            }
    peaks = {"fp32": matmul_peak("fp32")}
    from dr.config import bf16_supported

    if bf16_supported():  # native bf16 (AVX512-BF16, AMX): the rate a bf16 step could reach
        peaks["bf16"] = matmul_peak("bf16")
    flops = flops_rows(results, step_token_lengths(data, args), recompute_of)
    table = "\n".join([title, format_machine(info), speed_table(rows, results, args.effect), flops_table(flops, peaks)])
    if cut:
        table += (
            f"\n{cut} of {args.steps * args.batch_size} queries were cut to {args.query_length} tokens for "
            f"sentence-transformers"
        )
    for name, overrides in variants.items():
        table += f"\n{name}: dr with {' '.join(overrides)}"
    if args.effect:
        table += "\nnDCG@10 / R@100 on the SciFact test split" + (
            " (smoke slice)" if args.smoke else " (5,183 passages, 300 queries)"
        )
    print("\n" + table)
    payload = {
        "settings": vars(args),
        "variants": variants,
        "machine": info,
        "systems": rows,
        "flops": flops,
        "matmul_peak_gflops": peaks,
        "raw": results,
        "data": data,
    }
    write_results(out, "train", table, payload)


if __name__ == "__main__":
    main()
