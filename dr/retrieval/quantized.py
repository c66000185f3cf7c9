"""Quantised passage embeddings for search: int8 and binary, with sentence-transformers' semantics.

``int8``: each dimension is cut into 256 equal buckets between its calibration minimum and maximum
(``ranges``, ``[2, dim]``: by default the corpus's own per-dimension min and max), exactly the codes
of sentence-transformers' ``quantize_embeddings(x, "int8", ranges=ranges)`` (plus 128, as unsigned
bytes; computed with its arithmetic). FAISS stores them in an ``IndexScalarQuantizer``
(``QT_8bit``) whose trained ranges are set to ``ranges``, and scores the float query against each passage's
de-quantised vector: the score
sentence-transformers' rescoring computes, here over the whole corpus (FAISS adds half a bucket to
each de-quantised value: a constant per query, so the ranking is the same). 4x smaller than float32.

``binary``: one bit per dimension, ``x > 0`` (``quantize_embeddings(x, "ubinary")``), in a FAISS
``IndexBinaryFlat``. The query is binarised too and the ``k · rescore_multiplier`` passages nearest
in Hamming distance are rescored with the float query (sentence-transformers'
``semantic_search_faiss(..., rescore=True)``) against the passages' bits (``rescore="binary"``:
``q · bits``, no more storage) or their int8 codes (``rescore="int8"``: ``q · dequant(codes)``,
stored beside the bits). ``rescore="none"`` keeps the Hamming order, scored as the dot product of
the two sign vectors (``dim - 2 · hamming``). 32x smaller than float32 (plus 8x for int8 rescoring).

On disk: the folder of :mod:`dr.retrieval.index` (``index``, ``docid``) plus ``quantization.json``
(precision, rescoring) and, for int8 codes, ``rescore`` (binary's int8 copy). Loading checks the counts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import faiss
import numpy as np

from dr.data.io import DataError, atomic_write, numbered_lines
from dr.retrieval.index import DOCID_FILE, INDEX_FILE, DenseIndex

PRECISIONS = ("float32", "int8", "binary")
RESCORE = ("binary", "int8", "none")
QUANTIZATION_FILE = "quantization.json"
RESCORE_FILE = "rescore"


def calibration_ranges(embeddings) -> np.ndarray:
    """Per-dimension ``[min; max]`` (``[2, dim]``, float32) over an array or a sequence of chunks."""
    chunks = [embeddings] if isinstance(embeddings, np.ndarray) else list(embeddings)
    lo = np.min([np.asarray(c, dtype=np.float32).min(axis=0) for c in chunks if len(c)], axis=0)
    hi = np.max([np.asarray(c, dtype=np.float32).max(axis=0) for c in chunks if len(c)], axis=0)
    return np.stack([lo, hi]).astype(np.float32)


def int8_index(ranges: np.ndarray) -> faiss.IndexScalarQuantizer:
    """An empty 8-bit scalar-quantiser index whose per-dimension ranges are ``ranges`` (min; max)."""
    dim = ranges.shape[1]
    index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    faiss.copy_array_to_vector(np.concatenate([ranges[0], ranges[1] - ranges[0]]).astype(np.float32), index.sq.trained)
    index.is_trained = True
    return index


def int8_codes(x: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """Unsigned 8-bit codes, sentence-transformers' arithmetic: floor((x - min) / step) in [0, 255],
    step = (max - min) / 255 (its signed int8 codes are these minus 128). Computed here rather than by
    FAISS's encoder, which rounds differently at bucket edges."""
    step = (ranges[1] - ranges[0]) / 255
    step = np.where(step == 0, 1, step)
    return np.clip(np.floor((x - ranges[0]) / step), 0, 255).astype(np.uint8)


def binarize(x: np.ndarray) -> np.ndarray:
    """``x > 0`` packed 8 dimensions a byte (sentence-transformers' ``ubinary``)."""
    return np.packbits(np.asarray(x) > 0, axis=-1)


