"""Negative miners: exact sets on hand-made arrays, sampling distributions against their formulas
(with a power check against a wrong formula), invariants over random inputs, and every conf/miner config."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import hydra
import numpy as np
import pytest
from omegaconf import OmegaConf
from scipy.stats import chisquare

from dr.miners import (
    Candidates,
    Chain,
    DenoiseMiner,
    MarginMiner,
    Mined,
    RandomMiner,
    SimANSMiner,
    TopKMiner,
)

MINER_CONF = Path(__file__).resolve().parents[1] / "conf" / "miner"

# Eight candidates, one query; exactly representable in float32 so thresholds are exact.
SCORES = [1.0, 0.875, 0.75, 0.6875, 0.625, 0.5, 0.375, 0.25]
IDS = [10, 11, 12, 13, 14, 15, 16, 17]  # 12 is the positive below (score 0.75)


def _single(positives=(12,), positive_scores=None, teacher=None, teacher_pos=None) -> Candidates:
    return Candidates.from_lists(
        [IDS],
        [SCORES],
        [list(positives)],
        positive_scores=None if positive_scores is None else [positive_scores],
        teacher_scores=None if teacher is None else [teacher],
        teacher_positive_scores=None if teacher_pos is None else [teacher_pos],
    )


def _repeat(scores, positive_scores, n_rows, positives=(99,)) -> Candidates:
    """The same query n_rows times: one vectorised call gives n_rows independent draws."""
    k = len(scores)
    return Candidates(
        docids=np.tile(np.arange(k), (n_rows, 1)),
        scores=np.tile(np.asarray(scores, np.float32), (n_rows, 1)),
        positive_ids=np.tile(np.asarray(positives), (n_rows, 1)),
        positive_scores=np.tile(np.asarray(positive_scores, np.float32), (n_rows, 1)),
    )


def _kept(mined: Mined, row: int = 0) -> set:
    return set(mined.docids[row][mined.mask[row]].tolist())


def _frequencies(mined: Mined, k: int) -> np.ndarray:
    return np.bincount(mined.ranks[mined.mask], minlength=k)


# --- SimANS distributions -------------------------------------------------------------------------

GAUSS_SCORES = np.array([3.0, 2.7, 2.4, 2.1, 1.8, 1.5, 1.2, 0.9])
S_POS, A, B, N_DRAWS = 2.0, 1.0, 0.5, 20_000


def _expected(log_w: np.ndarray, n: int) -> np.ndarray:
    p = np.exp(log_w - log_w.max())
    return n * p / p.sum()


def test_simans_gaussian_matches_paper_formula_and_sign_of_b():
    miner = SimANSMiner(num_negatives=1, a=A, b=B)
    mined = miner(_repeat(GAUSS_SCORES, [S_POS], N_DRAWS), np.random.default_rng(0))
    observed = _frequencies(mined, len(GAUSS_SCORES))
    assert observed.sum() == N_DRAWS
    paper = -A * (GAUSS_SCORES - S_POS - B) ** 2  # the paper's (s_i − s_pos − b)
    code_sign = -A * (GAUSS_SCORES - S_POS + B) ** 2  # the reference code's (s_neg − s_pos + b)
    assert chisquare(observed, _expected(paper, N_DRAWS)).pvalue > 1e-3
    assert chisquare(observed, _expected(code_sign, N_DRAWS)).pvalue < 1e-6  # the test has power
    # The reference code's b is ours negated.
    assert chisquare(observed, _expected(-A * (GAUSS_SCORES - S_POS + (-B)) ** 2, N_DRAWS)).pvalue > 1e-3


def test_simans_laplace_matches_formula_with_retrieved_positive():
    # The positive (docid 3, score 2.1) is retrieved: s_pos comes from its candidate score, and it is never drawn.
    tau = 3.0
    c = _repeat(GAUSS_SCORES, [np.nan], N_DRAWS, positives=(3,))
    mined = SimANSMiner(num_negatives=1, kernel="laplace", tau=tau)(c, np.random.default_rng(1))
    observed = np.delete(_frequencies(mined, 8), 3)
    assert _frequencies(mined, 8)[3] == 0 and observed.sum() == N_DRAWS
    s, s_pos = np.delete(GAUSS_SCORES, 3), np.float32(2.1)
    assert chisquare(observed, _expected(-tau * np.abs(s - s_pos), N_DRAWS)).pvalue > 1e-3
    assert chisquare(observed, _expected(-tau * (s - s_pos) ** 2, N_DRAWS)).pvalue < 1e-6  # Gaussian: wrong


def test_simans_multiple_draws_are_successive_sampling_without_replacement():
    scores = np.array([2.6, 2.3, 2.0, 1.7, 1.4, 1.1])
    log_w = -4.0 * (scores - 2.0) ** 2  # skewed enough to tell the two schemes below apart
    p = np.exp(log_w) / np.exp(log_w).sum()
    mined = SimANSMiner(num_negatives=2, a=4.0)(_repeat(scores, [2.0], N_DRAWS), np.random.default_rng(2))
    assert mined.mask.all() and (mined.ranks[:, 0] != mined.ranks[:, 1]).all()
    pairs = list(combinations(range(6), 2))
    index = {pair: i for i, pair in enumerate(pairs)}
    observed = np.bincount([index[tuple(sorted(r))] for r in mined.ranks.tolist()], minlength=len(pairs))
    # P({i, j}) for two successive weighted draws without replacement.
    exact = np.array([p[i] * p[j] / (1 - p[i]) + p[j] * p[i] / (1 - p[j]) for i, j in pairs])
    assert chisquare(observed, N_DRAWS * exact).pvalue > 1e-3
    # Power: i.i.d. pairs redrawn until distinct give P({i, j}) ∝ p_i·p_j, a different law.
    conditional_iid = np.array([p[i] * p[j] for i, j in pairs])
    assert chisquare(observed, N_DRAWS * conditional_iid / conditional_iid.sum()).pvalue < 1e-6


def test_simans_uses_max_explicit_positive_score():
    c = Candidates.from_lists([IDS], [SCORES], [[12, 99]], positive_scores=[[0.1, 0.6]])
    assert c.best_positive_score[0] == pytest.approx(0.6)  # explicit scores override the retrieved 0.75
    c = Candidates.from_lists([IDS], [SCORES], [[12, 99]], positive_scores=[[np.nan, 0.6]])
    assert c.best_positive_score[0] == pytest.approx(0.75)  # unknown → retrieved score, then the max
    # A sharp kernel then always picks the candidate nearest s_pos + b.
    mined = SimANSMiner(num_negatives=1, a=1e4, b=-0.25)(c, 0)
    assert _kept(mined) == {15}  # 0.75 − 0.25 = 0.5


def test_simans_fallback_when_positive_not_retrieved():
    c = Candidates.from_lists(
        [IDS, IDS[:4]],
        [SCORES, SCORES[:4]],
        [[99], [11]],  # row 0: positive unknown; row 1: retrieved
    )
    mined = SimANSMiner(num_negatives=2, top_k=6)(c, 0)
    assert _kept(mined, 0) == {14, 15}  # the last 2 of the top-6, as in the reference code
    assert mined.ranks[0].tolist() == [4, 5]
    assert _kept(mined, 1) <= {10, 12, 13} and len(_kept(mined, 1)) == 2
    assert np.isnan(c.best_positive_score[0]) and c.best_positive_score[1] == pytest.approx(0.875)


# --- Margin ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,expected",
    [
        ({}, {10, 11, 13, 14, 15, 16, 17}),
        ({"range_min": 2, "range_max": 5}, {13, 14}),  # ranks 2, 3, 4; rank 2 is the positive
        ({"absolute_margin": 0.125}, {14, 15, 16, 17}),  # drop s + 0.125 > 0.75; 0.625 stays
        ({"relative_margin": 0.25}, {15, 16, 17}),  # drop s > 0.75 · 0.75 = 0.5625
        ({"max_score": 0.6875, "min_score": 0.375}, {13, 14, 15, 16}),  # bounds inclusive
        ({"relative_margin": 0.25, "range_max": 7}, {15, 16}),
        ({"absolute_margin": 0.125, "num_negatives": 2}, {14, 15}),  # sampling="top"
    ],
)
def test_margin_exact_sets(kwargs, expected):
    assert _kept(MarginMiner(**kwargs)(_single(), 0)) == expected


def test_margin_random_sampling_and_unknown_positive():
    miner = MarginMiner(absolute_margin=0.125, num_negatives=2, sampling="random")
    seen = set()
    for seed in range(40):
        kept = _kept(miner(_single(), seed))
        assert len(kept) == 2 and kept <= {14, 15, 16, 17}
        seen |= kept
    assert seen == {14, 15, 16, 17}
    # s_pos unknown: the positive-aware filters are skipped, the others still apply.
    unknown = _single(positives=(99,))
    assert _kept(MarginMiner(relative_margin=0.25, min_score=0.5)(unknown, 0)) == {10, 11, 12, 13, 14, 15}


# --- Denoise ---------------------------------------------------------------------------------------

TEACHER = [0.95, 0.05, 0.9, 0.02, 0.3, 0.09, 0.1, 0.01]  # aligned with SCORES/IDS; 12 (0.9) is the positive


def test_denoise_threshold():
    assert _kept(DenoiseMiner(threshold=0.1)(_single(teacher=TEACHER), 0)) == {11, 13, 15, 17}


def test_denoise_margin():
    logits = [9.0, 2.0, 8.0, 5.0, 5.5, 4.9, -1.0, 7.0]  # positive 12 has 8.0 (retrieved)
    c = _single(teacher=logits)
    assert _kept(DenoiseMiner(margin=3.0)(c, 0)) == {11, 13, 15, 16}  # keep t ≤ 8 − 3
    # An explicit teacher score for a second positive lowers min t_pos to 7.5: keep t ≤ 4.5.
    c = _single(positives=(12, 99), teacher=logits, teacher_pos=[np.nan, 7.5])
    assert _kept(DenoiseMiner(margin=3.0)(c, 0)) == {11, 16}
    assert _kept(DenoiseMiner(margin=3.0, threshold=0.0)(c, 0)) == {16}
    with pytest.raises(ValueError, match="teacher_scores"):
        DenoiseMiner(threshold=0.1)(_single(), 0)


# --- Chain -----------------------------------------------------------------------------------------


def test_chain_margin_then_simans_only_returns_margin_survivors():
    rng = np.random.default_rng(3)
    scores = -np.sort(-rng.uniform(0, 1, size=(50, 40)), axis=1)
    c = Candidates(np.arange(50 * 40).reshape(50, 40), scores, np.arange(50 * 40).reshape(50, 40)[:, [5]])
    margin = MarginMiner(relative_margin=0.05, range_min=2)
    chain = Chain([margin, SimANSMiner(num_negatives=5, a=2.0)])
    allowed = margin(c, 0)
    for seed in range(5):
        mined = chain(c, seed)
        for row in range(50):
            assert _kept(mined, row) <= _kept(allowed, row)
            assert len(_kept(mined, row)) == min(5, len(_kept(allowed, row)))
    with pytest.raises(TypeError, match="cannot be a stage"):
        Chain([margin, RandomMiner(corpus=10)])


# --- Invariants over random inputs -----------------------------------------------------------------


def _all_miners():
    return [
        TopKMiner(3),
        SimANSMiner(3),
        SimANSMiner(3, kernel="laplace", top_k=5),
        SimANSMiner(None),
        MarginMiner(num_negatives=3, range_min=1, absolute_margin=0.05, sampling="random"),
        MarginMiner(relative_margin=0.05),
        DenoiseMiner(num_negatives=2, threshold=0.5, sampling="random"),
        DenoiseMiner(margin=0.1),
        RandomMiner(3, corpus=30),
        Chain([MarginMiner(relative_margin=0.1), DenoiseMiner(threshold=0.7), SimANSMiner(2, b=-0.2)]),
    ]


def _random_candidates(rng: np.random.Generator) -> Candidates:
    q = int(rng.integers(1, 6))
    docids, scores, positives, pos_scores, teacher = [], [], [], [], []
    for _ in range(q):
        k = int(rng.integers(0, 12))
        docids.append(rng.choice(30, size=k, replace=False).tolist())  # ids collide with positives often
        scores.append(rng.normal(size=k).tolist())
        teacher.append(rng.uniform(size=k).tolist())
        positives.append(rng.choice(30, size=int(rng.integers(0, 4)), replace=False).tolist())
        pos_scores.append(np.where(rng.uniform(size=len(positives[-1])) < 0.5, np.nan, rng.normal()).tolist())
    return Candidates.from_lists(docids, scores, positives, pos_scores, teacher)


def test_no_positive_ever_returned_and_negatives_distinct():
    rng = np.random.default_rng(4)
    for trial in range(150):
        c = _random_candidates(rng)
        for miner in _all_miners():
            mined = miner(c, trial)
            docids, _ = mined.to_lists()
            for row, negs in enumerate(docids):
                pos = set(c.positive_ids[row][c.positive_mask[row]].tolist())
                assert not pos & set(negs), (miner, row)
                assert len(set(negs)) == len(negs), (miner, row)
                if not isinstance(miner, RandomMiner):
                    assert set(negs) <= set(c.docids[row][c.mask[row]].tolist()), (miner, row)
                if miner.num_negatives is not None:
                    assert len(negs) <= miner.num_negatives


def test_string_docids():
    c = Candidates.from_lists([["d3", "d1", "d2"]], [[0.2, 0.9, 0.5]], [["d1"]])
    assert c.docids[0].tolist() == ["d1", "d2", "d3"]  # sorted by score
    assert TopKMiner(5)(c, 0).to_lists() == (([["d2", "d3"]], [[0.5, pytest.approx(0.2)]]))
    mined = RandomMiner(2, corpus=["d1", "d2", "d3", "d4", "a-much-longer-id"])(c, 0)
    assert len(_kept(mined)) == 2 and "d1" not in _kept(mined)


@pytest.mark.parametrize(
    "miner",
    [
        SimANSMiner(4),
        SimANSMiner(4, kernel="laplace"),
        MarginMiner(num_negatives=4, sampling="random"),
        DenoiseMiner(num_negatives=4, threshold=0.9, sampling="random"),
        RandomMiner(4, corpus=1000),
    ],
    ids=repr,
)
def test_seeded_determinism(miner):
    rng = np.random.default_rng(5)
    scores = -np.sort(-rng.normal(size=(20, 30)), axis=1)
    c = Candidates(
        np.arange(600).reshape(20, 30),
        scores,
        np.arange(600).reshape(20, 30)[:, :1],
        teacher_scores=rng.uniform(size=(20, 30)),
    )
    a, b = miner(c, np.random.default_rng(7)), miner(c, np.random.default_rng(7))
    assert np.array_equal(a.docids, b.docids) and np.array_equal(a.mask, b.mask)
    assert not np.array_equal(a.docids, miner(c, np.random.default_rng(8)).docids)


# --- Random ----------------------------------------------------------------------------------------


def test_random_uniform_over_corpus_minus_positives():
    c = Candidates(np.zeros((N_DRAWS, 0), np.int64), np.zeros((N_DRAWS, 0)), np.tile([0, 1], (N_DRAWS, 1)))
    mined = RandomMiner(3, corpus=10)(c, 0)
    assert mined.mask.all() and mined.docids.shape == (N_DRAWS, 3)
    assert all(len(set(r)) == 3 for r in mined.docids.tolist())
    counts = np.bincount(mined.docids.ravel(), minlength=10)
    assert counts[:2].sum() == 0 and chisquare(counts[2:]).pvalue > 1e-3
    # A larger corpus (200 > 4·(1 + 5)²) takes the rejection path; positives still excluded, rows distinct.
    positives = np.stack([np.random.default_rng(i).choice(200, 5, replace=False) for i in range(2000)])
    c = Candidates(np.zeros((2000, 0), np.int64), np.zeros((2000, 0)), positives)
    mined = RandomMiner(1, corpus=200)(c, 1)
    assert mined.mask.all() and not (mined.docids == positives).any()  # ~15% of rows draw a positive first
    mined = RandomMiner(15, corpus=2000)(c, 1)
    assert mined.mask.all() and all(len(set(r)) == 15 for r in mined.docids.tolist())
    with pytest.raises(ValueError, match="corpus"):
        RandomMiner(3)(c, 0)


# --- Data layout -----------------------------------------------------------------------------------


def test_candidates_layout_and_validation():
    c = Candidates.from_lists([[1, 2, 3], [4]], [[0.1, 0.3, 0.2], [1.0]], [[3], []])
    assert c.docids.tolist() == [[2, 3, 1], [4, -1, -1]] and c.mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert c.is_positive.tolist() == [[False, True, False], [False, False, False]]
    mined = TopKMiner(2)(c, 0)
    assert mined.to_lists()[0] == [[2, 1], [4]] and mined.ranks.tolist() == [[0, 2], [0, -1]]
    assert mined.stats()["negatives/mean"] == 1.5
    with pytest.raises(ValueError, match="sorted descending"):
        Candidates(np.array([[1, 2]]), np.array([[0.1, 0.3]]), np.array([[5]]))


# --- Configs ---------------------------------------------------------------------------------------

CONFIGS = ["topk", "random", "simans", "simans_laplace", "margin", "denoise", "margin_simans", "pool"]


def test_every_config_is_listed():
    assert sorted(p.stem for p in MINER_CONF.glob("*.yaml")) == sorted(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_instantiates_and_mines(name):
    cfg = OmegaConf.load(MINER_CONF / f"{name}.yaml")
    assert cfg._target_.startswith("dr.miners.")
    miner = hydra.utils.instantiate(cfg)
    if name == "random":
        miner.corpus = 1000
    rng = np.random.default_rng(6)
    scores = -np.sort(-rng.uniform(size=(4, 50)), axis=1)
    c = Candidates(
        np.arange(200).reshape(4, 50),
        scores,
        np.arange(200).reshape(4, 50)[:, [3]],
        teacher_scores=rng.uniform(size=(4, 50)),
    )
    mined = miner(c, 0)
    assert mined.mask.sum(axis=1).min() > 0
    assert not (mined.docids[:, :, None] == c.positive_ids[:, None, :]).any()


# --- Score scale and effective sample size -------------------------------------------------------


def test_simans_kernel_is_on_logits_and_reports_its_effective_sample_size():
    """score_scale turns cosines into logits before the kernel: a = 0.5 on cos / 0.05."""
    cos = np.array([0.86, 0.84, 0.82, 0.80, 0.78, 0.76, 0.74, 0.72])
    s_pos, scale = 0.81, 20.0
    miner = SimANSMiner(num_negatives=1, a=0.5, score_scale=scale)
    mined = miner(_repeat(cos, [s_pos], N_DRAWS), np.random.default_rng(0))
    observed = _frequencies(mined, len(cos))
    log_w = -0.5 * (scale * (cos - s_pos)) ** 2
    assert chisquare(observed, _expected(log_w, N_DRAWS)).pvalue > 1e-3
    assert chisquare(observed, _expected(-0.5 * (cos - s_pos) ** 2, N_DRAWS)).pvalue < 1e-6  # raw cosines: ~uniform
    # ESS = 1 / Σ p², by hand for this kernel, and K for a flat one
    p = np.exp(log_w) / np.exp(log_w).sum()
    assert miner.last_effective_sample_size == pytest.approx(np.full(N_DRAWS, 1 / (p**2).sum()))
    flat = SimANSMiner(num_negatives=1, a=0.5)
    flat(_repeat(cos, [s_pos], 3), 0)
    assert flat.last_effective_sample_size == pytest.approx([7.99] * 3, abs=0.01)  # 8 candidates: nearly uniform
    with pytest.raises(ValueError, match="score_scale"):
        SimANSMiner(score_scale=0.0)


def test_mining_path_gives_its_scale_to_kernels_without_one():
    from dr.miners.candidates import instantiate_miner, kernel_miners, resolve_score_scale, student_score_scale
    from dr.losses import InfoNCELoss, MarginMSELoss

    chain = instantiate_miner(OmegaConf.load(MINER_CONF / "margin_simans.yaml"), [], score_scale=20.0)
    assert chain.miners[1].score_scale == 20.0 and list(kernel_miners(chain)) == ["1_simans"]
    own = instantiate_miner({"_target_": "dr.miners.SimANSMiner", "score_scale": 5.0}, [], score_scale=20.0)
    assert own.score_scale == 5.0 and list(kernel_miners(own)) == ["simans"]

    class Encoder:
        def __init__(self, similarity):
            self.similarity = similarity

    assert student_score_scale(InfoNCELoss(0.04), Encoder("dot")) == pytest.approx(25.0)  # 1 / temperature first
    assert student_score_scale(MarginMSELoss(), Encoder("cos")) == 20.0  # else cos: 1 / 0.05
    assert student_score_scale(None, Encoder("dot")) == 1.0
    assert resolve_score_scale("auto", 20.0) == 20.0 and resolve_score_scale(3, 20.0) == 3.0
    with pytest.raises(ValueError, match="score_scale"):
        resolve_score_scale(-1.0, 20.0)


# --- Margin: positive score and rank window options ---------------------------------------------


@pytest.mark.parametrize(
    "kwargs,expected",
    [
        ({"absolute_margin": 0.125, "positive_score": "max"}, {14, 16, 17}),  # s_pos = max(0.75, 0.5): keep s ≤ 0.625
        ({"absolute_margin": 0.125, "positive_score": "min"}, {16, 17}),  # s_pos = 0.5: keep s ≤ 0.375
        ({"range_min": 1, "range_max": 3}, {11}),  # raw ranks 1, 2 (rank 2 is the positive 12)
        ({"range_min": 1, "range_max": 3, "rank_window": "filtered"}, {11, 13}),  # survivors 10, 11, 13, 14, 16, 17
        ({"absolute_margin": 0.125, "range_min": 1, "range_max": 3}, set()),  # raw ranks 1, 2 are filtered out
        (
            {
                "absolute_margin": 0.125,
                "range_min": 1,
                "range_max": 3,
                "rank_window": "filtered",
                "positive_score": "max",
            },
            {16, 17},
        ),  # survivors 14, 16, 17
    ],
)
def test_margin_positive_score_and_rank_window_options(kwargs, expected):
    c = _single(positives=(12, 15))  # positives scored 0.75 and 0.5 (both retrieved)
    assert _kept(MarginMiner(**kwargs)(c, 0)) == expected


def test_margin_miner_defaults_to_the_hardest_positive():
    """Issue 23 item 10: with several positives the margins are taken from the minimum positive
    score, as sentence-transformers' mine_hard_negatives ("to be on the safe side", util/hard_negatives.py);
    NV-Retriever's TopK-PercPos has one positive per query, where min and max agree."""
    c = _single(positives=(12, 15))  # positives scored 0.75 and 0.5
    assert _kept(MarginMiner(absolute_margin=0.125)(c, 0)) == {16, 17}  # s_pos = 0.5: keep s ≤ 0.375
    assert _kept(MarginMiner(relative_margin=0.05)(c, 0)) == {16, 17}  # drop s > 0.475
    single = _single()  # one positive: min = max
    assert _kept(MarginMiner(relative_margin=0.05)(single, 0)) == _kept(
        MarginMiner(relative_margin=0.05, positive_score="max")(single, 0)
    )
    from hydra import compose, initialize_config_dir

    from dr.cli import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        assert compose("mine", ["miner=margin"]).miner.positive_score == "min"


