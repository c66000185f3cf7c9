"""Cross-device negatives: every rank's query and passage embeddings gathered, gradient kept.

Under DDP each rank encodes its own slice of the global batch. With ``module.gather_negatives``
the embeddings of all ranks are concatenated (rank 0's rows first) by
``torch.distributed.nn.functional.all_gather``, which keeps the graph: its backward sends each
rank the gradient of its own rows, summed over the ranks. The loss then sees the whole global
batch exactly as one process would see the concatenated batch: every query scores every rank's
passages, so the in-batch negatives grow with the number of devices (as DPR, Karpukhin et al.
2020, Sec. 3.2, and Tevatron do on several GPUs).

The supervision tensors are rewritten for the concatenated layout: column indexes (``target``,
``neg_index``) are offset by the number of passages of the ranks before, teacher scores are
concatenated (rows padded with NaN, which every loss skips), and the known-positive mask
``exclude`` is rebuilt from corpus row ids (``positive_rows`` and ``passage_rows``, see
:meth:`dr.training.RetrievalDataModule.collate_train`), so a relevant document that another rank
drew is masked too. The in-batch teacher matrix is gathered by the module, rows per rank
(:func:`gather_rows`).

Loss scale: every rank computes the same loss, the mean over all W·B queries. The gather's
backward sums the W identical contributions, so each rank's gradient is W times its share of the
true gradient, and DDP's average over the W ranks divides it back: the update equals the
single-process gradient of the concatenated batch, with no extra factor (Tevatron multiplies its
loss by W because its gather drops the other ranks' gradients; this one keeps them).
``tests/test_gather.py`` checks the loss and every parameter's gradient against one process.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.nn.functional import all_gather as all_gather_with_grad


def world_size() -> int:
    """The default process group's size; 1 when torch.distributed is not initialised."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_rows(t: torch.Tensor, pad_value: float | int = 0) -> tuple[torch.Tensor, list[int]]:
    """Every rank's ``t`` concatenated along dim 0 (rank order), with each rank's row count.

    Ranks may hold different shapes: trailing dims are padded with ``pad_value`` to the largest
    (e.g. ``neg_index`` widths), and dim 0 is padded for the collective then cut back. The
    gradient flows back to every rank's rows when ``t`` requires grad.
    """
    if world_size() == 1:
        return t, [t.shape[0]]
    shape = torch.tensor(t.shape, dtype=torch.long, device=t.device)
    shapes = [torch.empty_like(shape) for _ in range(world_size())]
    dist.all_gather(shapes, shape)
    rows = [int(s[0]) for s in shapes]
    full = torch.stack(shapes).amax(0).tolist()
    pad = []
    for dim in reversed(range(t.dim())):
        pad += [0, full[dim] - t.shape[dim]]
    padded = F.pad(t, pad, value=pad_value) if any(pad) else t.contiguous()
    if t.requires_grad:
        with warnings.catch_warnings():
            # torch 2.13 marks it deprecated in favour of a private (_functional_collectives) API
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*all_gather is deprecated")
            parts = all_gather_with_grad(padded)
    else:
        parts = [torch.empty_like(padded) for _ in range(world_size())]
        dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, rows)]), rows


def gather_texts(texts: list[str]) -> list[str]:
    """Every rank's texts concatenated in rank order (for the in-batch teacher)."""
    if world_size() == 1:
        return list(texts)
    parts: list = [None] * world_size()
    dist.all_gather_object(parts, list(texts))
    return [t for part in parts for t in part]


def known_positives(positive_rows: torch.Tensor, passage_rows: torch.Tensor) -> torch.Tensor:
    """``[B, P]`` mask: passage j is a known positive of query i (``positive_rows[i]`` holds the
    corpus rows of query i's positives, padded with -1; ``passage_rows[j]`` passage j's row)."""
    hit = positive_rows[:, :, None] == passage_rows[None, None, :]
    return (hit & (positive_rows[:, :, None] >= 0)).any(1)


def gather_batch(
    q: torch.Tensor,
    d: torch.Tensor,
    inputs: dict,
    positive_rows: torch.Tensor | None = None,
    passage_rows: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The global batch: gathered ``q [ΣB, H]``, ``d [ΣP, H]`` and loss inputs rewritten for the
    concatenated layout (see the module docstring). ``inputs`` holds the loss keys of
    :data:`dr.losses.base.BATCH_FIELDS` except ``teacher_matrix``, which the caller gathers."""
    q_all, _ = gather_rows(q)
    d_all, d_rows = gather_rows(d)
    offset = sum(d_rows[: dist.get_rank()]) if world_size() > 1 else 0
    out = {}
    for key, value in inputs.items():
        if key == "target":
            out[key] = gather_rows(value + offset)[0]
        elif key == "neg_index":
            out[key] = gather_rows(torch.where(value >= 0, value + offset, value), -1)[0]
        elif key in ("teacher_pos", "teacher_neg"):
            out[key] = gather_rows(value.float(), float("nan"))[0]
        elif key == "exclude":
            if positive_rows is None or passage_rows is None:
                raise ValueError(
                    "gather_negatives: the batch has 'exclude' but no 'positive_rows'/'passage_rows' "
                    "to rebuild it across ranks (see RetrievalDataModule.collate_train)"
                )
            out[key] = known_positives(gather_rows(positive_rows, -1)[0], gather_rows(passage_rows, -1)[0])
        elif key == "teacher_matrix":
            raise ValueError(
                "gather_batch: the in-batch teacher matrix is gathered by the caller (local queries x all passages)"
            )
        else:
            raise ValueError(f"gather_batch: no rule to gather the loss input {key!r}")
    return q_all, d_all, out
