"""Run a list of stages, each one of dr's commands, with its output cached by fingerprint.

A stage is a command (``dr-train``, ``dr-mine``, ...) and its Hydra overrides. An override may name
an earlier stage's output folder as ``{stage}`` (``negatives={pool}/negatives.jsonl``); that stage is
then an input. :func:`plan` composes each stage's config as the command would, fingerprints it
(:mod:`dr.pipeline.fingerprint`) and gives it the folder ``<cache>/<stage>-<key>/``;
:func:`run_stages` runs the stages in order:

- a folder with its ``DONE.json`` is a finished stage: it is reused, not run (``cached``);
- otherwise the folder is emptied (a killed run's leftovers), the command runs into it, and
  ``DONE.json`` is written last (atomically): a run killed at any point resumes at the first
  stage without it;
- ``dry_run`` prints each stage, its command line and whether it is cached, and runs nothing;
- ``until`` stops after the named stage.

Composing and running a command are given by the caller (:mod:`dr.cli.pipeline`: Hydra's compose
API over dr's config tree and the commands' own ``run(cfg, out)`` functions, in this process).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dr.config import ConfigError
from dr.data.io import write_json
from dr.pipeline.fingerprint import embeddings_path, stage_fingerprint

DONE = "DONE.json"
FINGERPRINT = "fingerprint.json"
_OUT = "@STAGE_OUT@"  # the stage's own folder while its key is computed
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][\w-]*)\}")

Compose = Callable[[str, list[str]], DictConfig]
Execute = Callable[[str, DictConfig, Path], Any]


@dataclass
class Stage:
    """One command of the job, planned: its composed config, key and folder."""

    name: str
    command: str
    overrides: list[str]
    deps: list[str] = field(default_factory=list)
    cfg: DictConfig | None = None
    key: str = ""
    dir: Path = Path()
    described: dict = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return (self.dir / DONE).is_file()

    def record(self) -> dict:
        """The finished stage's ``DONE.json`` (``seconds``, ``finished``)."""
        return json.loads((self.dir / DONE).read_text())


def slug(name: str) -> str:
    """A folder-safe form of a stage name (``fusion teacher`` -> ``fusion-teacher``)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "stage"


def plan(specs: list[tuple[str, str, list[str]]], cache_root: str | Path, compose: Compose) -> list[Stage]:
    """Stages from ``(name, command, overrides)`` in run order, each composed, keyed and placed."""
    cache_root = Path(cache_root)
    stages: dict[str, Stage] = {}
    for name, command, overrides in specs:
        if name in stages:
            raise ConfigError(f"stages: {name!r} is listed twice; expected one stage per name")
        deps: list[str] = []

        def place(match: re.Match, _name=name, _deps=deps) -> str:
            ref = match.group(1)
            if ref not in stages:
                raise ConfigError(
                    f"stages.{_name}: {{{ref}}} names no earlier stage; expected one of {', '.join(stages) or '(none)'}"
                )
            _deps.append(ref)
            return str(stages[ref].dir)

        resolved = [_PLACEHOLDER.sub(place, str(o)) for o in overrides]
        stage = Stage(name, command, resolved, list(dict.fromkeys(deps)))
        stage.cfg = compose(command, resolved)
        has_out = "paths" in stage.cfg  # dr-train writes into paths.output_dir; the others into `out`
        if has_out:
            OmegaConf.update(stage.cfg, "paths.output_dir", _OUT, force_add=True)
        _share_embeddings(stage.cfg, cache_root)
        container = OmegaConf.to_container(stage.cfg, resolve=True)
        stage.key, described = stage_fingerprint(command, container, cache_root, _OUT)
        stage.dir = cache_root / f"{slug(name)}-{stage.key}"
        stage.described = described
        if has_out:
            OmegaConf.update(stage.cfg, "paths.output_dir", str(stage.dir))
        stages[name] = stage
    return list(stages.values())


def _share_embeddings(cfg: DictConfig, cache_root: Path) -> None:
    """Point a command that encodes a corpus with a model (and takes ``embeddings_cache``) at the
    cache's file for that (model, corpus, settings): the first stage encodes, the others read."""
    if "embeddings_cache" not in cfg or cfg.get("embeddings_cache") or cfg.get("run_file"):
        return
    model, corpus = cfg.get("model"), cfg.get("corpus")
    if not model or not corpus or (cfg.get("retriever") or "dense") == "bm25":
        return
    settings = {
        "encoder": OmegaConf.to_container(cfg.encoder, resolve=True) if cfg.get("encoder") else None,
        "bf16": bool(cfg.get("bf16")),
        "backend": str(cfg.get("backend") or "torch"),
    }
    cfg.embeddings_cache = str(embeddings_path(cache_root, str(model), str(corpus), settings))


def run_stages(
    stages: list[Stage],
    execute: Execute,
    dry_run: bool = False,
    until: str | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, dict]:
    """Run (or reuse) each stage in order; returns ``{stage: {"dir", "cached", "seconds"}}`` for the
    stages reached. One progress line per stage, with its elapsed time and whether it was cached."""
    if until is not None and until not in {s.name for s in stages}:
        raise ConfigError(f"until={until}: expected one of the stages {', '.join(s.name for s in stages)}")
    width = max(len(s.name) for s in stages) if stages else 0
    results: dict[str, dict] = {}
    started = time.perf_counter()
    for i, stage in enumerate(stages, 1):
        head = f"[{i:>{len(str(len(stages)))}}/{len(stages)}] {stage.name:<{width}}  {stage.command:<10}"
        if stage.done:
            seconds = float(stage.record().get("seconds", 0.0))
            echo(f"{head} cached      ({seconds:.1f} s when run)  {stage.dir}")
            results[stage.name] = {"dir": str(stage.dir), "cached": True, "seconds": seconds}
        elif dry_run:
            echo(f"{head} to run      {stage.dir}")
            echo(f"    {stage.command} " + " ".join(_quote(o) for o in stage.overrides))
            results[stage.name] = {"dir": str(stage.dir), "cached": False, "seconds": None}
        else:
            if stage.dir.exists():  # a killed run's leftovers: never reuse half an output
                shutil.rmtree(stage.dir)
            stage.dir.mkdir(parents=True)
            write_json(stage.dir / FINGERPRINT, stage.described)
            echo(f"{head} running ... {stage.dir}")
            t0 = time.perf_counter()
            try:
                execute(stage.command, stage.cfg, stage.dir)
            except BaseException:
                echo(f"{head} failed      after {time.perf_counter() - t0:.1f} s (run again to retry from this stage)")
                raise
            seconds = time.perf_counter() - t0
            write_json(
                stage.dir / DONE,
                {
                    "stage": stage.name,
                    "command": stage.command,
                    "key": stage.key,
                    "seconds": seconds,
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                },
            )
            echo(f"{head} done        in {seconds:.1f} s (total {time.perf_counter() - started:.1f} s)")
            results[stage.name] = {"dir": str(stage.dir), "cached": False, "seconds": seconds}
        if stage.name == until:
            break
    return results


@contextlib.contextmanager
def cache_lock(cache_root: str | Path) -> Iterator[None]:
    """Hold ``<cache>/.lock`` while stages run: a second job on the same cache would empty the folder
    of a stage the first one is writing."""
    root = Path(cache_root)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"cache_dir={root}: another dr-pipeline is running on this cache; expected one job per "
                "cache_dir at a time (wait for it, or give this one another cache_dir)"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _quote(override: str) -> str:
    return f"'{override}'" if re.search(r"[\s\[\]{}*?]", override) else override
