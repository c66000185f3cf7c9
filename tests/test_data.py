"""Tests for dr.data: readers, writers, validation errors and the bundled data."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest

from dr.config import ConfigError
from dr.data import (
    BUNDLED,
    bundled,
    passage_texts,
    read_corpus,
    read_qrels,
    read_queries,
    read_run,
    resolve_path,
    write_run,
)
from dr.data.io import DataError

DATA = Path(__file__).parent / "data"


def write(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` (gzip-compressed if it ends in .gz) and return the path."""
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def assert_data_error(excinfo: pytest.ExceptionInfo, path: Path, line: int, expected: str) -> None:
    """The error names the file, the line, and says what was expected."""
    message = str(excinfo.value)
    assert path.name in message
    assert f"line {line}:" in message
    assert excinfo.value.line == line
    assert expected in message


# ------------------------------------------------------------------------------------------ runs


def test_write_read_run_round_trip(tmp_path):
    run = {"q2": {"d1": 0.5, "d2": 1.25, "d3": -3.0}, "q1": {"a": 0.1 + 0.2}}
    path = tmp_path / "out.run"
    write_run(run, path, tag="test")
    assert read_run(path) == run
    lines = path.read_text().splitlines()
    assert lines[0] == f"q1 Q0 a 1 {0.1 + 0.2!r} test"
    assert [line.split()[2:4] for line in lines[1:]] == [["d2", "1"], ["d1", "2"], ["d3", "3"]]


def test_write_run_ties_depth_and_gzip(tmp_path):
    run = {"q": {"b": 1.0, "a": 1.0, "c": 2.0, "d": 0.0}}
    path = tmp_path / "out.run.gz"
    write_run(run, path, depth=3)
    with gzip.open(path, "rt") as f:
        lines = f.read().splitlines()
    assert [line.split()[2] for line in lines] == ["c", "a", "b"]
    assert all(line.endswith(" dr") for line in lines)
    assert read_run(path) == {"q": {"c": 2.0, "a": 1.0, "b": 1.0}}


def test_write_run_rejects_whitespace_ids(tmp_path):
    with pytest.raises(DataError, match="docid"):
        write_run({"q": {"bad id": 1.0}}, tmp_path / "x.run")
    assert not (tmp_path / "x.run").exists()


def test_read_reference_run():
    run = read_run(DATA / "BM25_dl19.run")
    assert len(run) == 43
    assert all(len(docs) == 100 for docs in run.values())
    assert run["264014"]["5611210"] == pytest.approx(15.780599594116211)


@pytest.mark.parametrize(
    "line, expected",
    [
        ("q1 Q0 d2 2 0.5", "expected 6 whitespace-separated fields 'qid Q0 docid rank score tag', got 5"),
        ("q1 Q0 d2 two 0.5 t", "expected an integer rank, got 'two'"),
        ("q1 Q0 d2 2 high t", "expected a numeric score, got 'high'"),
        ("q1 Q0 d2 2 nan t", "expected a numeric score, got NaN"),
        ("q1 Q0 d1 2 0.5 t", "got a second (q1, d1)"),
    ],
)
def test_malformed_run(tmp_path, line, expected):
    path = write(tmp_path / "bad.run", f"q1 Q0 d1 1 1.0 t\n\n{line}\n")
    with pytest.raises(DataError) as excinfo:
        read_run(path)
    assert_data_error(excinfo, path, 3, expected)


# ------------------------------------------------------------------------------ queries, qrels


def test_read_queries_and_qrels(tmp_path):
    queries = write(tmp_path / "q.tsv.gz", "1\tfirst query\n\n2\tsecond\n")
    assert read_queries(queries) == {"1": "first query", "2": "second"}
    qrels = write(tmp_path / "q.trec", "1 0 d1 2\n1 0 d2 0\n2\tQ0   d1 1\n")
    assert read_qrels(qrels) == {"1": {"d1": 2, "d2": 0}, "2": {"d1": 1}}


@pytest.mark.parametrize(
    "line, expected",
    [
        ("q2 0 d1", "expected 4 whitespace-separated fields 'qid 0 docid grade', got 3"),
        ("q2 0 d1 1 extra", "expected 4 whitespace-separated fields 'qid 0 docid grade', got 5"),
        ("q2 0 d1 high", "expected an integer grade, got 'high'"),
        ("q1 0 d1 0", "got a second for (q1, d1)"),
    ],
)
def test_malformed_qrels(tmp_path, line, expected):
    path = write(tmp_path / "bad.qrels", f"q1 0 d1 1\nq1 0 d2 0\n{line}\n")
    with pytest.raises(DataError) as excinfo:
        read_qrels(path)
    assert_data_error(excinfo, path, 3, expected)


