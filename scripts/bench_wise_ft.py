"""WiSE-FT on a trained model: α against in-domain validation, the test split and an
out-of-domain set, and the α a stated rule picks.

For each α, ``(1 − α)·base + α·model`` (:mod:`dr.export.wise_ft`, ``dr-export interpolate=α``) is
evaluated with ``dr-eval`` on:

- the run's own validation queries (the training queries it held out: ``data.val_fraction`` and
  ``data.val_seed`` of its ``config.yaml``), on its training corpus: what α is chosen on;
- the out-of-domain set (default the TREC-DL 2019 judged pool, ``R(rel=2)@100``): chosen on too,
  as issue 26 asks (the DL19 pool is then no longer an untouched test set for the chosen α);
- the test split (reported, never chosen on).

Rule: the α with the highest out-of-domain nDCG@10 among those whose validation nDCG@10 is at most
``--budget`` (0.005) below α = 1's. Several runs (seeds) give one table each and the rule is
applied to the mean over them.

    python scripts/bench_wise_ft.py --runs RUN_DIR [RUN_DIR ...] --alphas 0.5 0.75 1.0
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from omegaconf import OmegaConf


def compose(name: str, overrides: list[str]):
    from hydra import compose as hydra_compose, initialize_config_dir

    from dr.cli import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return hydra_compose(name, overrides=overrides)


def validation_files(run: Path, out: Path) -> tuple[str, str, str]:
    """The run's held-out training queries and their qrels as files, and its training corpus."""
    from dr.data.io import atomic_write
    from dr.training import RetrievalDataModule

    data = OmegaConf.load(run / "config.yaml").data
    dm = RetrievalDataModule(
        corpus=data.corpus,
        train_queries=data.train_queries,
        train_qrels=data.train_qrels,
        val_fraction=data.val_fraction,
        val_seed=data.val_seed,
        seed=data.seed,
        negatives=None,
    )
    dm.setup("fit")
    out.mkdir(parents=True, exist_ok=True)
    queries, qrels = out / "val.queries.tsv", out / "val.qrels.trec"
    queries.write_text("".join(f"{q}\t{t}\n" for q, t in dm.val_queries.items()))
    with atomic_write(qrels) as f:
        f.writelines(f"{q} 0 {d} {grade}\n" for q, docs in dm.val_qrels.items() for d, grade in docs.items())
    return str(data.corpus), str(queries), str(qrels)


def evaluate(model: str, corpus: str, queries: str, qrels: str, measures: list[str], out: Path, cache: Path) -> dict:
    from dr.cli.evaluate import run as dr_eval
    from dr.config import bf16_supported

    quoted = ",".join(f"'{m}'" for m in measures)
    cfg = compose(
        "evaluate",
        [
            f"model={model}",
            f"corpus={corpus}",
            f"queries={queries}",
            f"qrels={qrels}",
            f"measures=[{quoted}]",
            "k=100",
            f"bf16={str(bf16_supported()).lower()}",
            f"embeddings_cache={cache}",
        ],
    )
    return dr_eval(cfg, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--runs", nargs="+", required=True, help="dr-train run folders (each with config.yaml and export/)"
    )
    parser.add_argument("--base", default="all-MiniLM-L6-v2", help="the initial model")
    parser.add_argument("--alphas", nargs="+", type=float, default=[0.5, 0.75, 1.0])
    parser.add_argument("--budget", type=float, default=0.005, help="validation nDCG@10 an α may cost against α = 1")
    parser.add_argument("--ood-corpus", default="dl19:pool_corpus")
    parser.add_argument("--ood-queries", default="dl19:queries")
    parser.add_argument("--ood-qrels", default="dl19:pool_qrels")
    parser.add_argument("--test-queries", default="scifact:test_queries")
    parser.add_argument("--test-qrels", default="scifact:test_qrels")
    parser.add_argument("--out", default="bench/wise_ft")
    args = parser.parse_args()
    if 1.0 not in args.alphas:
        args.alphas.append(1.0)
    from dr.cli.export import run as dr_export

    out = Path(args.out).resolve()
    results: dict[str, dict[float, dict[str, float]]] = {}
    for run in map(Path, args.runs):
        folder = out / run.name
        corpus, val_queries, val_qrels = validation_files(run, folder)
        results[run.name] = {}
        for alpha in sorted(args.alphas):
            model = str(run / "export")
            if alpha != 1.0:
                model = str(folder / f"alpha{alpha:g}")
                if not (Path(model) / "config.json").is_file():
                    dr_export(
                        compose(
                            "export",
                            [
                                f"model={run / 'export'}",
                                f"base={args.base}",
                                f"interpolate={alpha}",
                                f"output={model}",
                                "overwrite=true",
                            ],
                        ),
                        folder,
                    )
            row = {}
            sets = {
                "val": (corpus, val_queries, val_qrels, ["nDCG@10", "R@100"]),
                "test": (corpus, args.test_queries, args.test_qrels, ["nDCG@10", "R@100"]),
                "ood": (args.ood_corpus, args.ood_queries, args.ood_qrels, ["nDCG@10", "R(rel=2)@100"]),
            }
            for name, (c, q, r, measures) in sets.items():
                cache = folder / f"alpha{alpha:g}.{'ood' if name == 'ood' else 'in'}.npy"
                metrics = evaluate(model, c, q, r, measures, folder / f"alpha{alpha:g}-{name}", cache)
                row.update({f"{name} {m}": metrics[m] for m in measures})
            results[run.name][alpha] = row
            print(f"{run.name} α={alpha:g}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items()), flush=True)
    columns = list(next(iter(next(iter(results.values())).values())))
    mean = {a: {c: statistics.mean(results[r][a][c] for r in results) for c in columns} for a in sorted(args.alphas)}
    allowed = [a for a in mean if mean[a]["val nDCG@10"] >= mean[1.0]["val nDCG@10"] - args.budget]
    chosen = max(allowed, key=lambda a: mean[a]["ood nDCG@10"])
    lines = [
        f"WiSE-FT, (1 − α)·{args.base} + α·model, mean over {len(results)} run(s): {', '.join(results)}",
        f"{'α':>6}" + "".join(f"{c:>20}" for c in columns),
    ]
    lines += [
        f"{a:>6g}" + "".join(f"{mean[a][c]:>20.4f}" for c in columns) + ("   <- chosen" if a == chosen else "")
        for a in mean
    ]
    lines.append(
        f"rule: the highest ood nDCG@10 among the α whose val nDCG@10 is within {args.budget} of α = 1's; test never "
        f"chosen on"
    )
    table = "\n".join(lines)
    print("\n" + table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "wise_ft.txt").write_text(table + "\n")
    (out / "wise_ft.json").write_text(
        json.dumps(
            {
                "runs": {r: {str(a): v for a, v in x.items()} for r, x in results.items()},
                "mean": {str(a): v for a, v in mean.items()},
                "chosen": chosen,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
