"""Training data as texts (dr/data/hf.py, hf_columns.py, hf_write.py): a datasets folder, parquet or
JSONL in sentence-transformers' or FlagEmbedding's columns gives the batches the same data gives as
TSV files; dr-mine's output in those formats reads back; bad rows are named."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from dr.cli.mine import run as mine
from dr.data import DataError, passage_texts, read_corpus, read_negatives, read_positives, read_qrels, read_queries
from dr.data.hf import materialise, text_id
from dr.data.negatives import NegativesRecord, write_negatives
from dr.retrieval.bm25 import BM25
from dr.training import RetrievalDataModule

K = 5  # negatives per query in the n-tuple


def _texts(data: dict) -> tuple:
    corpus = read_corpus(data["corpus"])
    row_of = {d: i for i, d in enumerate(corpus["docid"])}
    return corpus, row_of, lambda d: passage_texts(corpus, [row_of[d]])[0]


@pytest.fixture(scope="module")
def single_positive_slice(scifact_slice, tmp_path_factory):
    """The SciFact slice's training queries with one positive (see test_same_batches_from_tsv_and_a_datasets_folder),
    a BM25 negatives file with scores, and the same data as a datasets folder in ST's n-tuple columns."""
    out = tmp_path_factory.mktemp("hf-slice")
    corpus, _, text = _texts(scifact_slice)
    queries = read_queries(scifact_slice["train_queries"])
    positives = read_positives(read_qrels(scifact_slice["train_qrels"]))
    qids = [q for q in queries if len(positives.get(q, [])) == 1]
    (out / "queries.tsv").write_text("".join(f"{q}\t{queries[q]}\n" for q in qids))
    bm25 = BM25(passage_texts(corpus), list(corpus["docid"]))
    run = bm25.search_run(qids, [queries[q] for q in qids], 30)
    records, rows = [], []
    for i, q in enumerate(qids):
        ranked = sorted(run[q].items(), key=lambda kv: -kv[1])
        negs = [(d, round(s, 4)) for d, s in ranked if d not in positives[q]][:K]
        pos_score = 30.0 + i / 8  # any teacher's scores: they must arrive as they were given
        records.append(NegativesRecord(q, positives[q], [d for d, _ in negs], [s for _, s in negs], [pos_score]))
        row = {"query": queries[q], "positive": text(positives[q][0])}
        row.update({f"negative_{j}": text(d) for j, (d, _) in enumerate(negs, start=1)})
        rows.append({**row, "scores": [pos_score] + [s for _, s in negs]})
    write_negatives(out / "negatives.jsonl", records)
    datasets.Dataset.from_list(rows).save_to_disk(str(out / "dataset"))
    return {
        "corpus": scifact_slice["corpus"],
        "train_queries": str(out / "queries.tsv"),
        "train_qrels": scifact_slice["train_qrels"],
        "negatives": str(out / "negatives.jsonl"),
        "dataset": str(out / "dataset"),
    }


def _batches(dm: RetrievalDataModule, epochs: int = 2) -> list[dict]:
    """The collated batches of ``epochs`` epochs, with corpus rows turned into texts (ids differ)."""
    dm.setup("fit")
    loader = dm.train_dataloader()
    texts = passage_texts(dm.corpus)
    out = []
    for epoch in range(epochs):
        loader.batch_sampler.set_epoch(epoch)
        for batch in loader:
            batch["passage_rows"] = [texts[r] for r in batch["passage_rows"].tolist()]
            batch["positive_rows"] = [
                sorted(texts[r] for r in row if r >= 0) for row in batch["positive_rows"].tolist()
            ]
            for key in ("qids", "docids"):
                batch.pop(key)
            out.append(batch)
    return out