def test_margin_relative_threshold_for_negative_scores():
    """s_pos − |s_pos|·m stays below s_pos when scores are negative (as sentence-transformers);
    (1 − m)·s_pos would sit above it and keep candidates scoring like the positive."""
    c = Candidates.from_lists([[1, 2, 3, 4, 5]], [[-0.4, -0.5, -0.52, -0.6, -0.7]], [[99]], positive_scores=[[-0.5]])
    assert _kept(MarginMiner(relative_margin=0.1)(c, 0)) == {4, 5}  # drop s > −0.55
    with pytest.raises(ValueError, match="positive_score"):
        MarginMiner(positive_score="mean")
    with pytest.raises(ValueError, match="rank_window"):
        MarginMiner(rank_window="ranks")


def test_margin_parity_with_sentence_transformers(tiny_bert, scifact_slice, tmp_path):
    """positive_score="min", rank_window="filtered" picks exactly what sentence-transformers'
    mine_hard_negatives picks from the same embeddings; the defaults (max, raw ranks) do not."""
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, models
    from sentence_transformers.util import mine_hard_negatives

    from dr.data import passage_texts, read_corpus, read_qrels, read_queries

    corpus = read_corpus(scifact_slice["corpus"])
    texts = passage_texts(corpus, list(range(len(corpus))))
    text_of = dict(zip(corpus["docid"], texts))
    queries, qrels = read_queries(scifact_slice["train_queries"]), read_qrels(scifact_slice["train_qrels"])
    pairs = [
        (queries[q], text_of[p])
        for q in [q for q in queries if q in qrels][:30]
        for p in sorted(qrels[q])
        if p in text_of
    ]
    model = SentenceTransformer(
        modules=[models.Transformer(tiny_bert, max_seq_length=64), models.Pooling(32, "mean")], device="cpu"
    )
    knobs = dict(range_min=2, range_max=12, absolute_margin=0.002, num_negatives=3, sampling="top")
    st_knobs = {**{k: v for k, v in knobs.items() if k != "sampling"}, "sampling_strategy": "top"}
    mined = mine_hard_negatives(
        Dataset.from_dict({"anchor": [a for a, _ in pairs], "positive": [p for _, p in pairs]}),
        model,
        corpus=texts,
        output_format="n-tuple",
        verbose=False,
        batch_size=32,
        cache_folder=str(tmp_path),
        **st_knobs,
    )
    # The same candidates from its cached embeddings, the same way: top (range_max + max positives) by cosine.
    q_emb = torch.as_tensor(np.load(next(tmp_path.glob("query_embeddings_*.npy"))))
    c_emb = torch.as_tensor(np.load(next(tmp_path.glob("corpus_embeddings_*.npy"))))
    anchors = list(dict.fromkeys(a for a, _ in pairs))
    index = {t: i for i, t in enumerate(dict.fromkeys(texts + [p for _, p in pairs]))}
    positives = {a: list(dict.fromkeys(index[p] for b, p in pairs if b == a)) for a in anchors}
    scores, ids = torch.topk(model.similarity(q_emb, c_emb), k=12 + max(map(len, positives.values())), dim=1)
    pos_scores = [
        model.similarity_pairwise(q_emb[[k] * len(positives[a])], c_emb[positives[a]]).tolist()
        for k, a in enumerate(anchors)
    ]
    candidates = Candidates.from_lists(ids.tolist(), scores.tolist(), [positives[a] for a in anchors], pos_scores)
    theirs = {row["anchor"]: {index[row[f"negative_{k}"]] for k in (1, 2, 3)} for row in mined}
    assert len(theirs) >= 3 and any(len(p) > 1 for p in positives.values())

    def ours(**options):
        m = MarginMiner(**knobs, **options)(candidates, 0)
        return {a: set(m.docids[k][m.mask[k]].tolist()) for k, a in enumerate(anchors)}

    parity = ours(positive_score="min", rank_window="filtered")
    assert {a: v for a, v in parity.items() if len(v) == 3} == theirs  # it drops queries short of 3 negatives
    assert any(ours()[a] != theirs[a] for a in theirs)  # the defaults differ: the options matter
