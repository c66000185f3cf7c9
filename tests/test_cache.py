"""dr.retrieval.cache: the zero-shot run cache, keyed by weights, settings, data, depth and precision."""

from __future__ import annotations

import json
import os

import torch

from dr.models import BiEncoder
from dr.retrieval.cache import RunCache, encoder_fingerprint, file_stamp
from dr.training import train


def test_run_cache_computes_once(tmp_path):
    cache = RunCache(tmp_path / "cache")
    calls = []

    def compute():
        calls.append(1)
        return {"q1": {"d1": 2.0, "d2": 1.0}}

    first, hit1 = cache.get_or_compute(compute, kind="x", k=10)
    second, hit2 = cache.get_or_compute(compute, kind="x", k=10)
    assert (hit1, hit2) == (False, True) and len(calls) == 1
    assert second == first
    cache.get_or_compute(compute, kind="x", k=20)  # another depth: another entry
    assert len(calls) == 2 and len(list((tmp_path / "cache").glob("*.run"))) == 2
    described = json.loads(next((tmp_path / "cache").glob("*.json")).read_text())
    assert described["kind"] == "x"


def test_fingerprint_changes_with_weights_and_lengths(tiny_bert):
    encoder = BiEncoder.from_pretrained(tiny_bert, pooling="mean", passage_max_length=64)
    base = encoder_fingerprint(encoder)
    assert encoder_fingerprint(BiEncoder.from_pretrained(tiny_bert, pooling="mean", passage_max_length=64)) == base
    assert encoder_fingerprint(BiEncoder.from_pretrained(tiny_bert, pooling="mean", passage_max_length=32)) != base
    assert encoder_fingerprint(BiEncoder.from_pretrained(tiny_bert, pooling="cls", passage_max_length=64)) != base
    with torch.no_grad():
        next(encoder.parameters())[0, 0] += 1e-3
    assert encoder_fingerprint(encoder) != base


def test_file_stamp_changes_when_the_file_changes(tmp_path):
    path = tmp_path / "corpus.tsv"
    path.write_text("d1\thello\n")
    before = file_stamp(str(path))
    path.write_text("d1\thello there\n")
    assert file_stamp(str(path)) != before
    os.utime(path, ns=(1, 1))
    assert file_stamp(str(path))[2] == 1


def test_zero_shot_evaluation_is_reused_and_invalidated(cfg_train, scifact_slice, tmp_path):
    cache = tmp_path / "cache"
    common = [
        "test.before=true",
        "test.bm25=false",
        "test.after=false",
        "export.enabled=false",
        "data.val_fraction=0",
        f"test.cache_dir={cache}",
    ]
    first = train(cfg_train(*common, out=tmp_path / "a", max_steps=1))
    assert len(list(cache.glob("*.run"))) == 1
    second = train(cfg_train(*common, out=tmp_path / "b", max_steps=1))
    assert len(list(cache.glob("*.run"))) == 1  # a hit: nothing new
    assert second["zero_shot/nDCG@10"] == first["zero_shot/nDCG@10"]
    assert (tmp_path / "b" / "runs" / "zero_shot.run").read_text() == (
        tmp_path / "a" / "runs" / "zero_shot.run"
    ).read_text()
    train(cfg_train(*common, "encoder.passage_max_length=40", out=tmp_path / "c", max_steps=1))  # other lengths
    assert len(list(cache.glob("*.run"))) == 2
    copy = tmp_path / "corpus.jsonl"  # another corpus file, same content
    copy.write_text(open(scifact_slice["corpus"]).read())
    train(cfg_train(*common, f"test.corpus={copy}", out=tmp_path / "d", max_steps=1))
    assert len(list(cache.glob("*.run"))) == 3