def test_same_batches_from_tsv_and_a_datasets_folder(single_positive_slice, tmp_path):
    """The same SciFact slice as TSV/JSONL files (with a negatives file holding teacher scores) and as
    a datasets folder in sentence-transformers' columns (query, positive, negative_1..5, scores) gives
    identical collated batches for the same seed: queries, passages, targets, negatives, exclusions
    and teacher scores. Only ids differ (the dataset's are SHA-256 prefixes of the texts). The slice
    keeps the queries with one positive: a query with several draws one of them by its position in
    the list sorted by docid, and hash ids sort the list differently (same distribution, other draw)."""
    s = single_positive_slice
    common = dict(num_negatives=3, batch_size=8, seed=7, teacher_from_negatives=True)
    tsv = RetrievalDataModule(s["corpus"], s["train_queries"], s["train_qrels"], negatives=s["negatives"], **common)
    hf = RetrievalDataModule(
        "scifact:corpus",
        "scifact:train_queries",
        "scifact:train_qrels",
        hf={"path": s["dataset"], "cache_dir": str(tmp_path / "cache")},
        **common,
    )
    a, b = _batches(tsv), _batches(hf)
    assert len(a) == len(b) >= 4
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], torch.Tensor):
                assert torch.equal(x[key].nan_to_num(-1.0), y[key].nan_to_num(-1.0)), key
            else:
                assert x[key] == y[key], key
    assert all(not math.isnan(v) for batch in b for v in batch["teacher_neg"][batch["neg_index"] >= 0].tolist())
    # the hashed ids: one passage per text, one query per text
    assert hf.train_dataset.qids[0] == text_id(hf.train_dataset.query_texts[0])
    manifest = json.loads((Path(hf.hparams.corpus).parent / "manifest.json").read_text())
    assert manifest["layout"]["negatives"] == [f"negative_{j}" for j in range(1, K + 1)]
    assert manifest["counts"]["queries"] == len(tsv.train_dataset.qids)


def test_files_are_written_once_and_rows_merge_by_text(tmp_path):
    """Rows with the same query text are one query; identical passages are one docid; the files are
    reused while the input is unchanged and rewritten (the old version deleted) when it changes."""
    rows = [
        {"anchor": "what is a cat", "positive": "a cat is a small feline", "negative": "dogs bark"},
        {"anchor": "what is a cat", "positive": "cats purr", "negative": "dogs bark"},
        {"anchor": "what is a dog", "positive": "dogs bark", "negative": "a cat is a small feline"},
    ]
    path = tmp_path / "triplets.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    files = materialise(path, cache_dir=tmp_path / "cache")
    assert read_queries(files.queries) == {
        text_id("what is a cat"): "what is a cat",
        text_id("what is a dog"): "what is a dog",
    }
    assert len(read_corpus(files.corpus)) == 3
    cat = read_negatives(files.negatives)[text_id("what is a cat")]
    assert cat.positives == [text_id("a cat is a small feline"), text_id("cats purr")]
    assert cat.negatives == [text_id("dogs bark")]
    assert materialise(path, cache_dir=tmp_path / "cache") == files  # a cache hit: same folder
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    again = materialise(path, cache_dir=tmp_path / "cache")
    assert again.corpus != files.corpus and not Path(files.corpus).exists()
    assert len(read_queries(again.queries)) == 1


def test_flagembedding_rows_and_a_column_mapping(tmp_path):
    """FlagEmbedding's {query, pos, neg, pos_scores, neg_scores} (prompt ignored), and a mapping for other names."""
    flag = tmp_path / "flag.jsonl"
    flag.write_text(
        json.dumps(
            {
                "query": "q one",
                "pos": ["p1", "p2"],
                "neg": ["n1"],
                "pos_scores": [9, 8.5],
                "neg_scores": [1.5],
                "prompt": "x",
            }
        )
        + "\n"
    )
    record = read_negatives(materialise(flag, cache_dir=tmp_path / "c").negatives)[text_id("q one")]
    assert record.positive_scores == [9.0, 8.5] and record.negative_scores == [1.5]
    renamed = tmp_path / "renamed.parquet"
    datasets.Dataset.from_list([{"id": 1, "question": "q two", "answer": "p3", "hard": "n2"}]).to_parquet(str(renamed))
    with pytest.raises(DataError, match="column 'answer' has no role.*column order.* took query=id, positive=question"):
        materialise(renamed, cache_dir=tmp_path / "c")
    files = materialise(
        renamed,
        columns={"query": "question", "positive": "answer", "negative": "hard"},
        ignore=["id"],
        cache_dir=tmp_path / "c",
    )
    assert read_negatives(files.negatives)[text_id("q two")].negatives == [text_id("n2")]