@pytest.mark.parametrize(
    "line, expected",
    [
        ("q2 no tab", "expected 2 tab-separated fields 'qid<TAB>text', got 1"),
        ("q2\ttoo\tmany", "expected 2 tab-separated fields 'qid<TAB>text', got 3"),
        ("\tno qid", "expected a non-empty qid without whitespace"),
        ("q2\t  ", "expected a non-empty query text"),
        ("q1\tagain", "expected unique qids, got a second 'q1'"),
    ],
)
def test_malformed_queries(tmp_path, line, expected):
    path = write(tmp_path / "bad.tsv", f"q1\tfirst\n\n{line}\n")
    with pytest.raises(DataError) as excinfo:
        read_queries(path)
    assert_data_error(excinfo, path, 3, expected)


# ------------------------------------------------------------------------------------ corpora


@pytest.mark.parametrize("name", ["c.tsv", "c.tsv.gz"])
def test_read_tsv_corpus(tmp_path, name):
    path = write(tmp_path / name, "d1\tfirst passage\n\nd2\tsecond passage\n")
    corpus = read_corpus(path, cache_dir=str(tmp_path / "cache"))
    assert isinstance(corpus, datasets.Dataset)
    assert corpus.column_names == ["docid", "title", "text"]
    assert corpus[:] == {"docid": ["d1", "d2"], "title": ["", ""], "text": ["first passage", "second passage"]}
    assert passage_texts(corpus) == ["first passage", "second passage"]


@pytest.mark.parametrize("name", ["c.jsonl", "c.jsonl.gz"])
def test_read_jsonl_corpus_and_passage_texts(tmp_path, name):
    docs = [
        {"_id": "d1", "title": "A title", "text": "Some text.", "metadata": {}},
        {"_id": 7, "text": "No title."},
        {"_id": "d3", "title": "", "text": "Empty title."},
    ]
    path = write(tmp_path / name, "\n".join(json.dumps(d) for d in docs) + "\n")
    corpus = read_corpus(path, cache_dir=str(tmp_path / "cache"))
    assert corpus["docid"][:] == ["d1", "7", "d3"]
    assert corpus["title"][:] == ["A title", "", ""]
    assert passage_texts(corpus) == ["A title Some text.", "No title.", "Empty title."]
    assert passage_texts(corpus, [2, 0]) == ["Empty title.", "A title Some text."]


def test_corpus_cache_follows_file_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("DR_CACHE_DIR", str(tmp_path / "dr-cache"))
    path = write(tmp_path / "c.tsv", "d1\tone\n")
    assert read_corpus(path)["text"][:] == ["one"]  # cache_dir=None: dr's cache, $DR_CACHE_DIR/datasets
    write(path, "d1\tone\nd2\ttwo\n")
    assert read_corpus(path)["text"][:] == ["one", "two"]
    assert len(list((tmp_path / "dr-cache" / "datasets" / "generator").iterdir())) == 1  # the old version's table went


@pytest.mark.parametrize(
    "line, expected",
    [
        ("d3", "expected 2 tab-separated fields 'docid<TAB>text', got 1"),
        ("d3\ttitle\ttext", "expected 2 tab-separated fields 'docid<TAB>text', got 3"),
        ("\tno docid", "expected a non-empty docid without whitespace, got ''"),
        ("d1\tagain", "expected unique docids, got a second 'd1'"),
    ],
)
@pytest.mark.parametrize("name", ["bad.tsv", "bad.tsv.gz"])
def test_malformed_tsv_corpus(tmp_path, name, line, expected):
    path = write(tmp_path / name, f"d1\tone\n\nd2\ttwo\n{line}\nd4\tfour\n")
    with pytest.raises(DataError) as excinfo:
        read_corpus(path, cache_dir=str(tmp_path / "cache"))
    assert_data_error(excinfo, path, 4, expected)


@pytest.mark.parametrize(
    "line, expected",
    [
        ('{"_id": "d3", "text": "unterminated}', "expected a JSON object"),
        ('["d3", "text"]', "got a JSON list"),
        ('{"title": "t", "text": "no id"}', "expected a string '_id' field, got None"),
        ('{"_id": "d3", "title": "t"}', "expected a string 'text' field, got None"),
        ('{"_id": "d3", "text": 3}', "expected a string 'text' field, got 3"),
        ('{"_id": "", "text": "x"}', "expected a non-empty '_id' without whitespace"),
        ('{"_id": "d1", "text": "again"}', "expected unique docids, got a second 'd1'"),
    ],
)
def test_malformed_jsonl_corpus(tmp_path, line, expected):
    path = write(tmp_path / "bad.jsonl", '{"_id": "d1", "text": "x"}\n\n{"_id": "d2", "text": "y"}\n' + line + "\n")
    with pytest.raises(DataError) as excinfo:
        read_corpus(path, cache_dir=str(tmp_path / "cache"))
    assert_data_error(excinfo, path, 4, expected)


def test_corpus_bad_name_and_empty(tmp_path):
    with pytest.raises(DataError, match="expected a corpus file named"):
        read_corpus(write(tmp_path / "c.csv", "d1,text\n"))
    with pytest.raises(DataError, match="expected at least one passage"):
        read_corpus(write(tmp_path / "c.tsv", "\n"), cache_dir=str(tmp_path / "cache"))


# ---------------------------------------------------------------------------------- ir_datasets


