"""GPU search that works on the GPUs people rent.

The faiss-gpu wheels on PyPI ship kernels up to compute capability 8.x: on an H100 (9.0) they
import, report the device, and fail at the first search with "no kernel image is available for
execution on the device" (faiss-wheels issue #151). So before FAISS gets a GPU index,
:func:`search_backend` probes it once per process with a tiny add and search, and picks:

- ``"faiss-gpu"``: the probe passed; flat and IVF indices are searched by FAISS on the GPU(s)
  (sharded across devices when there are several: ``index_cpu_to_all_gpus`` with ``shard=True``);
- ``"torch"``: FAISS has no usable GPU but torch sees CUDA (the probe failed: one warning line;
  or faiss-cpu is installed): exact search as matrix products and top-k on the GPU
  (:class:`TorchFlatSearch`, float16, chunked over the corpus);
- ``"cpu"``: no GPU at all, FAISS on the CPU.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import numpy as np
import torch

log = logging.getLogger(__name__)


def faiss_gpu_count() -> int:
    """How many GPUs this FAISS build sees (0 for faiss-cpu)."""
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def probe_faiss_gpu(device: int = 0) -> str | None:
    """Add 64 vectors to a FAISS GPU flat index and search them; None if that worked, else why not."""
    import faiss

    try:
        x = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
        resources = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(resources, device, faiss.IndexFlatIP(8))
        index.add(x)
        _, rows = index.search(x[:4], 1)
        if rows[:, 0].tolist() != [int(np.argmax(x[i] @ x.T)) for i in range(4)]:
            return "the GPU search returned wrong neighbours"
        return None
    except Exception as e:  # a RuntimeError from a CUDA kernel launch, or a build without GPU classes
        return str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__


@lru_cache(maxsize=1)
def search_backend() -> str:
    """``"faiss-gpu"``, ``"torch"`` or ``"cpu"`` for this process (probed once; see the module doc)."""
    torch_cuda = torch.cuda.is_available()
    if faiss_gpu_count() > 0:
        problem = probe_faiss_gpu()
        if problem is None:
            return "faiss-gpu"
        if torch_cuda:
            log.warning(
                "FAISS GPU search failed its probe (%s); searching with torch on the GPU instead (exact, fp16)", problem
            )
            return "torch"
        log.warning("FAISS GPU search failed its probe (%s); searching with FAISS on the CPU", problem)
        return "cpu"
    return "torch" if torch_cuda else "cpu"


class TorchFlatSearch:
    """Exact inner-product top-k as torch matrix products, chunked over the corpus.

    The corpus lives on ``device`` (float16 on a GPU, float32 on the CPU unless ``dtype`` says
    otherwise); each block of queries is scored against ``chunk_size`` passages at a time and a
    running top-k is kept, so the score matrix never exceeds ``queries × chunk_size``. Same
    ``search(queries, k) -> (scores, rows)`` contract as a FAISS index (float32, int64).
    """

    def __init__(
        self,
        embeddings: np.ndarray,
        device: str | torch.device = "cuda",
        dtype: torch.dtype | None = None,
        chunk_size: int = 1 << 18,
    ):
        self.device = torch.device(device)
        self.dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        self.chunk_size = int(chunk_size)
        self.ntotal = len(embeddings)
        self.corpus = torch.as_tensor(np.ascontiguousarray(embeddings)).to(self.device, self.dtype)

    @torch.inference_mode()
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = torch.as_tensor(np.ascontiguousarray(queries, dtype=np.float32)).to(self.device, self.dtype)
        k = min(k, self.ntotal)
        best_scores = torch.full((len(q), 0), float("-inf"), device=self.device, dtype=torch.float32)
        best_rows = torch.zeros((len(q), 0), device=self.device, dtype=torch.int64)
        for start in range(0, self.ntotal, self.chunk_size):
            scores = (q @ self.corpus[start : start + self.chunk_size].T).float()
            top_scores, top_rows = scores.topk(min(k, scores.shape[1]), dim=1)
            merged_scores = torch.cat([best_scores, top_scores], dim=1)
            merged_rows = torch.cat([best_rows, top_rows + start], dim=1)
            best_scores, picked = merged_scores.topk(min(k, merged_scores.shape[1]), dim=1)
            best_rows = merged_rows.gather(1, picked)
        return best_scores.cpu().numpy(), best_rows.cpu().numpy()


def faiss_to_gpus(index, fp16: bool = False, device: int | None = None):
    """A FAISS GPU copy of ``index``: on ``device``, or sharded over every GPU when there are several
    and ``device`` is None (each GPU holds a slice of the rows; results are merged by FAISS).

    Not run by the test suite (no GPU there); :func:`search_backend` must have said ``"faiss-gpu"``.
    """
    import faiss

    if device is None and faiss_gpu_count() > 1:
        options = faiss.GpuMultipleClonerOptions()
        options.shard = True
        options.useFloat16 = fp16
        return faiss.index_cpu_to_all_gpus(index, co=options), None
    resources = faiss.StandardGpuResources()
    options = faiss.GpuClonerOptions()
    options.useFloat16 = fp16
    return faiss.index_cpu_to_gpu(resources, device or 0, index, options), resources