def test_a_list_of_negatives_with_scores_and_triplet_rows(tmp_path):
    """(query, positive, negatives: [...], scores) in parquet; ST's triplet rows with scores [pos, neg]
    (mine_hard_negatives' default format) merge into one query, each text keeping its first score."""
    lists = tmp_path / "lists.parquet"
    datasets.Dataset.from_list(
        [{"query": "q", "positive": "p", "negatives": ["n1", "n2"], "scores": [0.9, 0.5, 0.4]}]
    ).to_parquet(str(lists))
    record = read_negatives(materialise(lists, cache_dir=tmp_path / "c").negatives)[text_id("q")]
    assert (record.negatives, record.negative_scores, record.positive_scores) == (
        [text_id("n1"), text_id("n2")],
        [0.5, 0.4],
        [0.9],
    )
    triplets = tmp_path / "triplets.jsonl"
    rows = [("p", "n1", [0.9, 0.5]), ("p", "n2", [0.9, 0.4]), ("p", "n1", [0.8, 0.1])]
    triplets.write_text(
        "".join(json.dumps({"anchor": "q", "positive": p, "negative": n, "scores": sc}) + "\n" for p, n, sc in rows)
    )
    record = read_negatives(materialise(triplets, cache_dir=tmp_path / "c").negatives)[text_id("q")]
    assert (record.negatives, record.negative_scores, record.positive_scores) == (
        [text_id("n1"), text_id("n2")],
        [0.5, 0.4],
        [0.9],
    )


@pytest.mark.parametrize(
    "content, expected",
    [
        (
            '{"query": "q", "positive": "p"}\n{"query": "q2", "positive": ""}\n',
            r"bad\.jsonl, line 2: expected column 'positive' to hold a non-empty text, got ''",
        ),
        (
            '{"query": "q", "positive": "p"}\n{"query": 7, "positive": "p"}\n',
            r"line 2: expected column 'query' to hold a non-empty text, got 7",
        ),
        ('{"query": "q", "negative": "n"}\n', r"bad\.jsonl: no positive column among query, negative"),
        (
            '{"query": "q", "positive": "p", "negative": "n", "scores": [1.0]}\n',
            r"line 1: expected column 'scores' to hold 2 numbers",
        ),
        ('{"query": "q", "positive": "p", "label": 1}\n', r"column 'label' is a sentence-transformers label"),
        ('{"query": "q", "positive": "p"}\n{"query": "q"}\n', r"line 2: expected a column 'positive', got none"),
        (
            '{"query": "q", "positive": "p"}\n{"query": "q", "positive": "p", "label": 1}\n',
            r"line 2: expected the first row's columns \(query, positive\), got also 'label'",
        ),
        ("\n\n", r"bad\.jsonl: expected at least one row, got none"),
    ],
)
def test_bad_rows_are_named(tmp_path, content, expected):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=expected):
        materialise(path, cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*/manifest.json"))  # nothing half-written


def test_bad_row_of_a_datasets_folder_is_named_by_index(tmp_path):
    folder = tmp_path / "ds"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list([{"query": "q", "positive": "p"}, {"query": "q2", "positive": " "}])}
    ).save_to_disk(str(folder))
    with pytest.raises(DataError, match=r"ds: row 1 \(dataset\[1\]\): expected column 'positive'"):
        materialise(folder, cache_dir=tmp_path / "cache")
    from dr.config import ConfigError

    with pytest.raises(ConfigError, match="data.hf.split=dev: .* has the splits train"):
        materialise(folder, split="dev", cache_dir=tmp_path / "cache")


