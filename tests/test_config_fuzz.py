"""A fuzz pass over every command's config: for each top-level key of its primary config file,
a value of the wrong type and one out of range. Each must stop the command before any work with
exit status 2 and one ``dr-<cmd>: error:`` line naming the key, never a traceback.

The commands run in this process through :func:`dr.cli.hydra_command` (real Hydra composition,
validation and error handling) with a ``run`` that records being reached: a case that gets past
validation would start real work. New keys are covered as soon as they appear in ``conf/``.
A few cases also run through the installed console scripts.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from omegaconf import OmegaConf

from dr.cli import COMMANDS, config_dir, hydra_command

BIN = Path(sys.executable).parent


def _kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    return {int: "int", float: "number", str: "str"}.get(type(value)) or (
        "list" if OmegaConf.is_list(value) else "dict"
    )


def _cases(config_name: str) -> list[str]:
    """``key=value`` overrides: a wrong type and an out-of-range value per top-level key written in
    the command's primary config file (its config groups' keys are checked by composition)."""
    raw = OmegaConf.load(Path(config_dir()) / f"{config_name}.yaml")
    cases = []
    for key in raw:
        if key == "defaults" or OmegaConf.is_interpolation(raw, key):
            continue
        default = raw[key]
        wrong, out_of_range = {
            "int": ("abc", "-7"),
            "number": ("abc", "-1e9"),
            "bool": ("maybe", "2"),
            "str": ("[1,2]", None if default == "" else "''"),
            "list": ("{a: 1}", None),
            "dict": ("5", None),
            "null": ("{a: 1}", "''"),  # a path, a count or a list: never a mapping, never empty
        }[_kind(default)]
        cases.append(f"{key}={wrong}")
        if out_of_range is not None:
            cases.append(f"{key}={out_of_range}")
    return cases


ALL_CASES = [(command, case) for command, (_, config_name) in COMMANDS.items() for case in _cases(config_name)]


def test_the_fuzz_covers_every_command_and_key():
    assert {c for c, _ in ALL_CASES} == set(COMMANDS)
    assert len(ALL_CASES) > 100


def test_every_bad_value_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    reached: list[str] = []
    failures = []
    for command, case in ALL_CASES:
        config_name = COMMANDS[command][1]
        main = hydra_command(config_name, lambda cfg, out, case=case: reached.append(case))
        monkeypatch.setattr(
            sys,
            "argv",
            [command, case, f"hydra.run.dir={tmp_path / 'run'}", "hydra/job_logging=none", "hydra/hydra_logging=none"],
        )
        code = None
        try:
            main()
        except SystemExit as e:
            code = e.code
        except Exception as e:  # a traceback for the user
            code = f"{type(e).__name__}: {e}"
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        key = case.split("=", 1)[0]
        if code != 2 or len(lines) != 1 or not lines[0].startswith(f"{command}: error: ") or "Traceback" in err:
            failures.append(f"{command} {case}: exit {code}, {err.strip()[-300:]!r}")
        elif key not in lines[0] and "override" not in lines[0]:
            failures.append(f"{command} {case}: the message does not name {key}: {lines[0]}")
    assert not failures and not reached, "\n".join(failures + [f"got past validation: {reached}"])


@pytest.mark.slow  # a few subprocesses of ~9 s each (the default suite keeps a representative case)
@pytest.mark.parametrize(
    "command, case", [("dr-search", "k=abc"), ("dr-encode", "encoder=5"), ("dr-compare", "permutations=-7")]
)
def test_the_console_scripts_give_the_same_line(command, case, tmp_path):
    proc = subprocess.run(
        [str(BIN / command), case, f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"{command}: error: "), proc.stderr[-2000:]
