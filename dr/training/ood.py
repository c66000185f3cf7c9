"""Out of domain in ``dr-train``: evaluation on out-of-domain sets beside the in-domain test split
(``test.ood``), and WiSE-FT weight interpolation with α chosen on validation (``export.interpolate``).

Fine-tuning on one domain can lower retrieval quality on others below the zero-shot model's
(SciFact training lowers TREC-DL 2019; FlagEmbedding's users report the same). ``test.ood`` lists
sets to evaluate the zero-shot and the trained model on: a preset name (``dl19-pool``, the bundled
TREC-DL 2019 judged pool; ``dl19``/``dl20`` online), a BEIR folder, or ``{name, corpus, queries,
qrels[, measures]}``. Each set is evaluated with its own measures (a preset's; else nDCG@10 and
R@100), to the depth its measures need.

``export.interpolate`` (Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022,
Eq. 1: ``θ_α = (1 − α)·θ_0 + α·θ_1``, :mod:`dr.export.wise_ft`): a number α in [0, 1] exports and
tests that mix of the initial (θ_0) and fine-tuned (θ_1) weights; ``auto`` evaluates each α of
``export.interpolate_alphas`` on the run's validation queries (in domain: the held-out training
queries, ranked among their validation candidates, as during training) and on the first
``test.ood`` set (out of domain), and keeps, among the α whose validation nDCG@10 is at most
``export.interpolate_budget`` (0.005, nDCG@10 points on a 0-1 scale) below α = 1's, the one with the
highest out-of-domain nDCG@10 (the larger α on a tie). The in-domain test split is never looked at;
the out-of-domain set is then a development set for α, not an untouched test set. The curve of α
against both is drawn in ``wise_ft_alpha.png``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import ir_measures
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from dr.data import read_corpus, read_qrels, read_queries, write_run
from dr.data.beir import beir_folder
from dr.evaluation import evaluate_run
from dr.evaluation.evaluate import PRESETS
from dr.export.wise_ft import mix_state_dicts
from dr.plots import plot_alpha_curve
from dr.retrieval import build_index, search_queries
from dr.retrieval.cache import cached_dense_run, encoder_fingerprint
from dr.training.module import rank_validation

log = logging.getLogger(__name__)

DEFAULT_MEASURES = ["nDCG@10", "R@100"]
SELECT_MEASURE = "nDCG@10"  # what α is chosen on, in domain and out of domain


@dataclass
class OodSet:
    """One out-of-domain set: its files and measures, read on first use."""

    name: str
    corpus: str
    queries: str
    qrels: str
    measures: list[str] = field(default_factory=lambda: list(DEFAULT_MEASURES))
    _data: tuple | None = None

    @property
    def k(self) -> int:
        """The ranking depth the measures need (their largest cutoff, at least 100)."""
        cutoffs = [getattr(ir_measures.parse_measure(m), "params", {}).get("cutoff") for m in self.measures]
        return max([100, *[c for c in cutoffs if c]])

    def data(self):
        if self._data is None:
            qrels = read_qrels(self.qrels)
            queries = {q: t for q, t in read_queries(self.queries).items() if q in qrels}
            self._data = (read_corpus(self.corpus), queries, qrels)
        return self._data

    def run(self, encoder, bf16: bool, batch_size: int) -> dict[str, dict[str, float]]:
        corpus, queries, _ = self.data()
        index = build_index(encoder, corpus, batch_size=batch_size, bf16=bf16)
        return search_queries(encoder, index, queries, k=self.k, batch_size=batch_size, bf16=bf16)

    def evaluate(self, run) -> dict[str, float]:
        return evaluate_run(run, self.data()[2], self.measures)


def ood_sets(test: DictConfig) -> list[OodSet]:
    """The sets of ``test.ood`` (validated by :mod:`dr.validate`): preset names, BEIR folders or
    ``{name, corpus, queries, qrels[, measures]}``."""
    sets = []
    for entry in test.get("ood") or []:
        if isinstance(entry, str) and entry in PRESETS:
            p = PRESETS[entry]
            sets.append(OodSet(entry, p["corpus"], p["queries"], p["qrels"], list(p["measures"])))
        elif isinstance(entry, str):
            files = beir_folder(entry, "test")
            sets.append(
                OodSet(Path(entry).expanduser().resolve().name, files["corpus"], files["queries"], files["qrels"])
            )
        else:
            e = OmegaConf.to_container(entry, resolve=True) if isinstance(entry, DictConfig) else dict(entry)
            measures = e.get("measures")
            sets.append(
                OodSet(
                    str(e["name"]),
                    str(e["corpus"]),
                    str(e["queries"]),
                    str(e["qrels"]),
                    list(measures) if isinstance(measures, (list, ListConfig)) else list(DEFAULT_MEASURES),
                )
            )
    return sets


class OutOfDomain:
    """The ``test.ood`` sets of a run: zero-shot and trained rows, run files and metrics."""

    def __init__(self, test: DictConfig, out: Path):
        self.sets = ood_sets(test)
        self.out = out
        self.bf16 = bool(test.get("bf16", False))
        self.batch_size = int(test.get("batch_size", 64))
        self.cache_dir = test.get("cache_dir")
        self.table: dict[str, dict[str, float]] = {}
        self.timings: dict[str, float] = {}
        self.known: dict[tuple[str, str], dict] = {}  # (set, fingerprint) -> run, computed this run

    def __bool__(self) -> bool:
        return bool(self.sets)

    def run(self, s: OodSet, encoder, cached: bool = False) -> dict[str, dict[str, float]]:
        fingerprint = encoder_fingerprint(encoder)
        if (s.name, fingerprint) in self.known:
            return self.known[(s.name, fingerprint)]
        if cached and self.cache_dir:
            run, _ = cached_dense_run(
                self.cache_dir,
                lambda: s.run(encoder, self.bf16, self.batch_size),
                fingerprint,
                s.corpus,
                s.queries,
                s.data()[1],
                s.k,
                "torch-bf16" if self.bf16 else "torch-fp32",
            )
        else:
            run = s.run(encoder, self.bf16, self.batch_size)
        self.known[(s.name, fingerprint)] = run
        return run

    def evaluate(self, system: str, encoder, metrics: dict, cached: bool = False) -> None:
        """Row ``system`` on every set: run files ``runs/<set>.<system>.run``, metrics
        ``ood/<set>/<system>/<measure>``."""
        for s in self.sets:
            t0 = time.perf_counter()
            run = self.run(s, encoder, cached=cached)
            write_run(run, self.out / "runs" / f"{s.name}.{system}.run", tag=system)
            scores = s.evaluate(run)
            self.timings[f"time/ood_{s.name}_{system}_s"] = time.perf_counter() - t0
            self.table[f"{system} on {s.name}"] = scores
            metrics.update({f"ood/{s.name}/{system}/{m}": v for m, v in scores.items()})
            log.info("%s on %s: %s", system, s.name, scores)


def validation_score(encoder, datamodule, bf16: bool, batch_size: int = 64) -> float:
    """nDCG@10 of the run's validation queries among their validation candidates (their judged
    documents and the BM25 top ``data.val_depth``: what ``val/nDCG@10`` measures during training)."""
    passages = encoder.encode(datamodule.val_passages, "passage", batch_size=batch_size, bf16=bf16, show_progress=False)
    qids = list(datamodule.val_queries)
    queries = encoder.encode(
        [datamodule.val_queries[q] for q in qids], "query", batch_size=batch_size, bf16=bf16, show_progress=False
    )
    scores = rank_validation(passages, datamodule.val_docids, queries, qids, datamodule.val_qrels, [SELECT_MEASURE])
    return float(scores[SELECT_MEASURE])


def choose_alpha(val: dict[float, float], ood: dict[float, float], budget: float) -> float:
    """The rule of ``export.interpolate=auto``: among the α whose in-domain validation score is at
    most ``budget`` below α = 1's, the one with the highest out-of-domain score; the larger α on a tie."""
    floor = val[1.0] - budget
    allowed = [a for a in val if val[a] >= floor - 1e-12]
    return max(allowed, key=lambda a: (round(ood[a], 12), a))