def _mine_overrides(data: dict, run_path: Path, out, *extra: str) -> list[str]:
    return [
        f"run_file={run_path}",
        f"corpus={data['corpus']}",
        f"queries={data['train_queries']}",
        f"qrels={data['train_qrels']}",
        "miner=topk",
        "miner.num_negatives=4",
        f"output={out}",
        *extra,
    ]


@pytest.fixture(scope="module")
def mined(scifact_slice, tmp_path_factory):
    """A BM25 run of the slice's training queries and dr-mine's negatives file from it (top-4, with scores)."""
    from hydra import compose, initialize_config_dir

    from dr.cli import config_dir
    from dr.data import write_run

    out = tmp_path_factory.mktemp("mined")
    corpus, _, _ = _texts(scifact_slice)
    queries = read_queries(scifact_slice["train_queries"])
    bm25 = BM25(passage_texts(corpus), list(corpus["docid"]))
    write_run(bm25.search_run(list(queries), list(queries.values()), 1000), out / "bm25.run")  # every positive scored
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("mine", overrides=_mine_overrides(scifact_slice, out / "bm25.run", out / "negatives.jsonl"))
    mine(cfg, out)
    return out


def _as_texts(records: dict, queries: dict, text) -> dict:
    return {
        queries[q]: (sorted(text(d) for d in r.positives), [text(d) for d in r.negatives], r.negative_scores)
        for q, r in records.items()
    }


def _check_round_trip(data: dict, mined: Path, target: Path, tmp_path: Path, **hf) -> None:
    """dr-mine's negatives, read back from ``target`` as training input, are the negatives file's (as texts)."""
    _, _, text = _texts(data)
    expected = _as_texts(read_negatives(mined / "negatives.jsonl"), read_queries(data["train_queries"]), text)
    dm = RetrievalDataModule(
        "x.tsv", "x.tsv", "x.trec", hf={"path": str(target), "cache_dir": str(tmp_path / "c"), **hf}
    )
    files_queries = read_queries(dm.hparams.train_queries)
    _, _, back_text = _texts({"corpus": dm.hparams.corpus})
    got = _as_texts(read_negatives(dm.negatives), files_queries, back_text)
    assert got == expected


@pytest.mark.parametrize(
    "fmt, columns", [("jsonl", "st"), ("parquet", "flagembedding"), ("hf", "flagembedding"), ("hf", "st")]
)
def test_mine_output_reads_back_as_training_input(scifact_slice, mined, tmp_path, compose_config, fmt, columns):
    target = tmp_path / f"negatives.{fmt}"
    cfg = compose_config(
        "mine",
        _mine_overrides(scifact_slice, mined / "bm25.run", target, f"output_format={fmt}", f"output_columns={columns}"),
    )
    stats = mine(cfg, tmp_path)
    assert stats[f"output_{columns}"]["scores"] is True
    _check_round_trip(scifact_slice, mined, target, tmp_path)


