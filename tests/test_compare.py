"""Tests for dr.evaluation.compare and dr-compare: means equal ir-measures', p-values equal scipy's,
randomization and Holm on hand values, seed groups, the JSON rows, the command end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import ir_measures
import numpy as np
import pytest
from scipy import stats

from dr.data import read_qrels, read_run, write_run
from dr.evaluation.compare import (
    KEYS,
    compare_runs,
    expand_run_files,
    holm,
    markdown_table,
    paired_ttest,
    randomization_test,
    system_name,
)
from dr.evaluation.evaluate import per_query

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).parent.parent
BM25, TASB, QRELS = DATA / "BM25_dl19.run", DATA / "D_BERT_KD_TASB_dl19.run", DATA / "qrels.dl19.full.trec"
MEASURES = ["nDCG@10", "AP(rel=2)", "R(rel=2)@1000"]


@pytest.fixture(scope="module")
def dl19():
    return compare_runs([[str(BM25)], [str(TASB)]], read_qrels(QRELS), MEASURES, permutations=2000)


def test_means_equal_ir_measures(dl19):
    qrels = list(ir_measures.read_trec_qrels(str(QRELS)))
    for path, system in [(BM25, "BM25_dl19"), (TASB, "D_BERT_KD_TASB_dl19")]:
        expected = ir_measures.calc_aggregate(
            [ir_measures.parse_measure(m) for m in MEASURES], qrels, list(ir_measures.read_trec_run(str(path)))
        )
        for m in MEASURES:
            (row,) = [r for r in dl19.rows if r["system"] == system and r["measure"] == m]
            assert row["mean"] == pytest.approx(expected[ir_measures.parse_measure(m)], abs=1e-12)
    (ndcg,) = [r for r in dl19.rows if r["system"] == "D_BERT_KD_TASB_dl19" and r["measure"] == "nDCG@10"]
    assert round(ndcg["mean"], 4) == 0.7210 and round(ndcg["mean"] - ndcg["delta"], 4) == 0.5058  # published figures


def test_ttest_equals_scipy_on_the_same_per_query_values(dl19):
    qrels = read_qrels(QRELS)
    a, b = per_query(read_run(BM25), qrels, MEASURES), per_query(read_run(TASB), qrels, MEASURES)
    for m in MEASURES:
        x = np.array([a[q][m] for q in sorted(a)])
        y = np.array([b[q][m] for q in sorted(a)])
        (row,) = [r for r in dl19.rows if r["system"] == "D_BERT_KD_TASB_dl19" and r["measure"] == m]
        assert row["p_ttest"] == pytest.approx(stats.ttest_rel(y, x).pvalue, rel=1e-12)
        assert (row["wins"], row["ties"], row["losses"]) == (
            int((y > x).sum()),
            int((y == x).sum()),
            int((y < x).sum()),
        )
        assert row["delta"] == pytest.approx((y - x).mean())


def test_randomization_identical_runs_give_one_and_a_clearly_better_run_a_small_p():
    rng = np.random.default_rng(0)
    a = rng.random(50)
    assert randomization_test(a, a.copy(), 10_000, seed=1) == 1.0
    assert paired_ttest(a, a.copy()) == 1.0
    assert randomization_test(a, a + 0.2 + 0.01 * rng.standard_normal(50), 10_000, seed=1) == pytest.approx(1 / 10_001)
    # seeded: the same p on a rerun; and a noisy small effect is not significant
    noisy = a + 0.01 + 0.3 * rng.standard_normal(50)
    p = randomization_test(a, noisy, 10_000, seed=3)
    assert p == randomization_test(a, noisy, 10_000, seed=3) and p > 0.05


def test_randomization_matches_the_exact_distribution_on_a_small_case():
    """Four differences (1, 2, 3, -0.5): of the 16 sign patterns, |mean| >= 5.5/4 for the 2 that
    flip none or all, and for (+1, +2, +3, +0.5) and its mirror: 4/16 = 0.25 exactly."""
    d = np.array([1.0, 2.0, 3.0, -0.5])
    p = randomization_test(np.zeros(4), d, 200_000, seed=0)
    assert p == pytest.approx(0.25, abs=0.005)


def test_holm_on_hand_values():
    # sorted 0.01, 0.02, 0.04 -> 3*0.01 = 0.03, 2*0.02 = 0.04, 1*0.04 = 0.04 (monotone), in the given order
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    # monotonicity: 3*0.01, max(0.03, 2*0.011 = 0.022) = 0.03, min(1, 0.9)
    assert holm([0.9, 0.011, 0.01]) == pytest.approx([0.9, 0.03, 0.03])
    assert holm([0.6, 0.5]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([0.03]) == [0.03]


def test_holm_across_systems_in_the_rows(tmp_path):
    qrels = read_qrels(QRELS)
    runs = [str(BM25), str(TASB), str(BM25)]  # a copy of the baseline: p = 1 there
    result = compare_runs([[r] for r in runs], qrels, ["nDCG@10"], names=["bm25", "tasb", "copy"], permutations=1000)
    rows = {r["system"]: r for r in result.rows}
    assert rows["copy"]["p_randomization"] == 1.0 and rows["copy"]["delta"] == 0.0
    assert rows["copy"]["ties"] == len(result.qids)
    assert [rows["tasb"]["p_holm"], rows["copy"]["p_holm"]] == pytest.approx(
        holm([rows["tasb"]["p_randomization"], 1.0])
    )


def test_seed_groups_average_each_query_before_testing(tmp_path):
    qrels = read_qrels(QRELS)
    tasb = read_run(TASB)
    # a second "seed": every ranking reversed (a much worse run)
    write_run({q: {d: -s for d, s in docs.items()} for q, docs in tasb.items()}, tmp_path / "tasb_seed2.run")
    (tmp_path / "tasb_seed1.run").write_text(TASB.read_text())
    groups = expand_run_files([str(BM25), str(tmp_path / "tasb_seed*.run")])
    assert groups[1] == [str(tmp_path / "tasb_seed1.run"), str(tmp_path / "tasb_seed2.run")]
    result = compare_runs(groups, qrels, ["nDCG@10"], permutations=500)
    assert result.systems == ["BM25_dl19", "tasb_seed"]
    one, two = (per_query(read_run(f), qrels, ["nDCG@10"]) for f in groups[1])
    expected = np.array([(one[q]["nDCG@10"] + two[q]["nDCG@10"]) / 2 for q in result.qids])
    np.testing.assert_allclose(result.values["nDCG@10"][1], expected)
    assert "mean over the system's runs (BM25_dl19: 1, tasb_seed: 2 runs)" in markdown_table(result)


def test_inputs_and_names():
    assert system_name(["runs/a.trec"]) == "a" and system_name(["x/b.run.gz"]) == "b"
    assert system_name(["full_s1.trec", "full_s2.trec"]) == "full_s"
    from dr.config import ConfigError

    with pytest.raises(ConfigError, match="at least two systems"):
        expand_run_files([str(BM25)])
    with pytest.raises(FileNotFoundError, match="no file matches"):
        expand_run_files([str(BM25), "/nonexistent/*.run"])


def test_dr_compare_end_to_end(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dr.cli.compare",
            f"run_files=[{BM25},{TASB}]",
            f"qrels={QRELS}",
            'measures=[nDCG@10,"AP(rel=2)"]',
            "permutations=2000",
            f"hydra.run.dir={out}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "compare.json").read_text())
    assert [tuple(r) for r in rows] == [KEYS] * 4
    assert [(r["system"], r["measure"]) for r in rows] == [
        ("BM25_dl19", "nDCG@10"),
        ("D_BERT_KD_TASB_dl19", "nDCG@10"),
        ("BM25_dl19", "AP(rel=2)"),
        ("D_BERT_KD_TASB_dl19", "AP(rel=2)"),
    ]
    assert (
        rows[0]["p_ttest"] is None
        and rows[1]["p_holm"] < 0.05
        and rows[1]["wins"] + rows[1]["ties"] + rows[1]["losses"] == 43
    )
    assert "| D_BERT_KD_TASB_dl19 | nDCG@10 | 0.7210 | +0.2152 †" in proc.stdout
    assert (out / "compare.md").read_text().count("| BM25_dl19 |") == 2
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