class QuantizedIndex:
    """An int8 or binary index of passage embeddings plus their docids (see the module docstring)."""

    def __init__(self, precision: str, index, docids: list[str], rescore: str = "binary", rescore_index=None):
        if precision not in PRECISIONS[1:]:
            raise ValueError(f"embedding_precision must be int8 or binary here, got {precision!r}")
        if rescore not in RESCORE:
            raise ValueError(f"rescore must be one of {', '.join(RESCORE)}, got {rescore!r}")
        if index.ntotal != len(docids) or (rescore_index is not None and rescore_index.ntotal != len(docids)):
            raise ValueError(f"index holds {index.ntotal} vectors but {len(docids)} docids were given")
        self.precision, self.index, self.docids, self.rescore, self.rescore_index = (
            precision,
            index,
            list(docids),
            rescore,
            rescore_index,
        )
        self.dim = index.d
        self._bits: np.ndarray | None = None  # the binary codes as an array, read once for rescoring

    @classmethod
    def build(
        cls,
        embeddings,
        docids: list[str],
        precision: str,
        ranges: np.ndarray | None = None,
        rescore: str = "binary",
        add_chunk: int = 1 << 16,
    ) -> "QuantizedIndex":
        """Quantise float ``embeddings`` (an array or chunks of one, e.g. shards) and index them.

        ``ranges`` calibrate int8 (default: the embeddings' own per-dimension min and max)."""
        chunks = [embeddings] if isinstance(embeddings, np.ndarray) else list(embeddings)
        needs_int8 = precision == "int8" or rescore == "int8"
        if needs_int8 and ranges is None:
            ranges = calibration_ranges(chunks)
        dim = chunks[0].shape[1]
        main = int8_index(ranges) if precision == "int8" else faiss.IndexBinaryFlat(dim)
        extra = int8_index(ranges) if precision == "binary" and rescore == "int8" else None
        for chunk in chunks:
            for start in range(0, len(chunk), add_chunk):
                part = np.ascontiguousarray(chunk[start : start + add_chunk], dtype=np.float32)
                if precision == "int8":
                    main.add_sa_codes(int8_codes(part, ranges))
                else:
                    main.add(binarize(part))
                if extra is not None:
                    extra.add_sa_codes(int8_codes(part, ranges))
        return cls(precision, main, docids, rescore if precision == "binary" else "none", extra)

    @classmethod
    def from_dense(cls, dense: DenseIndex, precision: str, rescore: str = "binary") -> "QuantizedIndex":
        """Quantise the vectors of a flat float index (its own calibration ranges)."""
        if dense.kind != "flat":
            raise ValueError(
                f"embedding_precision={precision} re-quantises a flat float index, got a {dense.kind} index"
            )
        return cls.build(dense.index.reconstruct_n(0, dense.index.ntotal), dense.docids, precision, rescore=rescore)

    def __len__(self) -> int:
        return self.index.ntotal

    @property
    def nbytes(self) -> int:
        """The bytes of the codes searched and rescored (FAISS's own, without the docids)."""
        per_vector = self.dim if self.precision == "int8" else self.dim // 8
        return len(self) * (per_vector + (self.dim if self.rescore_index is not None else 0))

    def search(self, queries: np.ndarray, k: int, rescore_multiplier: int = 2) -> tuple[np.ndarray, list[list[str]]]:
        """Top-k scores ``[Q, k']`` and docids for float ``queries`` (``k' = min(k, len)``)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(k, len(self))
        if self.precision == "int8":
            scores, rows = self.index.search(queries, k)
        else:
            scores, rows = self._search_binary(queries, k, rescore_multiplier)
        return scores, [[self.docids[r] for r in row if r >= 0] for row in rows]

    def _search_binary(self, queries: np.ndarray, k: int, rescore_multiplier: int) -> tuple[np.ndarray, np.ndarray]:
        shortlist = k if self.rescore == "none" else min(len(self), k * max(1, int(rescore_multiplier)))
        hamming, rows = self.index.search(binarize(queries), shortlist)
        if self.rescore == "none":
            return (self.dim - 2 * hamming).astype(np.float32), rows
        flat = rows.reshape(-1).clip(min=0)
        if self.rescore == "int8":
            passages = self.rescore_index.reconstruct_batch(flat)
        else:  # the passages' bits, 0/1 (sentence-transformers' rescoring of ubinary)
            if self._bits is None:
                self._bits = self.index.reconstruct_n(0, len(self))
            passages = np.unpackbits(self._bits[flat], axis=-1)[:, : self.dim].astype(np.float32)
        scores = np.einsum("qd,qkd->qk", queries, passages.reshape(len(queries), shortlist, self.dim))
        scores[rows < 0] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, axis=1).astype(np.float32), np.take_along_axis(rows, order, axis=1)

    def search_run(
        self, qids: list[str], queries: np.ndarray, k: int, rescore_multiplier: int = 2
    ) -> dict[str, dict[str, float]]:
        """Search and return a run ``{qid: {docid: score}}``."""
        scores, docids = self.search(queries, k, rescore_multiplier)
        return {qid: {d: float(s) for d, s in zip(row, srow)} for qid, row, srow in zip(qids, docids, scores)}

    # ------------------------------------------------------------------ persistence
    def save(self, out_dir: str | os.PathLike) -> None:
        """Write ``index``, ``docid``, ``quantization.json`` (and ``rescore``) atomically into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write = faiss.serialize_index if self.precision == "int8" else faiss.serialize_index_binary
        with atomic_write(out / INDEX_FILE, "wb") as f:
            f.write(write(self.index).tobytes())
        if self.rescore_index is not None:
            with atomic_write(out / RESCORE_FILE, "wb") as f:
                f.write(faiss.serialize_index(self.rescore_index).tobytes())
        with atomic_write(out / DOCID_FILE, "w") as f:
            f.writelines(d + "\n" for d in self.docids)
        with atomic_write(out / QUANTIZATION_FILE, "w") as f:
            json.dump({"precision": self.precision, "rescore": self.rescore, "dim": self.dim}, f, indent=2)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "QuantizedIndex":
        """Read a saved quantised index; the count of docids must equal the index size."""
        path = Path(path)
        meta = json.loads((path / QUANTIZATION_FILE).read_text())
        raw = np.fromfile(path / INDEX_FILE, dtype=np.uint8)
        index = faiss.deserialize_index(raw) if meta["precision"] == "int8" else faiss.deserialize_index_binary(raw)
        with numbered_lines(path / DOCID_FILE) as lines:
            docids = [line.rstrip("\n") for _, line in lines]
        rescore_file = path / RESCORE_FILE
        rescore_index = (
            faiss.deserialize_index(np.fromfile(rescore_file, dtype=np.uint8)) if rescore_file.is_file() else None
        )
        if index.ntotal != len(docids):
            raise DataError(
                path / DOCID_FILE,
                None,
                f"{len(docids)} docids but the index holds {index.ntotal} vectors; the folder is inconsistent",
            )
        return cls(meta["precision"], index, docids, meta["rescore"], rescore_index)


def is_quantized(path: str | os.PathLike) -> bool:
    """True when the index folder ``path`` holds a :class:`QuantizedIndex`."""
    return (Path(path) / QUANTIZATION_FILE).is_file()
