"""The process's memory allocator: jemalloc when it is there, for less memory and faster CPU steps.

PyTorch allocates CPU tensors with ``malloc``. A training step frees and re-allocates tens of
tensors of tens of MB each, in sizes that change from layer to layer and batch to batch. glibc's
allocator serves the ones under its (self-raising) mmap threshold from one heap, where freed
blocks of one size do not fit the next request of another: the process's resident memory
climbs about 1 GB above what the step really holds (all-MiniLM-L6-v2, 32 queries and 64
passages at 256 tokens, fp32: 4.45 GB resident for 3.0 GB of saved activations). Giving freed
memory back to the system instead (a low ``MALLOC_MMAP_THRESHOLD_``, or jemalloc's default
purging) removes the excess but costs 15-35% of the step time: every fresh page is faulted in and
zeroed again by the kernel.

jemalloc with purging turned off (``MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1``: freed pages
are kept and reused, in size classes that fit the next request) does both: on the batch above,
3.75 GB resident and 4% faster steps in fp32, 2.72 GB (from 3.16) and 17% faster in bf16. PyTorch's
own CPU launcher (``torch.backends.xeon.run_cpu --enable-jemalloc``) sets decays of 9e9 ms, in
effect the same. Resident memory then stays at the run's peak until the process ends.

A library can only replace ``malloc`` before the process starts, so the commands re-execute
themselves once with ``LD_PRELOAD`` (:func:`reexec_with_jemalloc`). ``DR_MALLOC`` chooses:
``auto`` (the default: jemalloc when found, else the system's), ``jemalloc`` (an error when it is
not found) or ``system``. jemalloc is looked for in ``DR_JEMALLOC`` (a path), in the virtual
environment (``scripts/setup.sh`` unpacks Debian's ``libjemalloc2`` into ``<venv>/lib/jemalloc``
when ``apt-get`` is there, no root needed), then in the usual system library folders. Worker
processes (the asynchronous refresh, DDP ranks) inherit the setting through the environment.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import sys
from pathlib import Path

MODES = ("auto", "jemalloc", "system")
#: keep freed pages for reuse (no purging back to the system): the speed of glibc's heap without its fragmentation
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
_REEXEC_MARK = "DR_MALLOC_REEXEC"
_SYSTEM_DIRS = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
    "/opt/homebrew/lib",
)


def find_jemalloc() -> str | None:
    """Path of a jemalloc shared library: ``DR_JEMALLOC``, then the virtual environment's
    ``lib/jemalloc``, then the system's library folders; ``None`` when there is none."""
    explicit = os.environ.get("DR_JEMALLOC")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    candidates = [Path(sys.prefix) / "lib" / "jemalloc" / "libjemalloc.so.2"]
    candidates += [Path(d) / name for d in _SYSTEM_DIRS for name in ("libjemalloc.so.2", "libjemalloc.so")]
    for path in candidates:
        if path.is_file():
            return str(path)
    name = ctypes.util.find_library("jemalloc")  # e.g. a conda environment's, found through ldconfig
    return name or None


def active() -> str:
    """``"jemalloc"`` when jemalloc is this process's allocator (preloaded), else ``"system"``."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "system"
    return "jemalloc" if "jemalloc" in maps else "system"


def release_free_memory() -> bool:
    """Give the memory the allocator keeps of what was freed back to the system (jemalloc: purge
    every arena; glibc: ``malloc_trim(0)``); returns whether it could. Called between the stages of
    a run (training, evaluation), whose peaks should not add up: with purging off, jemalloc would
    otherwise keep the training step's pages while the evaluation allocates its own. Unreachable
    Python objects are collected first: a model whose layers hold objects that refer back to them
    (:mod:`dr.models.recompute`, :mod:`dr.models.cpu_linear`) is freed by the cycle collector, not
    when its last reference goes."""
    gc.collect()
    try:
        if active() == "jemalloc":
            mallctl = ctypes.CDLL(None).mallctl
            mallctl.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
            return mallctl(b"arena.4096.purge", None, None, None, 0) == 0  # 4096: MALLCTL_ARENAS_ALL
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)  # returns 1 only if it freed something
        return True
    except (OSError, AttributeError):  # not glibc, or no mallctl symbol
        return False


def jemalloc_environ(library: str, base: dict | None = None) -> dict:
    """A copy of ``base`` (default: this process's environment) that makes a new process start
    with ``library`` preloaded and, unless ``MALLOC_CONF`` is set, purging turned off."""
    env = dict(os.environ if base is None else base)
    env["LD_PRELOAD"] = ":".join(p for p in (library, env.get("LD_PRELOAD", "")) if p)
    env.setdefault("MALLOC_CONF", JEMALLOC_CONF)
    return env


def reexec_with_jemalloc(command: str) -> None:
    """Re-execute this process with jemalloc preloaded, per ``DR_MALLOC`` (see the module's
    docstring); return without doing anything when it is ``system``, when jemalloc is already
    loaded or was already tried, on a system without ``LD_PRELOAD`` (not Linux), or when ``auto``
    finds no library. ``DR_MALLOC=jemalloc`` without a library exits with a one-line error."""
    mode = os.environ.get("DR_MALLOC", "auto").strip().lower() or "auto"
    if mode not in MODES:
        _exit_2(f"{command}: error: DR_MALLOC={mode!r}: expected one of {', '.join(MODES)}")
    if (
        mode == "system"
        or os.environ.get(_REEXEC_MARK)
        or not sys.platform.startswith("linux")
        or active() == "jemalloc"
    ):
        return
    library = find_jemalloc()
    if library is None:
        if mode == "jemalloc":
            _exit_2(
                f"{command}: error: DR_MALLOC=jemalloc: no jemalloc library found (set DR_JEMALLOC to its path, "
                "or install Debian's libjemalloc2)"
            )
        return
    env = jemalloc_environ(library)
    env[_REEXEC_MARK] = "1"
    argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)


def _exit_2(message: str) -> None:
    """Print a user error's one line and exit with status 2, as every dr command does (``sys.exit(message)`` gives
    1)."""
    print(message, file=sys.stderr)
    sys.exit(2)
