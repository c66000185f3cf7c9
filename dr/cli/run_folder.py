"""A run folder holds one run: an earlier finished run is not overwritten by accident.

Hydra writes ``.hydra/`` and appends to the log of ``hydra.run.dir`` before a command starts,
and the command then replaces its ``metrics.json``. So before Hydra runs, a folder that holds a
finished run (its ``metrics.json``) is refused unless the run is resumed (``dr-train
ckpt_path=...``) or ``--overwrite`` is given. Default run folders are named to the microsecond
(``conf/hydra/default.yaml``), so two launches never share one.
"""

from __future__ import annotations

import sys
from pathlib import Path

#: the file that marks a finished run (dr-train and dr-eval write it last)
FINISHED = "metrics.json"


def _override(args: list[str], key: str) -> str | None:
    value = None
    for arg in args:
        for prefix in (f"{key}=", f"+{key}=", f"++{key}="):
            if arg.startswith(prefix):
                value = arg[len(prefix) :]
    return value


def check_run_folder(command: str, args: list[str], overwrite: bool) -> None:
    """Exit with status 2 and one line when ``hydra.run.dir`` holds a finished run that is neither
    resumed nor to be overwritten."""
    run_dir = _override(args, "hydra.run.dir")
    if not run_dir or overwrite or any(a in ("-m", "--multirun") for a in args):
        return
    resumed = _override(args, "ckpt_path") not in (None, "", "null")
    finished = Path(run_dir).expanduser() / FINISHED
    if finished.is_file() and not resumed:
        print(
            f"{command}: error: hydra.run.dir={run_dir}: holds a finished run ({finished}); expected a new folder "
            "(pass --overwrite to replace its results, or ckpt_path=... to resume a dr-train run there)",
            file=sys.stderr,
        )
        sys.exit(2)
