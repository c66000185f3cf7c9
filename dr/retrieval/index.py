"""FAISS indices for dense retrieval: build, search, save and load.

On disk an index is a folder with the FAISS file ``index`` and the document ids in row order,
one per line, in ``docid`` (the pyserini layout). Loading checks that both have the same count.
A flat inner-product index is the default; IVF and HNSW are available for large corpora. When
faiss-gpu and a CUDA device are present, flat and IVF indices are searched on the GPU.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import faiss
import numpy as np

from dr.data.io import DataError, atomic_write, numbered_lines

IndexKind = Literal["flat", "ivf", "hnsw"]
INDEX_FILE = "index"
DOCID_FILE = "docid"


def gpu_available() -> bool:
    """True when this FAISS build has GPU support and sees at least one device."""
    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def _build_cpu_index(dim: int, kind: IndexKind, n: int, nlist: int | None, hnsw_m: int) -> faiss.Index:
    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "ivf":
        # sqrt(N) lists is the usual FAISS rule of thumb; at least 39 points per centroid to train.
        nlist = nlist or max(1, min(int(np.sqrt(n)), n // 39 or 1))
        return faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    if kind == "hnsw":
        return faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
    raise ValueError(f"unknown index kind {kind!r}: expected 'flat', 'ivf' or 'hnsw'")


class DenseIndex:
    """A FAISS inner-product index plus the document ids of its rows."""

    def __init__(self, index: faiss.Index, docids: list[str]):
        if index.ntotal != len(docids):
            raise ValueError(f"index holds {index.ntotal} vectors but {len(docids)} docids were given")
        self.index = index
        self.docids = list(docids)
        self._search_index = index

    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        docids: list[str],
        kind: IndexKind = "flat",
        use_gpu: bool | None = None,
        nlist: int | None = None,
        nprobe: int = 32,
        hnsw_m: int = 32,
        ef_search: int = 128,
        gpu_fp16: bool = False,
    ) -> "DenseIndex":
        """Index ``embeddings`` (float32 ``[N, dim]``) with inner product.

        ``use_gpu=None`` uses the GPU when faiss-gpu sees one (flat and IVF only; HNSW is CPU-only
        in FAISS); ``gpu_fp16`` stores the GPU copy in float16 (half the memory, for refreshes).
        """
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[0] != len(docids):
            raise ValueError(f"expected embeddings of shape [{len(docids)}, dim], got {embeddings.shape}")
        index = _build_cpu_index(embeddings.shape[1], kind, len(docids), nlist, hnsw_m)
        if kind == "ivf":
            index.train(embeddings)
            index.nprobe = nprobe
        if kind == "hnsw":
            index.hnsw.efSearch = ef_search
        index.add(embeddings)
        built = cls(index, docids)
        if use_gpu is None:
            use_gpu = gpu_available() and kind != "hnsw"
        if use_gpu:
            built.to_gpu(fp16=gpu_fp16)
        return built

    def to_gpu(self, device: int = 0, fp16: bool = False) -> "DenseIndex":
        """Search on a GPU from now on (vectors in float16 with ``fp16``); the CPU copy stays for saving."""
        if not gpu_available():
            raise RuntimeError("FAISS has no GPU support here (install faiss-gpu and use a CUDA device)")
        resources = faiss.StandardGpuResources()
        options = faiss.GpuClonerOptions()
        options.useFloat16 = fp16
        self._gpu_resources = resources
        self._search_index = faiss.index_cpu_to_gpu(resources, device, self.index, options)
        return self

    @property
    def on_gpu(self) -> bool:
        return self._search_index is not self.index

    def __len__(self) -> int:
        return self.index.ntotal

    def search(self, queries: np.ndarray, k: int, batch_size: int = 4096) -> tuple[np.ndarray, list[list[str]]]:
        """Top-k by inner product: returns scores ``[Q, k]`` and the docids of each row.

        Queries are searched in chunks of ``batch_size`` so memory stays bounded. When the index
        holds fewer than ``k`` vectors, rows are cut to what exists.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(k, len(self))
        all_scores, all_rows = [], []
        for start in range(0, len(queries), batch_size):
            scores, rows = self._search_index.search(queries[start : start + batch_size], k)
            all_scores.append(scores)
            all_rows.append(rows)
        scores = np.concatenate(all_scores) if all_scores else np.zeros((0, k), np.float32)
        rows = np.concatenate(all_rows) if all_rows else np.zeros((0, k), np.int64)
        docids = [[self.docids[r] for r in row if r >= 0] for row in rows]
        return scores, docids

    def search_run(self, qids: list[str], queries: np.ndarray, k: int) -> dict[str, dict[str, float]]:
        """Search and return a run ``{qid: {docid: score}}``."""
        scores, docids = self.search(queries, k)
        return {
            qid: {docid: float(score) for docid, score in zip(row_ids, row_scores)}
            for qid, row_ids, row_scores in zip(qids, docids, scores)
        }

    # ------------------------------------------------------------------ persistence
    def save(self, out_dir: str | os.PathLike) -> None:
        """Write ``index`` and ``docid`` atomically into ``out_dir``.

        Both files are written out in full before either replaces a previous one, so a failed
        write (an ``OSError`` naming the file) leaves the previous index and docids as they were.
        """
        out = Path(out_dir)
        with atomic_write(out / INDEX_FILE, "wb") as index_file:
            index_file.write(faiss.serialize_index(self.index).tobytes())
            index_file.flush()  # the index is on disk (a full disk shows here) before the docids are committed
            os.fsync(index_file.fileno())
            with atomic_write(out / DOCID_FILE) as f:
                for docid in self.docids:
                    f.write(f"{docid}\n")

    @classmethod
    def load(cls, index_dir: str | os.PathLike, use_gpu: bool | None = None) -> "DenseIndex":
        """Read a saved index; the count of docids must equal the index size."""
        index_dir = Path(index_dir)
        for name in (INDEX_FILE, DOCID_FILE):
            if not (index_dir / name).is_file():
                raise FileNotFoundError(f"{index_dir / name}: missing; expected a FAISS index folder with '{INDEX_FILE}' and '{DOCID_FILE}'")
        try:
            index = faiss.read_index(str(index_dir / INDEX_FILE))
        except RuntimeError as e:  # FAISS's reader raises RuntimeError on a file it cannot parse
            raise DataError(index_dir / INDEX_FILE, None, f"expected a FAISS index file, got one FAISS cannot read ({str(e).splitlines()[0]})") from None
        docids = []
        with numbered_lines(index_dir / DOCID_FILE) as lines:
            for line_no, line in lines:
                docid = line.rstrip("\n")
                if not docid or "\t" in docid:
                    raise DataError(index_dir / DOCID_FILE, line_no, "expected one docid per line")
                docids.append(docid)
        if len(docids) != index.ntotal:
            raise DataError(
                index_dir / DOCID_FILE,
                None,
                f"{len(docids)} docids but the index holds {index.ntotal} vectors; the folder is inconsistent",
            )
        loaded = cls(index, docids)
        if use_gpu is None:
            use_gpu = gpu_available() and not isinstance(index, faiss.IndexHNSW)
        if use_gpu:
            loaded.to_gpu()
        return loaded
