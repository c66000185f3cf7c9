"""``train(cfg)``: the whole training job as a plain function that returns its metrics.

Steps: seed everything; optionally evaluate the untrained encoder and BM25 on the test split;
fit with Lightning (checkpoints, CSV logs, resume with ``ckpt_path``; with ``refresh.enabled``,
the negatives are re-mined during training by :class:`dr.refresh.IndexRefresh`); evaluate the trained
encoder on the test split; export it; write ``metrics.json`` and the run files into the run
directory and print a comparison table.
"""

from __future__ import annotations

import logging
import os
import resource
import sys
import threading
import time
from pathlib import Path

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from dr import allocator
from dr.data import passage_texts, read_corpus, read_qrels, read_queries, write_run
from dr.data.io import atomic_write
from dr.plots import plot_training_curves
from dr.evaluation import evaluate_run, format_table, write_metrics
from dr.export import export
from dr.export.export import truncated
from dr.retrieval import BM25, build_index, search_queries
from dr.evaluation.benchmarks import SPLIT_MEASURES, split_metrics
from dr.evaluation.truncated import TruncatedSearch
from dr.export.model_card import model_card
from dr.retrieval.cache import cached_dense_run, encoder_fingerprint
from dr.miners.candidates import resolve_score_scale, student_score_scale
from dr.training.hf_data import with_hf_data
from dr.training.loggers import allow_file_store, log_config, log_results
from dr.training.ood import OutOfDomain, cpu_weights, interpolate
from dr.training.best_checkpoint import drop_best_without_validation, trainer_arguments, use_checkpoint
from dr.validate import validate_config

log = logging.getLogger(__name__)


def run_dir_of(cfg: DictConfig) -> Path:
    """The Hydra run directory when running under Hydra, else ``cfg.paths.output_dir``."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.paths.output_dir)


def _instantiate_list(nodes: DictConfig | None) -> list:
    if not nodes:
        return []
    return [hydra.utils.instantiate(node) for node in nodes.values() if node is not None and "_target_" in node]


class TestSplit:
    """The test split, loaded once, with helpers to evaluate dense and BM25 retrieval on it."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.corpus = read_corpus(cfg.corpus)
        self.queries = read_queries(cfg.queries)
        self.qrels = read_qrels(cfg.qrels)
        self.queries = {q: t for q, t in self.queries.items() if q in self.qrels}
        self.measures = list(cfg.measures)
        self.last_index = None
        self.choice = None  # backend=auto's calibrated choice (dr.models.auto_backend.Choice)

    def backend(self, encoder) -> str:
        """``test.backend``: ``torch`` (in ``test.bf16``), ``onnx`` (onnxruntime in fp32, within 1e-6
        of torch), or ``auto``: the fastest within 1e-3 of fp32 on this machine, calibrated once
        (:mod:`dr.models.auto_backend`; the choice goes into metrics.json)."""
        backend = str(self.cfg.get("backend", "torch"))
        if backend != "auto":
            return backend if backend == "onnx" else ("torch-bf16" if self.cfg.bf16 else "torch-fp32")
        if self.choice is None:
            from dr.models.auto_backend import choose_and_log

            self.choice = choose_and_log(encoder, self.cfg.get("cache_dir"), log)
        return self.choice.name

    def dense(self, encoder) -> dict[str, dict[str, float]]:
        """Encode the corpus, search the queries; the index is kept (``last_index``) for export."""
        backend = self.backend(encoder)
        bf16 = backend == "torch-bf16"
        if backend.startswith("onnx"):
            from dr.models.onnx import onnx_encoder

            # exported from the current weights (about a second), quantised for onnx-int8
            encoder = onnx_encoder(encoder, int8=backend == "onnx-int8")
        log.info("test encoding with the %s backend", backend)
        self.last_index = build_index(encoder, self.corpus, batch_size=self.cfg.batch_size, bf16=bf16)
        return search_queries(
            encoder, self.last_index, self.queries, k=self.cfg.k, batch_size=self.cfg.batch_size, bf16=bf16
        )

    def dense_cached(self, encoder, cache_dir: str | None) -> dict[str, dict[str, float]]:
        """:meth:`dense`, reused from ``cache_dir`` while the weights, settings, data, ``k`` and
        precision are those of an earlier run (the zero-shot evaluation; see :mod:`dr.retrieval.cache`)."""
        if not cache_dir:
            return self.dense(encoder)
        run, hit = cached_dense_run(
            cache_dir,
            lambda: self.dense(encoder),
            encoder_fingerprint(encoder),
            self.cfg.corpus,
            self.cfg.queries,
            self.queries,
            self.cfg.k,
            self.backend(encoder),
        )
        if hit:
            print(f"zero-shot run reused from the cache in {cache_dir} (test.cache_dir=null recomputes it)")
        return run

    def split(self):
        """The interpolation/extrapolation labels of the test queries against the full training set
        (``test.split``; :mod:`dr.evaluation.splits` without resampling), cached in ``cache_dir``."""
        from dr.models import BiEncoder
        from dr.evaluation.splits import cached_split

        s = self.cfg.split
        files = {
            "train_queries": s.train_queries,
            "train_qrels": s.train_qrels,
            "test_queries": self.cfg.queries,
            "test_qrels": self.cfg.qrels,
        }
        return cached_split(
            str(s.model),
            files,
            self.cfg.get("cache_dir"),
            lambda: BiEncoder.load(s.model, device="cpu"),
            threshold=float(s.threshold),
            extrapolation_fraction=0.0,
            min_relevance=int(s.get("min_relevance", 1)),
            batch_size=self.cfg.batch_size,
            show_progress=False,
        )

    def bm25(self) -> dict[str, dict[str, float]]:
        bm25 = BM25(passage_texts(self.corpus), list(self.corpus["docid"]))
        qids = list(self.queries)
        return bm25.search_run(qids, [self.queries[q] for q in qids], self.cfg.k)


