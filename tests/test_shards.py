"""Sharded, resumable corpus encoding (dr.retrieval.shards) with a real tiny BERT and a real SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dr.data import read_corpus
from dr.models import BiEncoder
from dr.retrieval import DenseIndex
from dr.retrieval.search import encode_corpus
from dr.retrieval.shards import MANIFEST, ShardedEmbeddings, encode_sharded

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import sys, time
from dr.data import read_corpus
from dr.models import BiEncoder
from dr.retrieval.shards import encode_sharded
corpus = read_corpus(sys.argv[2], cache_dir=sys.argv[3])
encoder = BiEncoder.load(sys.argv[1], {"passage_max_length": 32})
encode_sharded(encoder, corpus, sys.argv[4], shard_size=8, show_progress=False, on_shard=lambda i, n: time.sleep(1.0))
"""


@pytest.fixture
def corpus_file(tmp_path) -> str:
    path = tmp_path / "corpus.tsv"
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "protein", "cell", "gene", "virus", "trial", "dose"]
    path.write_text("".join(f"d{i}\t{' '.join(rng.choice(words, size=3 + i % 9))}\n" for i in range(60)))
    return str(path)


def _shards_done(folder: Path) -> int:
    try:
        return len(json.loads((folder / MANIFEST).read_text())["shards"])
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def test_a_killed_encode_resumes_at_the_last_finished_shard_and_matches_an_uninterrupted_one(
    tiny_bert, corpus_file, tmp_path
):
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, tiny_bert, corpus_file, str(tmp_path / "cache"), str(killed)], env=env
    )
    deadline = time.monotonic() + 120
    while _shards_done(killed) < 2 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    done = _shards_done(killed)
    assert child.returncode == -signal.SIGKILL and 2 <= done < 8  # killed part-way (8 shards of 8 passages)

    corpus = read_corpus(corpus_file, cache_dir=str(tmp_path / "cache"))
    encoder = BiEncoder.load(tiny_bert, {"passage_max_length": 32})
    encoded = []
    resumed = encode_sharded(
        encoder, corpus, killed, shard_size=8, show_progress=False, on_shard=lambda i, n: encoded.append(i)
    )
    assert encoded == list(range(done, 8))  # the finished shards were not encoded again
    assert not list(killed.glob(".*.tmp"))

    fresh = encode_sharded(encoder, corpus, tmp_path / "fresh", shard_size=8, show_progress=False)
    assert np.array_equal(resumed.to_array(), fresh.to_array())
    assert resumed.to_array().shape == (60, 32)
    # And the same as the in-memory encode, up to batching noise.
    np.testing.assert_allclose(fresh.to_array(), encode_corpus(encoder, corpus, show_progress=False), atol=1e-5)


def test_fp16_shards_build_an_index_chunk_by_chunk(tiny_bert, corpus_file, tmp_path):
    corpus = read_corpus(corpus_file, cache_dir=str(tmp_path / "cache"))
    encoder = BiEncoder.load(tiny_bert)
    shards = encode_sharded(encoder, corpus, tmp_path / "emb", shard_size=25, fp16=True, show_progress=False)
    assert [s.dtype for s in shards.shards()] == [np.float16] * 3 and len(shards) == 60
    index = DenseIndex.build(shards, list(corpus["docid"]), kind="flat", use_gpu=False, add_chunk=7)
    full = shards.to_array()
    queries = np.random.default_rng(1).standard_normal((5, full.shape[1])).astype(np.float32)
    expected = DenseIndex.build(full, list(corpus["docid"]), kind="flat", use_gpu=False).search(queries, 5)
    got = index.search(queries, 5)
    assert got[1] == expected[1]
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-6)


def test_stale_shards_of_another_encoder_are_discarded(tiny_bert, corpus_file, tmp_path):
    corpus = read_corpus(corpus_file, cache_dir=str(tmp_path / "cache"))
    folder = tmp_path / "emb"
    a = encode_sharded(
        BiEncoder.load(tiny_bert, {"pooling": "cls"}), corpus, folder, shard_size=20, show_progress=False
    ).to_array()
    calls = []
    b = encode_sharded(
        BiEncoder.load(tiny_bert, {"pooling": "mean"}),
        corpus,
        folder,
        shard_size=20,
        show_progress=False,
        on_shard=lambda i, n: calls.append(i),
    ).to_array()
    assert calls == [0, 1, 2] and not np.allclose(a, b)


def test_an_unfinished_folder_is_refused_by_the_reader(tiny_bert, corpus_file, tmp_path):
    corpus = read_corpus(corpus_file, cache_dir=str(tmp_path / "cache"))

    def stop(i, n):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        encode_sharded(
            BiEncoder.load(tiny_bert), corpus, tmp_path / "emb", shard_size=20, show_progress=False, on_shard=stop
        )
    with pytest.raises(ValueError, match="1 of 3 shards are done"):
        ShardedEmbeddings(tmp_path / "emb")


def test_dr_encode_with_shards_and_an_ivfpq_index(tiny_bert, corpus_file, tmp_path, capsys):
    from hydra import compose, initialize_config_dir

    from dr.cli.encode import run

    emb, corpus_file = tmp_path / "emb", tmp_path / "big.tsv"
    corpus_file.write_text("".join(f"d{i}\tpassage number {i} about topic {i % 17}\n" for i in range(300)))
    overrides = [
        f"model={tiny_bert}",
        f"corpus={corpus_file}",
        "shard_size=128",
        "fp16=true",
        f"embeddings={emb}",
        "index_kind=ivfpq",
        "index_params.pq_m=8",
        "index_params.nlist=2",
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):  # this checkout's configs
        cfg = compose("encode", overrides=overrides)
    run(cfg, tmp_path / "run")
    manifest = json.loads((emb / MANIFEST).read_text())
    assert manifest["num_shards"] == 3 and manifest["depends"]["dtype"] == "float16"
    index = DenseIndex.load(tmp_path / "run" / "index", use_gpu=False)
    assert len(index) == 300 and index.kind == "ivfpq" and index.index.pq.M == 8 and index.index.nlist == 2
    assert "(ivfpq)" in capsys.readouterr().out