@pytest.mark.slow  # a dr-mine subprocess (~20 s on 2 cores); the in-process cases above write the same folders
def test_dr_mine_writes_a_datasets_folder_that_trains(scifact_slice, mined, tmp_path):
    """The console script: dr-mine output_format=hf (ST's n-tuple) is a datasets folder that
    sentence-transformers' column conventions name, and dr reads it back as training input."""
    target = tmp_path / "st-negatives"
    exe = str(Path(sys.executable).parent / "dr-mine")
    args = _mine_overrides(
        scifact_slice, mined / "bm25.run", target, "output_format=hf", f"hydra.run.dir={tmp_path / 'run'}"
    )
    done = subprocess.run([exe, *args], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    table = datasets.load_from_disk(str(target))
    assert table.column_names == ["query", "positive", "negative_1", "negative_2", "negative_3", "negative_4", "scores"]
    assert all(len(s) == 5 for s in table["scores"])
    _check_round_trip(scifact_slice, mined, target, tmp_path)


def test_sentence_transformers_mined_output_reads_back(tiny_bert, scifact_slice, tmp_path):
    """The reverse: sentence-transformers' own mine_hard_negatives output (n-tuple with scores,
    columns named after its input: query, answer) trains dr with ST's scores in the negatives file."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    _, _, text = _texts(scifact_slice)
    queries = read_queries(scifact_slice["train_queries"])
    positives = read_positives(read_qrels(scifact_slice["train_qrels"]))
    pairs = datasets.Dataset.from_list(
        [{"query": queries[q], "answer": text(d)} for q in queries for d in positives.get(q, [])]
    )
    corpus, _, _ = _texts(scifact_slice)
    st = mine_hard_negatives(
        pairs,
        SentenceTransformer(tiny_bert, device="cpu"),
        corpus=passage_texts(corpus),
        num_negatives=3,
        output_format="n-tuple",
        output_scores=True,
        batch_size=64,
        verbose=False,
    )
    st.save_to_disk(str(tmp_path / "st"))
    files = materialise(tmp_path / "st", cache_dir=tmp_path / "c")
    assert files.manifest["layout"]["positive"] == "answer" and files.manifest["layout"]["positional"]
    records = read_negatives(files.negatives)
    row = st[0]
    record = records[text_id(row["query"])]
    assert record.positive_scores[0] == pytest.approx(row["scores"][0])
    by_text = dict(zip([text_id(row[f"negative_{j}"]) for j in (1, 2, 3)], row["scores"][1:]))
    assert {d: s for d, s in zip(record.negatives, record.negative_scores) if d in by_text} == pytest.approx(by_text)
    assert np.isfinite(record.negative_scores).all()


def test_train_from_a_datasets_folder(cfg_train, single_positive_slice, tmp_path, monkeypatch):
    """dr-train data.hf.path=FOLDER with the dataset's scores as a teacher's (Margin-MSE): the run trains
    on the dataset's files, its config records them, and the model card names the dataset."""
    from dr.training import train

    monkeypatch.setenv("DR_CACHE_DIR", str(tmp_path / "cache"))  # the files go to $DR_CACHE_DIR/hf
    cfg = cfg_train(
        f"data.hf={single_positive_slice['dataset']}",  # short for data.hf.path=...
        "data.teacher_from_negatives=true",
        "loss=margin_mse",
        "data.num_negatives=2",
        "test.before=false",
        "test.bm25=false",
        max_steps=2,
    )
    metrics = train(cfg)
    assert metrics["train/global_step"] == 2
    run = tmp_path / "run"
    config = (run / "config.yaml").read_text()
    assert f"corpus: {tmp_path / 'cache' / 'hf'}" in config and f"hf: {single_positive_slice['dataset']}" in config
    card = (run / "export" / "README.md").read_text()
    assert "built from the dataset `<local>/dataset` (split `train`)" in card


@pytest.mark.slow  # a dr-train subprocess (~15 s on 2 cores); test_bad_rows_are_named checks the messages in-process
def test_dr_train_names_a_bad_row_and_exits_2(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"query": "q", "positive": "p"}\n{"query": "q2", "positive": ["p", 3]}\n')
    exe = str(Path(sys.executable).parent / "dr-train")
    done = subprocess.run(
        [exe, f"data.hf.path={path}", f"data.hf.cache_dir={tmp_path / 'c'}", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [
        f"dr-train: error: {path}, line 2: expected column 'positive' to hold a non-empty text, got 3"
    ]
