"""Exported folders load with sentence-transformers and transformers and match our encoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoModel

from dr.config import ConfigError
from dr.models.encoder import DR_CONFIG, BiEncoder
from dr.export.export import export, read_dr_config
from dr.retrieval.index import DenseIndex

TEXTS = [
    "x",
    "a much longer passage about dense retrieval, with several more tokens in it than the rest",
    "medium length text",
    "another sentence",
]

CASES = {
    # name: (pooling, normalize, similarity, Normalize module expected, ST similarity name)
    "mean-norm-cos": ("mean", True, "cos", True, "cosine"),
    "cls-raw-dot": ("cls", False, "dot", False, "dot"),
}


def _encoder(tiny_bert: str, pooling: str, normalize: bool, similarity: str, shared: bool = True) -> BiEncoder:
    enc = BiEncoder.from_pretrained(
        tiny_bert,
        shared=shared,
        pooling=pooling,
        normalize=normalize,
        similarity=similarity,
        query_max_length=12,
        passage_max_length=48,
    )
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # move off the fixture's weights, so the export must carry the real ones
        for p in (enc.passage_model or enc.query_model).parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return enc


def _st_encode(model: SentenceTransformer, texts: list[str]) -> np.ndarray:
    return np.asarray(model.encode(texts, batch_size=2, convert_to_numpy=True, show_progress_bar=False))


@pytest.mark.parametrize("case", list(CASES))
def test_export_matches_sentence_transformers(tiny_bert, tmp_path, case):
    pooling, normalize, similarity, has_normalize, st_similarity = CASES[case]
    enc = _encoder(tiny_bert, pooling, normalize, similarity)
    out = export(enc, tmp_path / "export")
    assert out == tmp_path / "export"

    modules = json.loads((out / "modules.json").read_text())
    types = [m["type"].rsplit(".", 1)[-1] for m in modules]
    assert types == (["Transformer", "Pooling", "Normalize"] if has_normalize else ["Transformer", "Pooling"])
    pooling_config = json.loads((out / "1_Pooling" / "config.json").read_text())
    assert pooling_config["pooling_mode_cls_token"] is (pooling == "cls")
    assert pooling_config["pooling_mode_mean_tokens"] is (pooling == "mean")
    assert pooling_config["word_embedding_dimension"] == 32
    assert (out / DR_CONFIG).is_file()
    assert read_dr_config(out) == enc.config_dict()
    assert json.loads((out / "sentence_bert_config.json").read_text())["max_seq_length"] == enc.passage_max_length

    st = SentenceTransformer(str(out), device="cpu")
    assert st.similarity_fn_name == st_similarity
    assert st.max_seq_length == enc.passage_max_length == 48
    expected = enc.encode_passages(TEXTS, show_progress=False)
    got = _st_encode(st, TEXTS)
    assert got.shape == expected.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    norms = np.linalg.norm(got, axis=1)
    if normalize:
        np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    else:
        assert not np.allclose(norms, 1.0, atol=1e-2)

    hf = AutoModel.from_pretrained(str(out))
    assert hf.config.hidden_size == 32
    for (name, a), (_, b) in zip(hf.state_dict().items(), enc.query_model.state_dict().items()):
        assert torch.equal(a, b), name


def test_export_truncates_like_the_encoder(tiny_bert, tmp_path):
    enc = _encoder(tiny_bert, "mean", True, "cos")
    enc.passage_max_length = 8  # the long text is cut by both sides
    st = SentenceTransformer(str(export(enc, tmp_path / "export")), device="cpu")
    assert st.max_seq_length == 8
    np.testing.assert_allclose(_st_encode(st, TEXTS), enc.encode_passages(TEXTS, show_progress=False), atol=1e-5)


def test_export_with_index_round_trips(tiny_bert, tmp_path):
    enc = _encoder(tiny_bert, "mean", True, "cos")
    docids = [f"d{i}" for i in range(len(TEXTS))]
    index = DenseIndex.build(enc.encode_passages(TEXTS, show_progress=False), docids, use_gpu=False)
    out = export(enc, tmp_path / "export", index=index)
    assert (out / "index" / "index").is_file()
    assert (out / "index" / "docid").read_text().splitlines() == docids
    loaded = DenseIndex.load(out / "index", use_gpu=False)
    queries = enc.encode_queries(["dense retrieval", "medium"], show_progress=False)
    before_scores, before_ids = index.search(queries, 3)
    after_scores, after_ids = loaded.search(queries, 3)
    np.testing.assert_array_equal(before_scores, after_scores)
    assert before_ids == after_ids
    # And the exported model itself finds the same neighbours as the exported index.
    st = SentenceTransformer(str(out), device="cpu")
    st_scores, st_ids = loaded.search(_st_encode(st, ["dense retrieval", "medium"]), 3)
    assert st_ids == before_ids
    np.testing.assert_allclose(st_scores, before_scores, atol=1e-5)


def test_export_replaces_an_existing_folder(tiny_bert, tmp_path):
    enc = _encoder(tiny_bert, "cls", False, "dot")
    out = tmp_path / "export"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    with pytest.raises(ConfigError, match="not a dr export"):  # only a previous export is replaced without overwrite
        export(enc, out)
    (out / "dr_config.json").write_text("{}")
    export(enc, out)
    assert not (out / "stale.txt").exists()
    assert (out / "modules.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no temporary folder left behind


def test_separate_towers_export_two_loadable_folders(tiny_bert, tmp_path):
    enc = _encoder(tiny_bert, "mean", True, "cos", shared=False)
    out = export(enc, tmp_path / "export")
    config = read_dr_config(out)
    assert config["shared"] is False
    assert not (out / "modules.json").exists()
    q_expected = enc.encode_queries(TEXTS, show_progress=False)
    p_expected = enc.encode_passages(TEXTS, show_progress=False)
    assert np.abs(q_expected - p_expected).max() > 1e-2  # the towers differ
    st_q = SentenceTransformer(str(out / "query"), device="cpu")
    st_p = SentenceTransformer(str(out / "passage"), device="cpu")
    assert st_q.max_seq_length == enc.query_max_length == 12
    assert st_p.max_seq_length == enc.passage_max_length == 48
    assert st_q.similarity_fn_name == st_p.similarity_fn_name == "cosine"
    np.testing.assert_allclose(_st_encode(st_q, TEXTS), q_expected, atol=1e-5)
    np.testing.assert_allclose(_st_encode(st_p, TEXTS), p_expected, atol=1e-5)
    # The whole folder also loads back into a BiEncoder with both towers.
    back = BiEncoder.from_pretrained(str(out))
    assert not back.shared and back.config_dict() == enc.config_dict()
    np.testing.assert_allclose(back.encode_passages(TEXTS, show_progress=False), p_expected, atol=1e-6)