def cpu_weights(encoder) -> dict[str, torch.Tensor]:
    """A CPU copy of ``encoder``'s weights: WiSE-FT's θ_0 before training, θ_1 after."""
    return {k: v.detach().to("cpu", copy=True) for k, v in encoder.state_dict().items()}


def interpolate(cfg: DictConfig, encoder, initial: dict, datamodule, ood: OutOfDomain, out: Path) -> dict[str, float]:
    """Apply ``export.interpolate`` to ``encoder`` in place (see the module docstring); returns the
    metrics: ``wise_ft/alpha`` and, for ``auto``, each α's validation and out-of-domain nDCG@10."""
    setting = cfg.export.interpolate
    tuned = cpu_weights(encoder)

    def load(alpha: float) -> None:
        mixed = mix_state_dicts(tuned, initial, alpha, base_name="the initial weights")
        encoder.load_state_dict({k: v.to(tuned[k].device) for k, v in mixed.items()})

    if setting != "auto":
        load(float(setting))
        log.info("WiSE-FT: the test evaluation and the export use α = %g", float(setting))
        return {"wise_ft/alpha": float(setting)}
    alphas = sorted({float(a) for a in cfg.export.get("interpolate_alphas") or []} | {1.0})
    budget = float(cfg.export.get("interpolate_budget", 0.005))
    dev = ood.sets[0]
    val, dev_scores, metrics = {}, {}, {}
    was_training = encoder.training
    encoder.eval()
    with torch.inference_mode():
        for alpha in alphas:
            load(alpha)
            val[alpha] = validation_score(encoder, datamodule, ood.bf16, ood.batch_size)
            dev_scores[alpha] = dev.evaluate(ood.run(dev, encoder))[SELECT_MEASURE]
            metrics[f"wise_ft/{alpha:g}/val/{SELECT_MEASURE}"] = val[alpha]
            metrics[f"wise_ft/{alpha:g}/{dev.name}/{SELECT_MEASURE}"] = dev_scores[alpha]
            log.info("WiSE-FT α = %g: validation %.4f, %s %.4f", alpha, val[alpha], dev.name, dev_scores[alpha])
    chosen = choose_alpha(val, dev_scores, budget)
    load(chosen)
    encoder.train(was_training)
    plot_alpha_curve(alphas, val, dev_scores, dev.name, chosen, budget, out / "wise_ft_alpha.png")
    print(
        f"WiSE-FT: α = {chosen:g} (validation {SELECT_MEASURE} {val[chosen]:.4f} against {val[1.0]:.4f} at α = 1, "
        f"{dev.name} {dev_scores[chosen]:.4f} against {dev_scores[1.0]:.4f}; budget {budget:g}); "
        f"curve in {out / 'wise_ft_alpha.png'}"
    )
    return {"wise_ft/alpha": chosen, **metrics}
