"""The training batch: queries, each distinct passage once, and the indices the losses read."""

from __future__ import annotations

from typing import Callable

import torch

from dr.data import TeacherScores


def contrastive_batch(
    examples: list[dict],
    positives: dict[str, list[str]],
    passage_text: Callable[[str], str],
    row_of: dict[str, int],
    teacher: TeacherScores | None = None,
) -> dict:
    """The batch of ``examples`` (the dataset's items).

    Passages are laid out as [positives of all queries, then every query's negatives], each
    distinct passage once: a passage drawn by two queries of the batch (a shared negative, a
    shared positive, one query's positive as another's negative) is encoded once and counts
    once in every InfoNCE denominator (DPR Eq. 2 sums over the batch's passages; TAS's topic
    batches make such repeats common).

    ``target[i]`` is the column of query i's positive (i when the batch's positives are
    distinct); ``neg_index[i, j]`` the column of its j-th
    negative (-1 when it has fewer); ``exclude[i, j]`` marks passage j as a known positive
    of query i that is not its target, so the loss does not treat it as a negative (rebuilt across
    DDP ranks from the corpus rows ``passage_rows [P]`` and ``positive_rows [B, K]``, -1 padded). With a
    teacher, ``teacher_pos[i]`` and ``teacher_neg[i, j]`` are the teacher's scores of those
    pairs (NaN when unscored). ``negatives_version`` is the negatives' version.
    """
    qids = [ex["qid"] for ex in examples]
    targets = [ex["positive"] for ex in examples]
    docids = list(dict.fromkeys(targets + [d for ex in examples for d in ex["negatives"]]))
    column = {d: j for j, d in enumerate(docids)}
    width = max((len(ex["negatives"]) for ex in examples), default=0)
    neg_index = torch.full((len(examples), width), -1, dtype=torch.long)
    for i, ex in enumerate(examples):
        neg_index[i, : len(ex["negatives"])] = torch.tensor([column[d] for d in ex["negatives"]], dtype=torch.long)
    relevant = [set(positives[q]) for q in qids]
    exclude = torch.tensor([[d in rel for d in docids] for rel in relevant], dtype=torch.bool)
    batch = {
        "qids": qids,
        "queries": [ex["query"] for ex in examples],
        "passages": [passage_text(d) for d in docids],
        "docids": docids,
        "target": torch.tensor([column[p] for p in targets], dtype=torch.long),
        "neg_index": neg_index,
        "exclude": exclude,
        "passage_rows": torch.tensor([row_of[d] for d in docids], dtype=torch.long),
        "positive_rows": torch.nn.utils.rnn.pad_sequence(
            [torch.tensor(sorted(row_of[d] for d in rel if d in row_of), dtype=torch.long) for rel in relevant],
            batch_first=True,
            padding_value=-1,
        ),
        "negatives_version": max((ex.get("version", 0) for ex in examples), default=0),
    }
    if teacher is not None:
        batch["teacher_pos"] = torch.tensor([teacher.score(q, p) for q, p in zip(qids, targets)], dtype=torch.float32)
        teacher_neg = torch.full((len(examples), width), float("nan"))
        for i, ex in enumerate(examples):
            for j, d in enumerate(ex["negatives"]):
                teacher_neg[i, j] = teacher.score(ex["qid"], d)
        batch["teacher_neg"] = teacher_neg
    return batch
