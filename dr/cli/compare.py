"""``dr-compare``: compare runs against a baseline (the first) with paired significance tests;
write compare.json, compare.md and compare.png (:mod:`dr.evaluation.compare`)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dr.cli import hydra_command
from dr.config import ConfigError
from dr.data import read_qrels, resolve_path
from dr.data.io import atomic_write, write_json
from dr.plots import plot_sorted_differences
from dr.evaluation.compare import compare_runs, expand_run_files, markdown_table


def run(cfg: DictConfig, out: Path) -> list[dict]:
    """The ``dr-compare`` app: returns the rows of compare.json."""
    if not cfg.get("qrels"):
        raise ConfigError("qrels=null: expected the qrels file that every run is judged against (qrels=...)")
    spec = OmegaConf.to_container(cfg.run_files) if cfg.get("run_files") is not None else None
    groups = expand_run_files(spec)
    if cfg.permutations < 1:
        raise ConfigError(f"permutations={cfg.permutations}: expected a positive number of sign flips (10000 or more)")
    names = list(cfg.names) if cfg.get("names") else None
    result = compare_runs(
        groups,
        read_qrels(cfg.qrels),
        list(cfg.measures),
        names,
        cfg.permutations,
        cfg.seed,
        on_missing=cfg.get("on_missing", "warn"),
    )
    table = markdown_table(result, cfg.alpha)
    header = f"qrels: {resolve_path(cfg.qrels)}"
    with atomic_write(out / "compare.md") as f:
        f.write(header + "\n\n" + table + "\n")
    rows = result.to_json()
    write_json(out / "compare.json", rows)
    differences = {
        m: {s: (result.values[m][i] - result.values[m][0]).tolist() for i, s in enumerate(result.systems) if i}
        for m in result.measures
    }
    plot_sorted_differences(differences, out / "compare.png", baseline=result.systems[0])
    print(header)
    print(table)
    print(f"compare: {out / 'compare.json'}, {out / 'compare.md'}, {out / 'compare.png'}")
    return rows


main = hydra_command("compare", run)


if __name__ == "__main__":
    main()