class _StagePeak:
    """The largest resident memory of this process while a stage runs, sampled every 0.1 s by a
    thread (the kernel's own peak counter cannot be restarted without erasing the process's
    peak). Entering gives freed memory back first (:func:`dr.allocator.release_free_memory`), so
    that one stage's leftovers do not add to the next stage's peak."""

    def __init__(self, metrics: dict, stage: str):
        self.metrics, self.stage, self.peak = metrics, stage, 0.0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while True:
            try:
                self.peak = max(self.peak, int(Path("/proc/self/statm").read_text().split()[1]) * _PAGE / 2**20)
            except OSError:
                return
            if self._stop.wait(0.1):
                return

    def __enter__(self):
        allocator.release_free_memory()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        if self.peak:
            self.metrics[f"memory/{self.stage}_peak_rss_mib"] = self.peak


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB (Linux's ``ru_maxrss`` is in KiB, macOS's in bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _evaluate_truncated(cfg: DictConfig, encoder, test: TestSplit, evaluate) -> "TruncatedSearch | None":
    """Rows ``trained@m`` of the test table: the trained encoder's first m dims for each m of
    ``test.truncate_dims`` below its dimension (:mod:`dr.evaluation.truncated`)."""
    dims = sorted({int(m) for m in (cfg.test.get("truncate_dims") or []) if int(m) < encoder.dim}, reverse=True)
    if not dims or test.last_index is None:
        return None
    truncated = TruncatedSearch(
        encoder, test.last_index, test.queries, k=test.cfg.k, batch_size=test.cfg.batch_size, bf16=test.cfg.bf16
    )
    for dim in dims:
        evaluate(f"trained@{dim}", lambda dim=dim: truncated.run(dim))
    return truncated


def train(cfg: DictConfig, validate: bool = True) -> dict[str, float]:
    """Train, evaluate and export as configured; returns the flat metrics written to metrics.json.

    ``validate=False`` for a caller that has validated ``cfg`` already (``dr-train`` does, before it
    imports this module), so that each command checks its config once."""
    if validate:
        validate_config(cfg)  # before any work: a bad value fails now, not after hours of training
    cfg, _ = with_hf_data(cfg)  # data.hf: the dataset's corpus, queries, qrels, negatives files (cached)
    started = time.perf_counter()
    log.info("memory allocator: %s", allocator.active())
    pl.seed_everything(cfg.seed, workers=True)
    out = run_dir_of(cfg)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "config.yaml") as f:  # never through a link, never half-written
        f.write(OmegaConf.to_yaml(cfg, resolve=True))
    metrics: dict[str, float] = {}
    timings: dict[str, float] = {}
    table: dict[str, dict[str, float]] = {}

    module = hydra.utils.instantiate(cfg.module)
    # The student's score scale (logits per unit of similarity), resolved once here and handed to
    # whatever reads it: SimANS pair samplers (the datamodule) and the refresh's miner kernels.
    score_scale = student_score_scale(module.loss, module.encoder)
    datamodule = hydra.utils.instantiate(cfg.data, output_dir=str(out), score_scale=score_scale)
    test = TestSplit(cfg.test) if cfg.test.enabled else None
    ood = OutOfDomain(cfg.test, out) if cfg.test.enabled else None  # test.ood: out-of-domain sets
    # WiSE-FT's θ_0 (export.interpolate): the weights before training
    initial = cpu_weights(module.encoder) if cfg.export.get("interpolate") is not None else None

    split = (
        test.split()
        if test is not None and test.cfg.get("split") is not None and test.cfg.split.get("enabled")
        else None
    )

    def evaluate(name: str, run_fn) -> None:
        t0 = time.perf_counter()
        with _StagePeak(metrics, f"{name}_eval"):
            run = run_fn()
        write_run(run, out / "runs" / f"{name}.run", tag=name)
        scores = evaluate_run(run, test.qrels, test.measures)
        timings[f"time/{name}_eval_s"] = time.perf_counter() - t0
        table[name] = scores
        metrics.update({f"{name}/{m}": v for m, v in scores.items()})
        log.info("%s: %s", name, scores)
        if split is not None:  # interpolation / extrapolation (dr-split's rule), rows for the trained model
            by_set = split_metrics(run, test.qrels, split, SPLIT_MEASURES)
            metrics.update({f"{name}/{k}": v for k, v in by_set.items()})
            if name == "trained":
                for label in ("interpolation", "extrapolation"):
                    table[f"trained {label[:6]}. ({int(by_set[f'{label}/queries'])})"] = {
                        m: by_set[f"{label}/{m}"] for m in SPLIT_MEASURES
                    }

    if test is not None and cfg.test.bm25:
        evaluate("bm25", test.bm25)
    if test is not None and cfg.test.before:
        evaluate("zero_shot", lambda: test.dense_cached(module.encoder, cfg.test.get("cache_dir")))
        if ood:
            ood.evaluate("zero_shot", module.encoder, metrics, cached=True)

    callbacks = drop_best_without_validation(cfg, _instantiate_list(cfg.get("callbacks")))
    trainer_cfg, stopping = trainer_arguments(cfg)  # trainer.early_stopping -> an EarlyStopping callback
    callbacks += stopping
    refresh = None
    if cfg.get("refresh") is not None and cfg.refresh.get("enabled", False):
        # Index refresh (dr/refresh/): re-mined negatives swapped in during training.
        refresh = hydra.utils.instantiate(
            cfg.refresh, score_scale=resolve_score_scale(cfg.refresh.get("score_scale"), score_scale)
        )
        callbacks.append(refresh)
    allow_file_store(cfg)  # logger=mlflow's file: store under MLflow 3
    trainer: pl.Trainer = hydra.utils.instantiate(
        trainer_cfg,
        callbacks=callbacks,
        logger=_instantiate_list(cfg.get("logger")) or False,
        default_root_dir=str(out),
    )
    log_config(trainer.loggers, cfg, out / "config.yaml")
    t0 = time.perf_counter()
    with _StagePeak(metrics, "train"):
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    timings["time/train_s"] = time.perf_counter() - t0
    # Training is over (its last checkpoint is written): the optimizer's moments and the last
    # step's gradients (three times the weights with AdamW) are not needed by the evaluation.
    for optimizer in trainer.optimizers:
        optimizer.state.clear()
    module.zero_grad(set_to_none=True)
    metrics["train/global_step"] = float(trainer.global_step)
    if refresh is not None:
        metrics.update(refresh.summary(train_seconds=timings["time/train_s"]))
    for name, value in trainer.callback_metrics.items():
        if name.startswith("val/"):
            metrics[name] = float(value)
    metrics.update(use_checkpoint(module, trainer, callbacks, cfg.export.get("checkpoint", "best")))

    if trainer.is_global_zero:
        prefixes = None
        if initial is not None:
            metrics.update(interpolate(cfg, module.encoder, initial, datamodule, ood, out))
        if test is not None and cfg.test.after:
            evaluate("trained", lambda: test.dense(module.encoder))
            prefixes = _evaluate_truncated(cfg, module.encoder, test, evaluate)
            if ood:
                ood.evaluate("trained", module.encoder, metrics)
        if cfg.export.enabled:
            # The test corpus was just indexed with the trained encoder: ship that index with the model.
            index = test.last_index if (test is not None and cfg.test.after and cfg.export.index) else None
            export_dim = cfg.export.get("truncate_dim")
            if index is not None and export_dim:
                index = (prefixes or TruncatedSearch(module.encoder, index, {}, k=1)).index(int(export_dim))
            shipped = truncated(module.encoder, export_dim)  # export.truncate_dim: the first m dims
            lora = cfg.export.get("lora", "merge")  # with encoder.lora: merged weights, or the adapter files
            card = model_card(shipped, OmegaConf.to_container(cfg, resolve=True), metrics, lora=lora)
            export_dir = export(shipped, out / "export", index=index, card=card, lora=lora)
            log.info("exported the trained encoder to %s", export_dir)
        csv_log = out / "logs" / "metrics.csv"
        if csv_log.is_file():
            plot_training_curves(csv_log, out / "training_curves.png")
        if test is not None and test.choice is not None:
            metrics.update(test.choice.summary())
        timings.update(ood.timings if ood else {})
        timings["time/total_s"] = time.perf_counter() - started
        metrics.update(timings)
        # ru_maxrss and the sampled stage peaks (statm) are counted apart and can differ by a page or
        # two: the run's peak is at least every stage's
        stage_peaks = [v for k, v in metrics.items() if k.endswith("_peak_rss_mib")]
        metrics["memory/peak_rss_mib"] = max([peak_rss_mib(), *stage_peaks])
        write_metrics(metrics, out / "metrics.json")
        log_results(trainer.loggers, metrics, step=trainer.global_step)
        if table:
            print(format_table(table, title=f"{cfg.test.name} test"))
        if ood and ood.table:
            print(format_table(ood.table, title="out of domain"))
        print(
            "wall time: "
            + ", ".join(f"{k.removeprefix('time/').removesuffix('_s')} {v / 60:.1f} min" for k, v in timings.items())
        )
        stages = ", ".join(
            f"{k.removeprefix('memory/').removesuffix('_peak_rss_mib')} {v / 1024:.2f}"
            for k, v in metrics.items()
            if k.endswith("_peak_rss_mib")
        )
        print(
            f"peak resident memory: {metrics['memory/peak_rss_mib'] / 1024:.2f} GiB ({stages + '; ' if stages else ''}"
            f"allocator: {allocator.active()})"
        )
        print(f"run directory: {out}")
        if cfg.export.enabled:
            print(f"exported model: {out / 'export'}")
        if table:
            print(f"run files: {out / 'runs'}")
    return metrics
