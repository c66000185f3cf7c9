"""``dr-pipeline``: run a job of dr's commands from one config (``conf/pipeline/<name>.yaml``), each
stage cached by fingerprint under ``cache_dir`` (:mod:`dr.pipeline`).

    dr-pipeline                        # conf/pipeline/scifact.yaml: stage 1, pool, teacher, stage 2, table
    dr-pipeline --dry-run              # the stages, their commands and which are cached; runs nothing
    dr-pipeline seed=1                 # stage 2 at another seed: the other stages are reused
    dr-pipeline until=stage1           # stop after a stage

Each stage is the command's own ``run(cfg, out)`` in this process, with the config that command
would compose from the same overrides; its output folder is the stage's cache folder.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

from omegaconf import DictConfig

from dr.cli import COMMANDS, config_dir, hydra_command
from dr.config import ConfigError


def compose_command(command: str, overrides: list[str]) -> DictConfig:
    """``command``'s config composed from ``overrides``, as the command itself would compose it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if command not in COMMANDS or command == "dr-pipeline":
        raise ConfigError(f"command={command}: expected one of {', '.join(c for c in COMMANDS if c != 'dr-pipeline')}")
    name = COMMANDS[command][1]
    if GlobalHydra.instance().is_initialized():  # inside dr-pipeline's own Hydra app: same config tree
        return compose(config_name=name, overrides=list(overrides))
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


@contextlib.contextmanager
def _outside_hydra_run() -> Iterator[None]:
    """While a stage runs, the pipeline's Hydra run is hidden: ``dr-train`` writes into its
    ``paths.output_dir`` (the stage folder), not into the pipeline's run directory."""
    from hydra.core.hydra_config import HydraConfig

    hydra_config = HydraConfig.instance()
    saved = hydra_config.cfg
    hydra_config.cfg = None
    try:
        yield
    finally:
        hydra_config.cfg = saved


def execute_command(command: str, cfg: DictConfig, out: Path):
    """Run ``command``'s ``run(cfg, out)`` in this process (after its config checks)."""
    from dr.validate import validate_config

    module = importlib.import_module(f"dr.cli.{COMMANDS[command][0]}")
    validate_config(cfg)
    with _outside_hydra_run():
        return module.run(cfg, out)


def run(cfg: DictConfig, out: Path) -> dict[str, dict]:
    """Plan the stages, run or reuse each, print and write the table; returns the stages reached."""
    from dr.pipeline import cache_lock, job_specs, plan, report, run_stages

    cache = Path(str(cfg.cache_dir)).expanduser().resolve()
    stages = plan(job_specs(cfg), cache, compose_command)
    cached = sum(s.done for s in stages)
    print(
        f"dr-pipeline: {len(stages)} stages, {cached} cached, under {cache}" + (" (dry run)" if cfg.dry_run else ""),
        flush=True,
    )

    def echo(line: str) -> None:
        print(line, flush=True)

    if cfg.dry_run:
        return run_stages(stages, execute_command, dry_run=True, until=cfg.get("until"), echo=echo)
    with cache_lock(cache):
        results = run_stages(stages, execute_command, until=cfg.get("until"), echo=echo)
    text = report(cfg, results, out)
    if text:
        print(text)
    print(f"table: {out / 'table.md'}")
    return results


_main = hydra_command("pipeline", run)


def main() -> None:
    """``dr-pipeline``; ``--dry-run`` is ``dry_run=true``."""
    if "--dry-run" in sys.argv[1:]:
        sys.argv.remove("--dry-run")
        sys.argv.append("dry_run=true")
    _main()


if __name__ == "__main__":
    main()
