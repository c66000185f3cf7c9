"""The refresh store: one folder per negatives version, complete only once its manifest checks out.

Files, under ``<run dir>/refresh/`` (``refresh/node<k>/`` per node when training on several)::

    v0003/job.json        what was asked (version, snapshot step)
    v0003/encoder/        the snapshot (deleted once the version is complete unless keep_snapshots)
    v0003/negatives.jsonl the mined negatives
    v0003/stats.json      mining statistics (as dr-mine prints them)
    v0003/manifest.json   written last: a version is complete iff its manifest checks out
    v0003/FAILED          the worker's error, for a failed version (never read again)
    worker.pid            the current worker process

A version folder is staged under ``.tmp-*`` and renamed into place with its snapshot; a version
without a manifest, or whose negatives do not match the manifest's size and sha256, is never read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from dr.data.io import DataError, atomic_write, write_json

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
NEGATIVES = "negatives.jsonl"
TEACHER_NEGATIVES = "negatives.teacher.jsonl"  # the same pairs with the refresh teacher's scores (for the KD lists)
STATS = "stats.json"
SNAPSHOT = "encoder"
JOB = "job.json"
FAILED = "FAILED"
TMP_PREFIX = ".tmp-"
WORKER_PID = "worker.pid"
SAFE_TO_DELETE = (
    "safe to delete its folder: training keeps the negatives it has and the next refresh makes a new version"
)


def version_dir(root: str | os.PathLike, version: int) -> Path:
    return Path(root) / f"v{version:04d}"


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verified_manifest(vdir: str | os.PathLike) -> dict | None:
    """The manifest of a complete version, or None when it is absent, unreadable, failed or does
    not match its negatives file (size and sha256): a partial or corrupt version is never read."""
    vdir = Path(vdir)
    path = vdir / MANIFEST
    if not path.is_file() or (vdir / FAILED).exists():
        return None
    try:
        manifest = json.loads(path.read_text())
        negatives = vdir / manifest["negatives"]
        if negatives.stat().st_size != manifest["bytes"] or sha256_file(negatives) != manifest["sha256"]:
            log.error(
                "refresh %s: %s does not match %s; ignoring this version (%s)",
                vdir.name,
                negatives,
                path,
                SAFE_TO_DELETE,
            )
            return None
        if manifest.get("teacher_sha256") and sha256_file(vdir / TEACHER_NEGATIVES) != manifest["teacher_sha256"]:
            log.error(
                "refresh %s: %s does not match %s; ignoring this version (%s)",
                vdir.name,
                vdir / TEACHER_NEGATIVES,
                path,
                SAFE_TO_DELETE,
            )
            return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.error(
            "refresh %s: %s is damaged, expected a JSON manifest with negatives, bytes and sha256 (%s: %s); ignoring "
            "this "
            "version (%s)",
            vdir.name,
            path,
            type(e).__name__,
            e,
            SAFE_TO_DELETE,
        )
        return None
    return manifest


def list_versions(root: str | os.PathLike) -> list[int]:
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith("v") and p.name[1:].isdigit():
            out.append(int(p.name[1:]))
    return sorted(out)


def clean_refresh_dir(root: str | os.PathLike, keep_upto: int) -> list[str]:
    """Delete orphan ``.tmp-*`` folders and versions newer than ``keep_upto``; returns what went."""
    root = Path(root)
    removed = []
    if not root.is_dir():
        return removed
    for p in root.iterdir():
        stale = p.name.startswith(TMP_PREFIX) or (
            p.is_dir() and p.name.startswith("v") and p.name[1:].isdigit() and int(p.name[1:]) > keep_upto
        )
        if stale:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p.name)
    return removed


def stage_version(root: str | os.PathLike, version: int, step: int, mode: str, encoder=None) -> Path:
    """Create ``v<version>`` with its ``job.json`` (and the encoder snapshot when ``encoder`` is
    given): written in a ``.tmp-*`` folder and renamed, so the version appears complete."""
    root = Path(root)
    vdir = version_dir(root, version)
    tmp = root / f"{TMP_PREFIX}v{version:04d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if encoder is not None:
        encoder.save_pretrained(tmp / SNAPSHOT)
    write_json(tmp / JOB, {"version": version, "snapshot_step": step, "mode": mode})
    shutil.rmtree(vdir, ignore_errors=True)
    os.replace(tmp, vdir)
    return vdir


def staged_job(root: str | os.PathLike, version: int) -> dict | None:
    """``job.json`` of a version whose snapshot is still staged (it can be built again from the same
    weights), or None. A version folder appears with its snapshot complete (:func:`stage_version`)."""
    vdir = version_dir(root, version)
    try:
        job = json.loads((vdir / JOB).read_text())
    except (OSError, ValueError):
        return None
    return job if (vdir / SNAPSHOT).is_dir() and not (vdir / FAILED).exists() else None


def write_manifest(vdir: str | os.PathLike, manifest: dict) -> dict:
    """Add the negatives file's size and sha256 to ``manifest`` and write it, last, into ``vdir``."""
    negatives = Path(vdir) / NEGATIVES
    manifest = {**manifest, "negatives": NEGATIVES, "sha256": sha256_file(negatives), "bytes": negatives.stat().st_size}
    if (Path(vdir) / TEACHER_NEGATIVES).is_file():
        manifest["teacher_sha256"] = sha256_file(Path(vdir) / TEACHER_NEGATIVES)
    write_json(Path(vdir) / MANIFEST, manifest)
    return manifest


def teacher_file(vdir: str | os.PathLike) -> str | None:
    """The version's file of teacher scores for the KD lists (:data:`TEACHER_NEGATIVES`), if it has one."""
    path = Path(vdir) / TEACHER_NEGATIVES
    return str(path) if path.is_file() else None


def mark_failed(root: str | os.PathLike, version: int, error: str) -> None:
    """Record a failed version (its snapshot goes; ``FAILED`` holds the error)."""
    vdir = version_dir(root, version)
    with contextlib.suppress(
        OSError, DataError
    ):  # a marker that cannot be written (or a link there) leaves no snapshot either
        shutil.rmtree(vdir / SNAPSHOT, ignore_errors=True)
        if vdir.is_dir():
            with atomic_write(vdir / FAILED) as f:
                f.write(error)
