"""The commands' allocator (dr.allocator): jemalloc preloaded by re-executing the process once,
chosen by DR_MALLOC, never for callers of a command's main() such as these tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dr import allocator
from dr.cli import ALLOCATOR_COMMANDS, COMMANDS, _is_console_script

BIN = Path(sys.executable).parent
PROBE = (
    "from dr.allocator import reexec_with_jemalloc, active; reexec_with_jemalloc('probe'); import os; "
    "print(active(), os.environ.get('MALLOC_CONF'))"
)


def clean_env(**extra: str) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("LD_PRELOAD", "MALLOC_CONF", "DR_MALLOC", "DR_JEMALLOC", "DR_MALLOC_REEXEC")
    }
    env.update(extra)
    return env


def probe(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", PROBE], env=clean_env(**env), capture_output=True, text=True, timeout=120
    )


def test_dr_jemalloc_names_the_library(tmp_path):
    lib = tmp_path / "libjemalloc.so.2"
    lib.write_bytes(b"")
    os.environ["DR_JEMALLOC"] = str(lib)
    try:
        assert allocator.find_jemalloc() == str(lib)
        os.environ["DR_JEMALLOC"] = str(tmp_path / "missing.so")
        assert allocator.find_jemalloc() is None
    finally:
        del os.environ["DR_JEMALLOC"]


def test_the_process_restarts_under_jemalloc_with_purging_off():
    if allocator.find_jemalloc() is None:
        pytest.skip(
            "no jemalloc library here (scripts/setup.sh unpacks Debian's libjemalloc2 into the venv when apt is there)"
        )
    assert allocator.active() == "system"  # pytest itself is not re-executed
    done = probe()
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["jemalloc", allocator.JEMALLOC_CONF]
    done = probe(MALLOC_CONF="narenas:2")  # the user's own jemalloc settings win
    assert done.stdout.split() == ["jemalloc", "narenas:2"]


def test_dr_malloc_system_keeps_the_system_allocator():
    done = probe(DR_MALLOC="system")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "system"


def test_asking_for_jemalloc_without_a_library_is_a_one_line_error(tmp_path):
    done = probe(DR_MALLOC="jemalloc", DR_JEMALLOC=str(tmp_path / "none.so"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == (
        "probe: error: DR_MALLOC=jemalloc: no jemalloc library found (set DR_JEMALLOC to its "
        "path, or install Debian's libjemalloc2)"
    )
    done = probe(DR_MALLOC="tcmalloc")
    assert done.returncode == 2 and "expected one of auto, jemalloc, system" in done.stderr


def test_the_console_scripts_choose_the_allocator_first(tmp_path):
    """dr-train itself goes through the allocator choice (the bad setting fails before Hydra runs)."""
    done = subprocess.run(
        [str(BIN / "dr-train"), "--cfg", "job"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=clean_env(DR_MALLOC="jemalloc", DR_JEMALLOC=str(tmp_path / "none.so")),
    )
    assert done.returncode == 2
    assert done.stderr.strip().startswith("dr-train: error: DR_MALLOC=jemalloc: no jemalloc library found")


def test_callers_of_main_are_not_re_executed(monkeypatch):
    """Only the interpreter's own command line counts: a test that sets sys.argv to a command's name
    and calls its main() must not have its process replaced."""
    assert ALLOCATOR_COMMANDS <= set(COMMANDS)
    monkeypatch.setattr(sys, "argv", ["dr-split", "x=1"])
    assert not any(_is_console_script(name) for name in COMMANDS)
    assert _is_console_script("dr-train", ["/v/bin/python", "/v/bin/dr-train", "seed=1"])
    assert _is_console_script("dr-eval", ["python", "-m", "dr.cli.evaluate"])
    assert not _is_console_script("dr-train", ["python", "-m", "pytest", "tests"])
    assert not _is_console_script("dr-train", ["python"])


RELEASE = """
import torch
from dr.allocator import reexec_with_jemalloc, release_free_memory, active
reexec_with_jemalloc('probe')
def rss(): return int(open('/proc/self/statm').read().split()[1]) * 4096 / 2**20
kept = [torch.ones(2_000_000 * (i % 5 + 1)) for i in range(100)]  # about 2.3 GiB, in sizes that differ
del kept
before = rss()
ok = release_free_memory()
print(active(), ok, round(before), round(rss()))
"""


def test_freed_memory_goes_back_between_stages():
    """With purging off, jemalloc keeps what was freed until release_free_memory() purges it."""
    if allocator.find_jemalloc() is None:
        pytest.skip("no jemalloc library here")
    done = subprocess.run([sys.executable, "-c", RELEASE], env=clean_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    name, ok, before, after = done.stdout.split()
    assert (name, ok) == ("jemalloc", "True")
    assert int(before) > 2000 and int(after) < int(before) - 1500, done.stdout
    assert allocator.release_free_memory() is True  # glibc's malloc_trim in this process


def test_a_run_reports_its_peaks(cfg_train):
    from dr.training import train

    metrics = train(cfg_train("export.enabled=false", "data.val_fraction=0", max_steps=2))
    assert metrics["memory/peak_rss_mib"] >= metrics["memory/train_peak_rss_mib"] > 100
    assert metrics["memory/trained_eval_peak_rss_mib"] > 100
