"""Every file parser under fuzzing (hypothesis): arbitrary bytes either parse or raise
:class:`dr.data.DataError` (never a bare ``UnicodeDecodeError``, ``TypeError``, ``RecursionError``
...), and valid files round-trip: what a writer writes, the reader reads back the same."""

from __future__ import annotations

import contextlib
import gzip
import json
import math
import tempfile
from pathlib import Path

import datasets
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dr.data import (
    DataError,
    NegativesRecord,
    read_clusters,
    read_corpus,
    read_negatives,
    read_qrels,
    read_queries,
    read_run,
    read_teacher_scores,
    write_clusters,
    write_negatives,
    write_run,
    write_teacher_scores,
)
from dr.teachers.scoring import QueryPairs, pairs_from_triples

datasets.disable_progress_bars()

# Fast and quiet: no example database in the repository, no deadline (the corpus reader builds an
# Arrow table, tens of milliseconds on a loaded machine).
FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
ROUND_TRIP = settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@contextlib.contextmanager
def file_with(name: str, data: bytes):
    """A fresh folder holding ``name`` with ``data`` (a fresh folder: the corpus cache keys on the path)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        yield path


def _corpus(path: Path):
    return read_corpus(path, cache_dir=str(path.parent / "cache"))


# Pieces that reach deep into the parsers: separators, JSON syntax and keys, numbers, TREC
# columns, escapes and bytes that are not UTF-8.
TOKENS = [
    b"\t",
    b" ",
    b"\n",
    b"\r",
    b"\r\n",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b'"',
    b"null",
    b"true",
    b"0",
    b"1",
    b"-2",
    b"1.5",
    b"1e999",
    b"nan",
    b"NaN",
    b"inf",
    b"-Infinity",
    b"9" * 5000,
    b"[" * 3000,
    b"Q0",
    b"q1",
    b"d1",
    b"d2",
    b"tag",
    b'"_id"',
    b'"title"',
    b'"text"',
    b'"qid"',
    b'"positives"',
    b'"negatives"',
    b'"docid"',
    b'"score"',
    b'"positive_scores"',
    b'"\\ud800"',
    b'"\\u00e9"',
    b"\\",
    b"\xff",
    b"\xc3",
    b"\xe2\x80\xa8",
    b"\x00",
    b"\x85",
    b"\x1f\x8b",
    b"\xc2\xa0",
]
PIECES = st.one_of(st.sampled_from(TOKENS), st.binary(max_size=12))
RAW = st.lists(st.lists(PIECES, max_size=8).map(b"".join), max_size=6).map(b"\n".join)

# Near-valid TSV and TREC lines: the right kind of fields, some of them wrong.
FIELDS = st.one_of(
    st.sampled_from(
        [b"q1", b"d1", b"0", b"Q0", b"1", b"-1", b"1.5", b"nan", b"inf", b"x", b"", b"9" * 5000, b"\xff", b"\xc2\xa0"]
    ),
    st.binary(max_size=4),
)
TSV_LINE = st.tuples(st.lists(FIELDS, max_size=7), st.sampled_from([b"\t", b" "])).map(lambda t: t[1].join(t[0]))
NEAR_TSV = st.lists(TSV_LINE, min_size=1, max_size=5).map(b"\n".join)

# Strings a reader must survive: lone surrogates (JSON can escape them, no UTF-8 file can hold
# them), NUL, a Unicode line separator, a tab.
SPECIAL_TEXT = st.sampled_from(["\ud800", "a\udfff", "\x00", "\u2028", "a\tb", "", "é"])
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=6), SPECIAL_TEXT)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.sampled_from(
                ["_id", "title", "text", "qid", "positives", "negatives", "docid", "score", "positive_scores"]
            ),
            inner,
            max_size=4,
        ),
    ),
    max_leaves=8,
)
JSON_LINES = st.lists(JSON_VALUES.map(lambda v: json.dumps(v).encode()), min_size=1, max_size=4).map(b"\n".join)


_ID = st.sampled_from(["q1", "d1", "d2"])
_SCORE = st.one_of(st.none(), st.floats(allow_nan=False))
VALID_PASSAGE = st.fixed_dictionaries({"_id": _ID, "title": st.text(max_size=4), "text": st.text(max_size=4)})
VALID_NEGATIVES = st.fixed_dictionaries(
    {
        "qid": _ID,
        "positives": st.lists(_ID, max_size=2),
        "positive_scores": st.lists(_SCORE, max_size=2),
        "negatives": st.lists(st.one_of(_ID, st.fixed_dictionaries({"docid": _ID, "score": _SCORE})), max_size=3),
    }
)


@st.composite
def corrupted(draw, records):
    """A valid record with one field, or one item of a list field, replaced by any JSON value: the
    mistakes a parser has to catch one at a time."""
    record = draw(records)
    key = draw(st.sampled_from(sorted(record)))
    value = record[key]
    if isinstance(value, list) and value and draw(st.booleans()):
        i = draw(st.integers(0, len(value) - 1))
        if isinstance(value[i], dict) and draw(st.booleans()):
            value[i][draw(st.sampled_from(sorted(value[i])))] = draw(JSON_VALUES)
        else:
            value[i] = draw(JSON_VALUES)
    else:
        record[key] = draw(JSON_VALUES)
    return record


NEAR_CORPUS = st.one_of(VALID_PASSAGE, corrupted(VALID_PASSAGE))
NEAR_NEGATIVES = st.one_of(VALID_NEGATIVES, corrupted(VALID_NEGATIVES))


# JSON that Python's parser gives up on with something other than a JSONDecodeError.
TRICKY_JSON = st.sampled_from([b"[" * 3000, b'{"_id": ' + b"[" * 3000, b"9" * 5000, b'{"qid": ' + b"9" * 5000 + b"}"])


def _json_lines(records):
    line = st.one_of(records.map(lambda v: json.dumps(v).encode()), TRICKY_JSON)
    return st.lists(line, min_size=1, max_size=3).map(b"\n".join)


def _inputs(near):
    """Arbitrary bytes, arbitrary JSON lines, and lines that are nearly right for the format."""
    return st.one_of(RAW, JSON_LINES, near, near, near, near)


TSV_INPUTS = _inputs(NEAR_TSV)
READERS = {
    "corpus.tsv": (_corpus, TSV_INPUTS),
    "corpus.jsonl": (_corpus, _inputs(_json_lines(NEAR_CORPUS))),
    "corpus.jsonl.gz": (_corpus, _inputs(_json_lines(NEAR_CORPUS))),
    "queries.tsv": (read_queries, TSV_INPUTS),
    "qrels.trec": (read_qrels, TSV_INPUTS),
    "queries.jsonl": (read_queries, _inputs(_json_lines(NEAR_CORPUS))),  # BEIR {"_id", "text"}
    "qrels.tsv": (read_qrels, TSV_INPUTS),  # BEIR query-id, corpus-id, score
    "run.trec": (read_run, TSV_INPUTS),
    "run.trec.gz": (read_run, TSV_INPUTS),
    "negatives.jsonl": (read_negatives, _inputs(_json_lines(NEAR_NEGATIVES))),
    "teacher.tsv": (read_teacher_scores, TSV_INPUTS),
    "clusters.txt": (read_clusters, TSV_INPUTS),
    "triples.tsv": (pairs_from_triples, TSV_INPUTS),
}


def _gzip_or_raw(name: str, data: bytes, compress: bool) -> bytes:
    return gzip.compress(data) if compress and name.endswith(".gz") else data


@pytest.mark.parametrize("name", READERS)
def test_arbitrary_bytes_parse_or_raise_a_data_error(name):
    read, inputs = READERS[name]

    # The corpus reader builds an Arrow table for every file that parses: fewer examples.
    @settings(FUZZ, max_examples=100 if read is _corpus else FUZZ.max_examples)
    @given(data=inputs, compress=st.booleans())
    def check(data, compress):
        with file_with(name, _gzip_or_raw(name, data, compress)) as path:
            try:
                read(path)
            except DataError as e:
                assert path.name in str(e)

    check()


# ------------------------------------------------------------------------------------ round trips
def _no_whitespace(s: str) -> bool:
    return not any(c.isspace() for c in s)


# Ids as every format requires them: non-empty, no whitespace, any other Unicode.
IDS = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")), min_size=1, max_size=8).filter(
    _no_whitespace
)
# A TSV text field: no tab or line break, not blank.
TSV_TEXT = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\t\n\r"), min_size=1, max_size=20
).filter(str.strip)
ANY_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
SCORES = st.floats(allow_nan=False, allow_infinity=False, width=64)


@ROUND_TRIP
@given(queries=st.dictionaries(IDS, TSV_TEXT, min_size=1, max_size=5))
def test_queries_round_trip(queries):
    text = "".join(f"{q}\t{t}\n" for q, t in queries.items()).encode()
    with file_with("queries.tsv", text) as path:
        assert read_queries(path) == queries


@ROUND_TRIP
@given(passages=st.dictionaries(IDS, st.tuples(ANY_TEXT, ANY_TEXT), min_size=1, max_size=4), tsv=st.booleans())
def test_corpus_round_trip(passages, tsv):
    if tsv:  # TSV has no title and no tabs or line breaks in the text
        passages = {
            d: ("", t.replace("\t", " ").replace("\n", " ").replace("\r", " ")) for d, (_, t) in passages.items()
        }
        text = "".join(f"{d}\t{t}\n" for d, (_, t) in passages.items())
    else:
        text = "".join(json.dumps({"_id": d, "title": title, "text": t}) + "\n" for d, (title, t) in passages.items())
    with file_with("corpus.tsv" if tsv else "corpus.jsonl", text.encode()) as path:
        corpus = _corpus(path)
        assert {row["docid"]: (row["title"], row["text"]) for row in corpus} == passages


@ROUND_TRIP
@given(
    qrels=st.dictionaries(IDS, st.dictionaries(IDS, st.integers(-3, 3), min_size=1, max_size=3), min_size=1, max_size=4)
)
def test_qrels_round_trip(qrels):
    text = "".join(f"{q} 0 {d} {g}\n" for q, judged in qrels.items() for d, g in judged.items())
    with file_with("qrels.trec", text.encode()) as path:
        assert read_qrels(path) == qrels


@ROUND_TRIP
@given(run=st.dictionaries(IDS, st.dictionaries(IDS, SCORES, max_size=4), min_size=1, max_size=4), gz=st.booleans())
def test_run_round_trip(run, gz):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("run.trec.gz" if gz else "run.trec")
        write_run(run, path)
        assert read_run(path) == {q: docs for q, docs in run.items() if docs}


NEGATIVES = st.builds(
    lambda qid, pos, neg, data: NegativesRecord(
        qid,
        pos,
        neg,
        data.draw(st.lists(st.one_of(st.none(), SCORES), min_size=len(neg), max_size=len(neg))),
        data.draw(st.lists(st.one_of(st.none(), SCORES), min_size=len(pos), max_size=len(pos))),
    ),
    IDS,
    st.lists(IDS, max_size=3),
    st.lists(IDS, max_size=4),
    st.data(),
)


@ROUND_TRIP
@given(records=st.lists(NEGATIVES, max_size=4, unique_by=lambda r: r.qid))
def test_negatives_round_trip(records):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "negatives.jsonl"
        write_negatives(path, records)
        assert read_negatives(path) == {r.qid: r for r in records}


@ROUND_TRIP
@given(
    scores=st.dictionaries(IDS, st.dictionaries(IDS, SCORES, min_size=2, max_size=4), min_size=1, max_size=3),
    data=st.data(),
)
def test_teacher_scores_round_trip(scores, data):
    rows, pairs = [], {}
    for qid, by_doc in scores.items():
        docs = sorted(by_doc)
        chosen = data.draw(
            st.lists(
                st.tuples(st.sampled_from(docs), st.sampled_from(docs)).filter(lambda p: p[0] != p[1]),
                min_size=1,
                max_size=4,
                unique=True,
            )
        )
        pairs[qid] = chosen
        rows += [(by_doc[p], by_doc[n], qid, p, n) for p, n in chosen]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "teacher.tsv"
        write_teacher_scores(path, rows)
        teacher = read_teacher_scores(path)
    assert {q: list(p) for q, p in teacher.pairs.items()} == pairs
    for qid, chosen in pairs.items():
        for docid in {d for pair in chosen for d in pair}:
            # 8 significant digits are written (a float32 round trip)
            assert math.isclose(teacher.score(qid, docid), float(f"{scores[qid][docid]:.8g}"), rel_tol=0, abs_tol=0)


@ROUND_TRIP
@given(ids=st.lists(IDS, min_size=1, max_size=12, unique=True), data=st.data())
def test_clusters_round_trip(ids, data):
    cuts = sorted(data.draw(st.sets(st.integers(1, len(ids) - 1), max_size=3))) if len(ids) > 1 else []
    clusters = [ids[a:b] for a, b in zip([0, *cuts], [*cuts, len(ids)])]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clusters.txt"
        write_clusters(path, clusters)
        assert read_clusters(path) == clusters


@ROUND_TRIP
@given(
    groups=st.dictionaries(
        IDS, st.lists(st.tuples(IDS, IDS), min_size=1, max_size=3, unique=True), min_size=1, max_size=3
    )
)
def test_triples_round_trip(groups):
    text = "".join(f"{q}\t{p}\t{n}\n" for q, pairs in groups.items() for p, n in pairs)
    with file_with("triples.tsv", text.encode()) as path:
        assert pairs_from_triples(str(path)) == [QueryPairs(q, pairs) for q, pairs in groups.items()]


@pytest.mark.parametrize(
    "line",
    [
        b"[" * 3000,  # RecursionError inside json
        b'{"_id": "d1", "text": ' + b"9" * 5000 + b"}",  # ValueError: too many digits for an int
        b'{"_id": "d1", "text": "\\ud800"}',  # a lone surrogate: cannot be stored
        b'{"qid": "q1", "positives": [], "positive_scores": 5, "negatives": []}',
        b'{"qid": "q1", "positives": [], "negatives": [{"docid": "d1", "score": "high"}]}',
        b'{"qid": "q 1", "positives": [], "negatives": []}',
    ],
)
@pytest.mark.parametrize("name", ["corpus.jsonl", "negatives.jsonl"])
def test_json_python_cannot_hold_is_a_data_error(name, line):
    """Regressions the fuzzer found: each used to escape as RecursionError, ValueError, TypeError,
    a datasets error about surrogates, or to be accepted and fail later."""
    read, _ = READERS[name]
    with file_with(name, line + b"\n") as path:
        with pytest.raises(DataError, match=r"line 1: expected"):
            read(path)
