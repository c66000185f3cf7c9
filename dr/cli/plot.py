"""``dr-plot RUN_DIR [RUN_DIR ...]``: training loss, learning rate and validation metrics of one or
several dr-train runs against the step, overlaid in one PNG, with refreshes of the negatives marked.

Positional arguments are the runs; ``key=value`` overrides work as in every other command
(``output=curves.png``, ``labels=[a,b]``), and errors are one line (``dr-plot: error: ...``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig

from dr.cli import hydra_command
from dr.config import ConfigError
from dr.plots import plot_runs, read_metrics_csv


def metrics_csv(run: str) -> Path:
    """The CSV log of a run: ``RUN/logs/metrics.csv``, ``RUN/metrics.csv`` or the file itself."""
    path = Path(run).expanduser()
    for candidate in (path / "logs" / "metrics.csv", path / "metrics.csv", path):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{run}: no such run (expected a dr-train run directory with logs/metrics.csv)")


def run(cfg: DictConfig, out: Path) -> Path:
    """Read each run's CSV log and draw the PNG."""
    runs = [str(r) for r in cfg.runs or []]
    if not runs:
        raise ConfigError("runs=[]: expected at least one run directory, e.g. dr-plot outputs/train/<date>")
    labels = [str(x) for x in cfg.labels] if cfg.get("labels") else [Path(r).expanduser().resolve().name for r in runs]
    if len(labels) != len(runs):
        raise ConfigError(f"labels={labels}: expected one label per run ({len(runs)})")
    if len(set(labels)) != len(labels):
        labels = [f"{i + 1}: {label}" for i, label in enumerate(labels)]
    series = {label: read_metrics_csv(metrics_csv(r)) for label, r in zip(labels, runs)}
    target = Path(cfg.output) if cfg.get("output") else out / "training.png"
    try:
        png = plot_runs(series, target, title=cfg.get("title") or "")
    except ValueError as e:
        raise ConfigError(f"runs={runs}: {e}") from None
    print(f"plot: {png}")
    return png


_main = hydra_command("plot", run)

#: Hydra options that take a value (the value is not a run).
_OPTIONS_WITH_VALUE = {
    "--cfg",
    "-c",
    "--package",
    "-p",
    "--info",
    "-i",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--experimental-rerun",
}


def positional_to_override(argv: list[str]) -> list[str]:
    """``[RUN, RUN, key=value]`` -> ``[key=value, runs=['RUN','RUN']]`` (quoted for Hydra's grammar)."""
    runs, rest, skip = [], [], False
    for arg in argv:
        if skip or arg.startswith("-") or "=" in arg:
            rest.append(arg)
            skip = arg in _OPTIONS_WITH_VALUE
            continue
        runs.append(arg)
    if runs:
        quoted = ",".join("'" + r.replace("\\", "\\\\").replace("'", "\\'") + "'" for r in runs)
        rest.append(f"runs=[{quoted}]")
    return rest


def main() -> None:
    sys.argv = [sys.argv[0], *positional_to_override(sys.argv[1:])]
    _main()


if __name__ == "__main__":
    main()
