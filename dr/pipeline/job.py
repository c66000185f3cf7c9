"""A pipeline config (``conf/pipeline/*.yaml``) as stages, and the table of its results.

The config lists ``stages`` (name -> ``command`` and ``overrides``) and an ``evaluate`` block: every
row (a system: BM25, a model, a stage's run file) on every enabled set (the test split with its
interpolation/extrapolation halves from a ``dr-split`` folder, an out-of-domain set) is one
``dr-eval`` stage, ``eval-<row>-<set>``, after the listed stages. ``extra.<command>`` adds overrides
to every stage of that command, ``extra.<stage>`` to that stage alone (after the command's:
``dr-pipeline '+extra.stage2=['refresh.enabled=false']'`` trains a variant of stage 2, cached apart,
reusing the stages before it). The table has one row per system and, per set, the measures (and
for a set evaluated with ``split=``, the measures on each half); ``verdict`` names the ``dr-compare``
stage whose rows are printed under it, ``export`` the stage whose ``export/`` is the job's model and
``pictures`` the stages whose PNGs are listed.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dr.config import ConfigError
from dr.evaluation import format_table

HALVES = {"interpolation": "interp.", "extrapolation": "extrap."}


def _list(node) -> list[str]:
    if node is None:
        return []
    if OmegaConf.is_config(node):
        node = OmegaConf.to_container(node, resolve=True)
    return [str(o) for o in node]


def merge_overrides(*groups: list[str]) -> list[str]:
    """Hydra overrides, later ones replacing earlier ones with the same key."""
    merged: dict[str, str] = {}
    for group in groups:
        for override in group:
            merged[override.split("=", 1)[0]] = override
    return list(merged.values())


def eval_stage_name(row: str, set_name: str) -> str:
    return f"eval {row} {set_name}"


def enabled_sets(cfg: DictConfig) -> dict[str, DictConfig]:
    return {name: s for name, s in cfg.evaluate.sets.items() if s.get("enabled", True)}


def set_measures(cfg: DictConfig, s: DictConfig) -> list[str]:
    """A set's own ``measures`` (TREC-DL's recall counts grade >= 2), else ``evaluate.measures``."""
    return _list(s.get("measures") or cfg.evaluate.measures)


def job_specs(cfg: DictConfig) -> list[tuple[str, str, list[str]]]:
    """``(name, command, overrides)`` of every stage in run order: the listed stages, then the evaluations."""
    extra = cfg.get("extra") or {}
    if not cfg.get("stages"):
        raise ConfigError("stages: expected at least one stage (name: {command: dr-..., overrides: [...]})")
    unknown = sorted(set(extra) - set(cfg.stages) - {s.command for s in cfg.stages.values()} - {"dr-eval"})
    if unknown:
        raise ConfigError(
            f"extra.{unknown[0]}: expected a command of the pipeline or one of its stages ({', '.join(cfg.stages)})"
        )
    specs = []
    for name, stage in cfg.stages.items():
        if not stage.get("command"):
            raise ConfigError(
                f"stages.{name}.command: expected a dr command (dr-train, dr-mine, dr-score, dr-eval, ...)"
            )
        specs.append(
            (
                str(name),
                str(stage.command),
                merge_overrides(
                    _list(stage.get("overrides")), _list(extra.get(stage.command)), _list(extra.get(str(name)))
                ),
            )
        )
    evaluate = cfg.get("evaluate")
    if evaluate:
        for set_name, s in enabled_sets(cfg).items():
            measures = "measures=[" + ",".join(f"'{m}'" for m in set_measures(cfg, s)) + "]"  # quoted: R(rel=2)@100
            for row, spec in evaluate.rows.items():
                overrides = merge_overrides(
                    _list(s.get("overrides")),
                    _list(spec.get("all")),
                    _list(spec.get(set_name)),
                    [measures],
                    _list(extra.get("dr-eval")),
                )
                specs.append((eval_stage_name(str(row), str(set_name)), "dr-eval", overrides))
    return specs


def results_table(cfg: DictConfig, dirs: dict[str, str]) -> dict[str, dict[str, float]]:
    """``{row: {column: value}}`` from the evaluation stages' ``metrics.json`` (rows not reached: absent)."""
    table: dict[str, dict[str, float]] = {}
    for row in cfg.evaluate.rows:
        values: dict[str, float] = {}
        for set_name, s in enabled_sets(cfg).items():
            folder = dirs.get(eval_stage_name(str(row), str(set_name)))
            path = Path(folder) / "metrics.json" if folder else None
            if path is None or not path.is_file():
                continue
            metrics = json.loads(path.read_text())
            label = str(s.get("label") or set_name)
            measures = set_measures(cfg, s)
            for m in measures:
                values[f"{label} {m}"] = metrics.get(str(m), float("nan"))
            for half, short in HALVES.items():
                if f"{half}/{measures[0]}" in metrics:
                    for m in measures:
                        values[f"{short} {m}"] = metrics.get(f"{half}/{m}", float("nan"))
        if values:
            table[str(row)] = values
    return table


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def verdict(compare_dir: str | None) -> list[str]:
    """One line per compared system and measure from a ``dr-compare`` folder's ``compare.json``."""
    path = Path(compare_dir) / "compare.json" if compare_dir else None
    if path is None or not path.is_file():
        return []
    rows = json.loads(path.read_text())
    base = {r["measure"]: r for r in rows if r.get("wins") is None}
    lines = []
    for r in rows:
        if r.get("wins") is None:
            continue
        b = base.get(r["measure"], {})
        lines.append(
            f"{r['system']} vs {b.get('system', 'baseline')}, {r['measure']}: {r['mean']:.4f} against "
            f"{b.get('mean', float('nan')):.4f}, "
            f"Δ {r['delta']:+.4f}, p (t-test) {_p(r['p_ttest'])}, p (randomization) {_p(r['p_randomization'])}, "
            f"p (Holm) {_p(r['p_holm'])}, wins/ties/losses {r['wins']}/{r['ties']}/{r['losses']}"
        )
    return lines


def report(cfg: DictConfig, stages: dict[str, dict], out: Path) -> str:
    """The table and the verdict as text; also written to ``out/table.md`` and ``out/table.json``
    (with each stage's folder, whether it was cached and its time). ``stages`` is
    :func:`dr.pipeline.run_stages`'s result."""
    from dr.data.io import atomic_write, write_json

    dirs = {name: r["dir"] for name, r in stages.items()}

    table = results_table(cfg, dirs) if cfg.get("evaluate") else {}
    lines = verdict(dirs.get(str(cfg.get("verdict")))) if cfg.get("verdict") else []
    text = format_table(table, title=f"{cfg.get('dataset', {}).get('name', 'pipeline')}: every stage") if table else ""
    if lines:
        text += "\n\ndr-compare:\n" + "\n".join(lines)
    export = cfg.get("export")
    if export and dirs.get(str(export)):
        text += f"\n\nexported model: {Path(dirs[str(export)]) / 'export'}"
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "table.md") as f:
        f.write(text + "\n")
    pictures = [
        str(p) for n in (cfg.get("pictures") or []) if str(n) in dirs for p in sorted(Path(dirs[str(n)]).glob("*.png"))
    ]
    if pictures:
        text += "\npictures: " + ", ".join(pictures)
    write_json(out / "table.json", {"table": table, "verdict": lines, "stages": stages})
    return text
