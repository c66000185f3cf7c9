"""FAISS indices for dense retrieval: build, search, save and load.

On disk an index is a folder with the FAISS file ``index`` and the document ids in row order,
one per line, in ``docid`` (the pyserini layout). Loading checks that both have the same count.
A flat inner-product index is the default; IVF, IVF-PQ and HNSW are available for large corpora,
and ``auto`` picks one that fits a memory budget (:func:`choose_index`). Indices are built from an
array or from shards added chunk by chunk (:mod:`dr.retrieval.shards`). On a GPU, flat and IVF
indices are searched by FAISS when its GPU build passes a probe, else flat ones by torch
(:mod:`dr.retrieval.gpu`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

import faiss
import numpy as np

from dr.config import ConfigError
from dr.data.io import DataError, atomic_write, numbered_lines
from dr.retrieval.index_record import check_save_record, write_save_record
from dr.retrieval.gpu import TorchFlatSearch, faiss_to_gpus, search_backend

log = logging.getLogger(__name__)

IndexKind = Literal["auto", "flat", "ivf", "ivfpq", "hnsw"]
INDEX_KINDS = ("auto", "flat", "ivf", "ivfpq", "hnsw")
INDEX_FILE = "index"
DOCID_FILE = "docid"
#: Bytes per code of IVF-PQ sub-quantizers that FAISS GPU supports (8 bits each); the auto choice picks among them.
PQ_BYTES = (64, 48, 32, 24, 16, 12, 8, 4)
_ID_BYTES = 8  # an IVF list stores an int64 id per vector


def gpu_available() -> bool:
    """True when some GPU search works here: FAISS GPU that passed its probe, or torch with CUDA
    (exact search as matrix products, :mod:`dr.retrieval.gpu`)."""
    return search_backend() != "cpu"


def default_nlist(n: int) -> int:
    """IVF lists: sqrt(N), the usual FAISS rule of thumb, with >= 39 training points per list."""
    return max(1, min(int(np.sqrt(n)), n // 39 or 1))


def index_bytes(
    kind: str, n: int, dim: int, nlist: int | None = None, pq_m: int = 48, hnsw_m: int = 32, hnsw_storage: str = "flat"
) -> int:
    """The memory an index of ``n`` ``dim``-d vectors takes (FAISS layouts; the docids come on top).

    flat: 4·d per vector; ivf: 4·d + 8 (id) + the centroids; ivfpq: m code bytes + 8 (id) + the
    centroids and the PQ codebooks (256·d floats); hnsw: the vectors (4·d, or d with ``sq8``) plus
    ~2·M int32 links on level 0 (upper levels add ~1/M of that).
    """
    nlist = nlist or default_nlist(n)
    if kind == "flat":
        return 4 * n * dim
    if kind == "ivf":
        return n * (4 * dim + _ID_BYTES) + 4 * nlist * dim
    if kind == "ivfpq":
        return n * (pq_m + _ID_BYTES) + 4 * nlist * dim + 4 * 256 * dim
    if kind == "hnsw":
        per_vector = dim if hnsw_storage == "sq8" else 4 * dim
        return int(n * (per_vector + 2 * hnsw_m * 4 * (1 + 1 / hnsw_m)))
    raise ConfigError(f"index_kind={kind}: expected one of {', '.join(INDEX_KINDS[1:])}")


def choose_index(
    n: int,
    dim: int,
    memory_budget_gb: float,
    on_gpu: bool = False,
    hnsw_m: int = 32,
    hnsw_max_vectors: int = 1_000_000,
    nlist: int | None = None,
) -> tuple[str, dict]:
    """The ``auto`` rule: ``(kind, parameters)`` for ``n`` vectors under ``memory_budget_gb``.

    1. flat (exact) when ``4·n·d`` bytes fit;
    2. else HNSW over 8-bit scalar-quantised vectors when it fits, the search runs on the CPU
       (FAISS has no GPU HNSW) and ``n <= hnsw_max_vectors`` (HNSW builds by inserting one vector at
       a time: ~1M vectors is minutes on a few cores, MS MARCO's 8.8M hours);
    3. else IVF-PQ with the largest code (bytes per vector, :data:`PQ_BYTES`, dividing ``dim``) that fits.
    """
    budget = memory_budget_gb * 2**30
    if index_bytes("flat", n, dim) <= budget:
        return "flat", {}
    if (
        not on_gpu
        and n <= hnsw_max_vectors
        and index_bytes("hnsw", n, dim, hnsw_m=hnsw_m, hnsw_storage="sq8") <= budget
    ):
        return "hnsw", {"hnsw_storage": "sq8"}
    fitting = [m for m in PQ_BYTES if dim % m == 0 and index_bytes("ivfpq", n, dim, nlist, pq_m=m) <= budget]
    if not fitting:
        need = index_bytes(
            "ivfpq",
            n,
            dim,
            nlist,
            pq_m=min(m for m in PQ_BYTES if dim % m == 0) if any(dim % m == 0 for m in PQ_BYTES) else 1,
        )
        raise ConfigError(
            f"index_memory_gb={memory_budget_gb}: no index of {n} {dim}-d vectors fits in {memory_budget_gb} GiB (the "
            f"smallest IVF-PQ needs "
            f"{need / 2**20:.1f} MiB); raise index_memory_gb"
        )
    return "ivfpq", {"pq_m": fitting[0]}


def _build_cpu_index(
    dim: int, kind: str, n: int, nlist: int | None, hnsw_m: int, pq_m: int = 48, hnsw_storage: str = "flat"
) -> faiss.Index:
    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind in ("ivf", "ivfpq"):
        nlist = nlist or default_nlist(n)
        quantizer = faiss.IndexFlatIP(dim)
        if kind == "ivf":
            return faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        if dim % pq_m:
            raise ConfigError(f"index_params.pq_m={pq_m}: IVF-PQ needs pq_m dividing the dimension {dim}")
        if n < 256:
            raise ConfigError(
                f"index_kind=ivfpq: IVF-PQ needs at least 256 vectors to train its 8-bit codebooks, got {n}; "
                "use index_kind=flat"
            )
        return faiss.IndexIVFPQ(quantizer, dim, nlist, pq_m, 8, faiss.METRIC_INNER_PRODUCT)
    if kind == "hnsw":
        if hnsw_storage == "sq8":
            return faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        return faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
    raise ConfigError(f"index_kind={kind}: expected one of {', '.join(INDEX_KINDS)}")


def _as_chunks(embeddings) -> list[np.ndarray]:
    """An array ``[N, dim]`` or a sequence of them (e.g. the memory-mapped shards of
    :class:`dr.retrieval.shards.ShardedEmbeddings`) as a list of 2-d arrays."""
    if isinstance(embeddings, np.ndarray):
        return [embeddings]
    return [np.asarray(chunk) for chunk in embeddings]


def _training_sample(chunks: list[np.ndarray], size: int, seed: int = 0) -> np.ndarray:
    """``size`` rows drawn uniformly without replacement across ``chunks`` (float32, in row order)."""
    n = sum(len(c) for c in chunks)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(size, n), replace=False))
    starts = np.cumsum([0] + [len(c) for c in chunks])
    parts = []
    for i, chunk in enumerate(chunks):
        lo, hi = np.searchsorted(rows, [starts[i], starts[i + 1]])
        if hi > lo:
            parts.append(np.asarray(chunk[rows[lo:hi] - starts[i]], dtype=np.float32))
    return np.ascontiguousarray(np.concatenate(parts))


class DenseIndex:
    """A FAISS inner-product index plus the document ids of its rows."""

    def __init__(self, index: faiss.Index, docids: list[str]):
        if index.ntotal != len(docids):
            raise ValueError(f"index holds {index.ntotal} vectors but {len(docids)} docids were given")
        self.index = index
        self.docids = list(docids)
        self._search_index = index
        self.kind = _kind_of(index)

    @classmethod
    def build(
        cls,
        embeddings,
        docids: list[str],
        kind: IndexKind = "flat",
        use_gpu: bool | None = None,
        nlist: int | None = None,
        nprobe: int = 32,
        hnsw_m: int = 32,
        ef_search: int = 128,
        gpu_fp16: bool = False,
        pq_m: int = 48,
        hnsw_storage: str = "flat",
        memory_budget_gb: float = 8.0,
        hnsw_max_vectors: int = 1_000_000,
        add_chunk: int = 1 << 16,
    ) -> "DenseIndex":
        """Index ``embeddings`` with inner product: a float ``[N, dim]`` array, or a sequence of
        such arrays (shards, possibly memory-mapped float16) added one chunk at a time.

        ``kind="auto"`` picks flat, HNSW or IVF-PQ to fit ``memory_budget_gb`` (:func:`choose_index`).
        IVF kinds are trained on a uniform sample of the rows (~40 per list). ``use_gpu=None``
        searches on a GPU when one works (:mod:`dr.retrieval.gpu`; flat and IVF only: FAISS has no GPU
        HNSW); ``gpu_fp16`` stores the GPU copy in float16 (half the memory, for refreshes).
        """
        chunks = _as_chunks(embeddings)
        n = sum(len(c) for c in chunks)
        dim = chunks[0].shape[1] if chunks and chunks[0].ndim == 2 else -1
        if any(c.ndim != 2 or c.shape[1] != dim for c in chunks) or n != len(docids):
            raise ValueError(f"expected embeddings of shape [{len(docids)}, dim], got {[c.shape for c in chunks]}")
        if use_gpu is None:
            use_gpu = gpu_available()
        if kind == "auto":
            kind, chosen = choose_index(
                n, dim, memory_budget_gb, on_gpu=use_gpu, hnsw_m=hnsw_m, hnsw_max_vectors=hnsw_max_vectors, nlist=nlist
            )
            pq_m, hnsw_storage = chosen.get("pq_m", pq_m), chosen.get("hnsw_storage", hnsw_storage)
            log.info(
                "index_kind=auto: %s for %d %d-d vectors under %.1f GiB (%s)",
                kind,
                n,
                dim,
                memory_budget_gb,
                chosen or "exact",
            )
        index = _build_cpu_index(dim, kind, n, nlist, hnsw_m, pq_m, hnsw_storage)
        if not index.is_trained:
            per_list = 40 * getattr(index, "nlist", 1)
            index.train(_training_sample(chunks, max(per_list, 256 * 40) if kind != "hnsw" else 100_000))
        if kind in ("ivf", "ivfpq"):
            index.nprobe = nprobe
        if kind == "hnsw":
            index.hnsw.efSearch = ef_search
        for chunk in chunks:
            for start in range(0, len(chunk), add_chunk):
                index.add(np.ascontiguousarray(chunk[start : start + add_chunk], dtype=np.float32))
        built = cls(index, docids)
        if use_gpu and kind != "hnsw":
            built.to_gpu(fp16=gpu_fp16)
        return built

    def to_gpu(self, device: int | None = None, fp16: bool = False) -> "DenseIndex":
        """Search on the GPU from now on; the CPU copy stays for saving.

        FAISS GPU when its probe passed (sharded over all GPUs when there are several and no
        ``device`` is named; vectors in float16 with ``fp16``); else, for a flat index, exact torch
        search on CUDA (:class:`dr.retrieval.gpu.TorchFlatSearch`); else the CPU index with a warning.
        """
        backend = search_backend()
        if backend == "cpu":
            raise RuntimeError("no GPU search here: neither FAISS GPU nor torch sees a usable CUDA device")
        if backend == "faiss-gpu":
            self._search_index, self._gpu_resources = faiss_to_gpus(self.index, fp16=fp16, device=device)
        elif self.kind == "flat":
            self._search_index = TorchFlatSearch(self.index.reconstruct_n(0, self.index.ntotal), f"cuda:{device or 0}")
        else:
            log.warning(
                "a %s index is searched on the CPU: FAISS has no working GPU here and torch search is exact (flat) "
                "only",
                self.kind,
            )
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

    def vectors_of(self, docids: list[str], source: str) -> np.ndarray:
        """The stored vectors of ``docids``, in that order: a flat index that holds exactly those
        passages (any order), e.g. a ``dr-train`` export's ``index/`` read instead of encoding the
        corpus again. ``source`` names the index in the one-line error otherwise."""
        row = {d: i for i, d in enumerate(self.docids)}
        if self.kind != "flat" or len(row) != len(docids) or any(d not in row for d in docids):
            raise ValueError(
                f"{source}: expected a flat index of exactly the corpus's {len(docids)} passages, got a "
                f"{self.kind} index of {len(row)}"
            )
        vectors = self.index.reconstruct_n(0, len(row))
        return np.ascontiguousarray(vectors[[row[d] for d in docids]])

    # ------------------------------------------------------------------ persistence
    def save(self, out_dir: str | os.PathLike) -> None:
        """Write ``index`` and ``docid`` atomically into ``out_dir``.

        Both files are written out in full before either replaces a previous one, so a failed
        write (an ``OSError`` naming the file) leaves the previous index and docids as they were.
        """
        out = Path(out_dir)
        data = faiss.serialize_index(self.index).tobytes()
        docid_text = "".join(f"{docid}\n" for docid in self.docids).encode("utf-8")
        with atomic_write(out / INDEX_FILE, "wb") as index_file:
            index_file.write(data)
            index_file.flush()  # the index is on disk (a full disk shows here) before the docids are committed
            os.fsync(index_file.fileno())
            with atomic_write(out / DOCID_FILE, "wb") as f:
                f.write(docid_text)
        write_save_record(out, data, docid_text, self.index.ntotal)

    @classmethod
    def load(cls, index_dir: str | os.PathLike, use_gpu: bool | None = None) -> "DenseIndex":
        """Read a saved index; the count of docids must equal the index size."""
        index_dir = Path(index_dir)
        for name in (INDEX_FILE, DOCID_FILE):
            if not (index_dir / name).is_file():
                raise FileNotFoundError(
                    f"{index_dir / name}: missing; expected a FAISS index folder with '{INDEX_FILE}' and '{DOCID_FILE}'"
                )
        try:
            index = faiss.read_index(str(index_dir / INDEX_FILE))
        except RuntimeError as e:  # FAISS's reader raises RuntimeError on a file it cannot parse
            raise DataError(
                index_dir / INDEX_FILE,
                None,
                f"expected a FAISS index file, got one FAISS cannot read ({str(e).splitlines()[0]})",
            ) from None
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
        check_save_record(index_dir, len(docids))
        loaded = cls(index, docids)
        if use_gpu is None:
            use_gpu = gpu_available() and loaded.kind != "hnsw"
        if use_gpu:
            loaded.to_gpu()
        return loaded


def _kind_of(index: faiss.Index) -> str:
    """``flat``, ``ivf``, ``ivfpq``, ``hnsw`` (or the FAISS class name) of a CPU index."""
    for cls, kind in (
        (faiss.IndexFlat, "flat"),
        (faiss.IndexIVFPQ, "ivfpq"),
        (faiss.IndexIVF, "ivf"),
        (faiss.IndexHNSW, "hnsw"),
    ):
        if isinstance(index, cls):
            return kind
    return type(index).__name__
