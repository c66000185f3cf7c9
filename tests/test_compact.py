"""Streaming readers and compact arrays for negatives and teacher-score files of MS MARCO size."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

from dr.data import (
    DataError,
    NegativesRecord,
    iter_negatives,
    iter_teacher_scores,
    read_negatives,
    read_negatives_compact,
    read_teacher_scores,
    read_teacher_triples,
    write_negatives,
    write_teacher_scores,
)
from dr.sampling.tas_balanced import BalancedMarginPairSampler


def _negatives(n: int, seed: int = 0) -> list[NegativesRecord]:
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        k = int(rng.integers(0, 6))
        scores = [None if rng.random() < 0.2 else float(np.float32(rng.standard_normal())) for _ in range(k)]
        records.append(
            NegativesRecord(
                f"q{(i * 7919) % n}",
                [f"p{rng.integers(50)}"],
                [f"d{rng.integers(300)}" for _ in range(k)],
                scores,
                [1.5],
            )
        )
    return records


def _triples(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [
        (
            float(np.float32(rng.standard_normal())),
            float(np.float32(rng.standard_normal())),
            f"q{rng.integers(40)}",
            f"p{rng.integers(60)}",
            f"d{rng.integers(200)}",
        )
        for _ in range(n)
    ]


def test_streamed_and_compact_negatives_equal_the_dictionary_reader(tmp_path):
    path = tmp_path / "neg.jsonl"
    write_negatives(path, _negatives(500))
    reference = read_negatives(path)
    assert list(iter_negatives(path)) == [reference[r.qid] for r in iter_negatives(path)]
    table = read_negatives_compact(path)
    assert len(table) == len(reference) and set(table) == set(reference)
    for qid, record in reference.items():
        assert table[qid] == record
    assert "nope" not in table


def test_a_repeated_qid_is_named_with_its_line(tmp_path):
    path = tmp_path / "neg.jsonl"
    write_negatives(
        path, [NegativesRecord("a", ["p"], ["d"]), NegativesRecord("b", ["p"], []), NegativesRecord("a", ["p"], [])]
    )
    with pytest.raises(DataError, match=r"neg.jsonl, line 3: duplicate qid 'a'"):
        read_negatives_compact(path)


def test_compact_teacher_triples_read_like_teacher_scores(tmp_path):
    path = tmp_path / "teacher.tsv"
    rows = _triples(2000)
    write_teacher_scores(path, rows + rows[:50])  # duplicates: kept once in pairs, last score wins
    reference, compact = read_teacher_scores(path), read_teacher_triples(path)
    assert len(compact) == 2050 and set(compact.pairs) == set(reference.pairs)
    for qid in reference.pairs:
        assert compact.pairs[qid] == reference.pairs[qid]
        assert compact.scores[qid] == pytest.approx(reference.scores[qid])
    assert math.isnan(compact.score("q0", "nope")) and math.isnan(compact.score("nope", "p1"))
    streamed = list(iter_teacher_scores(path))
    assert [r[2:] for r in streamed] == [r[2:] for r in rows + rows[:50]]
    assert np.allclose([r[:2] for r in streamed], [r[:2] for r in rows + rows[:50]], rtol=1e-7)


def test_the_balanced_sampler_draws_the_same_pairs_from_either_teacher(tmp_path):
    path = tmp_path / "teacher.tsv"
    write_teacher_scores(path, _triples(3000))
    reference, compact = read_teacher_scores(path), read_teacher_triples(path)
    for qid in list(reference.pairs)[:10]:
        positives = sorted({p for p, _ in reference.pairs[qid]})
        negatives = sorted({n for _, n in reference.pairs[qid]})
        draws = [
            BalancedMarginPairSampler()(qid, positives, negatives, teacher, 2, np.random.default_rng(7))
            for teacher in (reference, compact)
        ]
        assert draws[0] == draws[1]


def _peak_while(iterable, every: int) -> list[int]:
    """tracemalloc's peak after each ``every`` items of ``iterable`` (the peak is reset in between)."""
    peaks = []
    tracemalloc.start()
    try:
        for i, _ in enumerate(iterable, 1):
            if i % every == 0:
                peaks.append(tracemalloc.get_traced_memory()[1])
                tracemalloc.reset_peak()
    finally:
        tracemalloc.stop()
    return peaks


@pytest.mark.slow
def test_streaming_readers_hold_memory_flat_on_a_million_lines(tmp_path):
    neg_path, teacher_path = tmp_path / "neg.jsonl", tmp_path / "teacher.tsv"
    with open(neg_path, "w") as f:
        for i in range(1_000_000):
            f.write(
                f'{{"qid": "q{i}", "positives": ["p{i}"], "negatives": [{{"docid": "d{i}", "score": 1.5}}, '
                f'{{"docid": "e{i}", "score": null}}]}}\n'
            )
    with open(teacher_path, "w") as f:
        for i in range(1_000_000):
            f.write(f"{i * 0.5}\t{i * 0.25}\tq{i // 40}\tp{i}\td{i}\n")
    for peaks in (
        _peak_while(iter_negatives(neg_path), 100_000),
        _peak_while(iter_teacher_scores(teacher_path), 100_000),
    ):
        assert len(peaks) == 10
        # Flat: no tenth of the file needs more than a few hundred KB (a dict of 1M records needs ~1 GB),
        # and the last tenth no more than the first.
        assert max(peaks) < 1_000_000, peaks
        assert peaks[-1] <= 2 * peaks[0] + 100_000, peaks
    # The compact table of the same file: arrays of ~20 bytes per triple instead of Python objects.
    triples = read_teacher_triples(teacher_path)
    assert len(triples) == 1_000_000 and triples.nbytes < 60_000_000
    assert triples.pairs["q3"][0] == ("p120", "d120")