def test_irds_sources(tmp_path, monkeypatch):
    Doc = SimpleNamespace
    fake = SimpleNamespace(
        docs_iter=lambda: iter([Doc(doc_id="1", title="T", text="one"), Doc(doc_id="2", text="two")]),
        queries_iter=lambda: iter([Doc(query_id="q", text="query")]),
        qrels_iter=lambda: iter([Doc(query_id="q", doc_id="1", relevance=2, iteration="0")]),
    )
    loaded = []
    module = SimpleNamespace(load=lambda name: loaded.append(name) or fake)
    monkeypatch.setitem(sys.modules, "ir_datasets", module)
    corpus = read_corpus("irds:fake/test", cache_dir=str(tmp_path / "cache"))
    assert passage_texts(corpus) == ["T one", "two"]
    assert read_queries("irds:fake/test") == {"q": "query"}
    assert read_qrels("irds:fake/test") == {"q": {"1": 2}}
    assert loaded[-1] == "fake/test"


def test_irds_without_ir_datasets(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ir_datasets", None)
    with pytest.raises(ConfigError, match=r"ir_datasets.*pip install 'dr\[irds\]'"):
        read_queries("irds:msmarco-passage/dev/small")
    with pytest.raises(ConfigError, match=r"ir_datasets.*pip install 'dr\[irds\]'"):
        read_corpus("irds:msmarco-passage", cache_dir=str(tmp_path / "cache"))


# ------------------------------------------------------------------------------------- bundled


def test_resolve_path():
    assert resolve_path("scifact:corpus") == bundled("scifact")["corpus"]
    assert resolve_path("dl19:qrels") == BUNDLED["dl19"]["qrels"]
    for other in ["some/file.tsv", "irds:msmarco-passage", "C:/data/x.tsv"]:
        assert resolve_path(other) == other
    with pytest.raises(FileNotFoundError, match="no 'corpsu'"):
        resolve_path("scifact:corpsu")
    with pytest.raises(KeyError):
        bundled("nope")


def test_bundled_files_exist():
    assert set(bundled("scifact")) == {"corpus", "train_queries", "train_qrels", "test_queries", "test_qrels"}
    assert set(bundled("dl19")) == {"queries", "qrels", "pool_corpus", "pool_qrels"}
    for paths in BUNDLED.values():
        for path in paths.values():
            assert Path(path).is_absolute() and Path(path).is_file()
            assert (Path(path).parent / "LICENSE.md").is_file()


def test_the_dl19_pool_qrels_are_the_official_ones_on_the_pool_corpus():
    import gzip

    with gzip.open(bundled("dl19")["pool_corpus"], "rt", encoding="utf-8") as f:
        docids = {line.split("\t", 1)[0] for line in f}
    assert len(docids) == 30045
    pool, full = read_qrels("dl19:pool_qrels"), read_qrels("dl19:qrels")
    assert {d for docs in pool.values() for d in docs} <= docids
    assert all(full[q][d] == grade for q, docs in pool.items() for d, grade in docs.items())
    assert sum(len(docs) for docs in pool.values()) == sum(1 for q, docs in full.items() for d in docs if d in docids)


def test_bundled_scifact(tmp_path):
    corpus = read_corpus("scifact:corpus", cache_dir=str(tmp_path / "cache"))
    assert len(corpus) == 5183
    train, test = read_queries("scifact:train_queries"), read_queries("scifact:test_queries")
    assert (len(train), len(test)) == (809, 300)
    train_qrels, test_qrels = read_qrels("scifact:train_qrels"), read_qrels("scifact:test_qrels")
    assert sum(map(len, train_qrels.values())) == 919
    assert sum(map(len, test_qrels.values())) == 339
    assert set(test_qrels) <= set(test)
    docids = set(corpus["docid"][:])
    assert all(d in docids for judged in test_qrels.values() for d in judged)


def test_bundled_dl19():
    queries, qrels = read_queries("dl19:queries"), read_qrels("dl19:qrels")
    assert len(queries) == 43 and set(qrels) == set(queries)
    assert sum(map(len, qrels.values())) == 9260
    assert {g for judged in qrels.values() for g in judged.values()} == {0, 1, 2, 3}


@pytest.mark.parametrize(
    "reader,good",
    [
        (read_queries, b"q1\thello\n"),
        (read_qrels, b"q1 0 d1 1\n"),
        (read_run, b"q1 Q0 d1 1 2.5 t\n"),
    ],
)
def test_non_utf8_bytes_name_the_file_and_line(tmp_path, reader, good):
    path = tmp_path / "bad.txt"
    path.write_bytes(good + good.replace(b"1", b"2", 1)[:3] + b"\xff\xfe" + good[3:] + good)
    with pytest.raises(DataError, match=r"bad.txt, line 2: expected UTF-8 text, got the byte 0xff"):
        reader(path)


def test_damaged_gzip_is_a_data_error(tmp_path):
    import gzip

    path = tmp_path / "queries.tsv.gz"
    data = gzip.compress(b"".join(f"q{i}\tquery number {i}\n".encode() for i in range(2000)))
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="queries.tsv.gz, line .*damaged"):
        read_queries(path)
