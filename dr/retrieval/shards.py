"""Encoding a corpus larger than memory: shards of embeddings on disk, resumable.

The corpus stays the memory-mapped Arrow table of :func:`dr.data.read_corpus`; it is encoded
``shard_size`` passages at a time and each shard's embeddings go to ``shard-NNNNN.npy`` (float32,
or float16 with ``fp16``: half the disk, ~3 decimal digits, enough for search). ``manifest.json``
lists the finished shards; both are written atomically (temporary file, then rename) and the
manifest only after its shard, so a killed encode leaves the shards it finished and nothing half
written. Run again with the same folder, it skips them and continues at the first missing one.

The manifest also records what the embeddings depend on (the encoder's weights and settings, the
corpus table's fingerprint and size, the shard size and dtype); when any of that changed, the old
shards are stale: they are deleted and the encode starts over (with a warning).

:class:`ShardedEmbeddings` reads the result back memory-mapped; :meth:`dr.retrieval.DenseIndex.build`
takes it and adds the shards one chunk at a time, so neither step holds every embedding in memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from tqdm.auto import tqdm

from dr.data import DataError, passage_texts
from dr.data.io import atomic_write, write_json

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "dr-sharded-embeddings/1"


def encoder_key(encoder) -> str:
    """What identifies an encoder's embeddings: every weight (a BiEncoder) or its files and settings (ONNX)."""
    if hasattr(encoder, "state_dict"):
        from dr.retrieval.cache import encoder_fingerprint

        return encoder_fingerprint(encoder)
    described = {"config": encoder.config_dict(), "paths": getattr(encoder, "paths", None)}
    return hashlib.sha1(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


def _shard_name(i: int) -> str:
    return f"shard-{i:05d}.npy"


class ShardedEmbeddings:
    """Embeddings written by :func:`encode_sharded`: the manifest and memory-mapped shards, in corpus row order."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        path = self.folder / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; expected a folder written by encode_sharded")
        manifest = read_manifest(path)
        if manifest.get("format") != FORMAT:
            raise DataError(path, None, f"expected format {FORMAT!r}, got {manifest.get('format')!r}")
        self.manifest = manifest
        if not self.complete:
            raise DataError(
                path,
                None,
                f"{len(manifest['shards'])} of {manifest['num_shards']} shards are done; "
                "run the encode again with this folder to finish it",
            )

    @property
    def complete(self) -> bool:
        return len(self.manifest["shards"]) == self.manifest["num_shards"]

    def __len__(self) -> int:
        return int(self.manifest["num_passages"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    def shards(self) -> Iterator[np.ndarray]:
        """Each shard, memory-mapped (its dtype as written), in order."""
        for shard in self.manifest["shards"]:
            yield np.load(self.folder / shard["file"], mmap_mode="r")

    def __iter__(self) -> Iterator[np.ndarray]:
        return self.shards()

    def to_array(self) -> np.ndarray:
        """Every embedding in one float32 array (only for corpora that fit in memory)."""
        return np.concatenate([np.asarray(s, dtype=np.float32) for s in self.shards()])


def encode_sharded(
    encoder,
    corpus,
    folder: str | os.PathLike,
    shard_size: int = 100_000,
    fp16: bool = False,
    batch_size: int = 64,
    bf16: bool = False,
    show_progress: bool = True,
    on_shard: Callable[[int, int], None] | None = None,
) -> ShardedEmbeddings:
    """Encode every passage of ``corpus`` (a :func:`dr.data.read_corpus` table) into shards in ``folder``.

    Resumes where a previous call with the same folder, encoder, corpus and settings stopped.
    ``on_shard(i, num_shards)`` is called after shard ``i`` is on disk and in the manifest.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    folder = Path(folder)
    n = len(corpus)
    num_shards = -(-n // shard_size)
    depends = {
        "encoder": encoder_key(encoder),
        "corpus": getattr(corpus, "_fingerprint", None),
        "num_passages": n,
        "shard_size": shard_size,
        "dtype": "float16" if fp16 else "float32",
    }
    manifest = _resume(folder, depends)
    manifest.update(format=FORMAT, num_shards=num_shards, depends=depends, num_passages=n)
    done = len(manifest["shards"])
    if done:
        log.info("%s: %d of %d shards already encoded; resuming at shard %d", folder, done, num_shards, done)
    for path in folder.glob(".shard-*.tmp"):  # what a killed write left behind
        path.unlink(missing_ok=True)
    bar = tqdm(
        total=n, initial=min(n, done * shard_size), desc="encoding shards", unit="passage", disable=not show_progress
    )
    for i in range(done, num_shards):
        start, stop = i * shard_size, min(n, (i + 1) * shard_size)
        emb = encoder.encode_passages(
            passage_texts(corpus, range(start, stop)), batch_size=batch_size, bf16=bf16, show_progress=False
        )
        emb = np.ascontiguousarray(emb, dtype=np.float16 if fp16 else np.float32)
        with atomic_write(folder / _shard_name(i), "wb") as f:
            np.save(f, emb)
        manifest["dim"] = int(emb.shape[1])
        manifest["shards"].append({"file": _shard_name(i), "start": start, "stop": stop})
        write_json(folder / MANIFEST, manifest)
        bar.update(stop - start)
        if on_shard is not None:
            on_shard(i, num_shards)
    bar.close()
    return ShardedEmbeddings(folder)


def read_manifest(path: Path) -> dict:
    """The shard manifest ``path``; a :class:`DataError` naming it when it is damaged."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if (
            isinstance(manifest, dict)
            and isinstance(manifest.get("shards", []), list)
            and all(isinstance(s, dict) and isinstance(s.get("file"), str) for s in manifest.get("shards", []))
        ):
            return manifest
    except (ValueError, UnicodeDecodeError):
        pass
    raise DataError(
        path,
        None,
        "expected the shard manifest dr-encode writes (JSON with format and shards), got a damaged "
        "file; it is safe to delete the folder (or this file and its shard-*.npy): the passages are then encoded again",
    )


def _resume(folder: Path, depends: dict) -> dict:
    """The manifest to continue from: the one in ``folder`` if it was written for ``depends``
    and its shard files are all there, else a fresh one (stale shards deleted)."""
    path = folder / MANIFEST
    if path.is_file():
        manifest = read_manifest(path)
        if (
            manifest.get("format") == FORMAT
            and manifest.get("depends") == depends
            and all((folder / s["file"]).is_file() for s in manifest.get("shards", []))
        ):
            return manifest
        log.warning(
            "%s: the shards there were written for another encoder, corpus or setting; encoding from scratch", folder
        )
        for stale in folder.glob("shard-*.npy"):
            stale.unlink()
        path.unlink()
    return {"shards": []}
