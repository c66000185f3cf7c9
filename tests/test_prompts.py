"""Query and passage prompts (``encoder.query_prompt`` / ``encoder.passage_prompt``): applied wherever
dr tokenises, saved with the model, exported as sentence-transformers ``prompts``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from sentence_transformers import SentenceTransformer

from dr.config import ConfigError
from dr.export.export import export
from dr.models import BiEncoder
from dr.models.onnx import onnx_encoder
from dr.validate import validate_config

TEXTS = [
    "x",
    "a much longer passage about dense retrieval, with several more tokens in it than the rest of them here",
    "medium length text",
]
PROMPTS = {"query_prompt": "query: ", "passage_prompt": "passage: "}


def _encoder(tiny_bert: str, max_length: int = 12, **prompts) -> BiEncoder:
    enc = BiEncoder.from_pretrained(
        tiny_bert, pooling="mean", normalize=True, query_max_length=max_length, passage_max_length=max_length, **prompts
    )
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in enc.query_model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return enc


def test_the_prompt_comes_first_and_counts_against_the_max_length(tiny_bert):
    enc = _encoder(tiny_bert, **PROMPTS)
    plain = _encoder(tiny_bert)
    for kind, prompt in (("query", "query: "), ("passage", "passage: ")):
        # training (tokenize) and inference (encode) tokenise alike: the prompt, then the text, cut at the max length
        ids = enc.tokenize(TEXTS, kind)["input_ids"]
        assert torch.equal(ids, plain.tokenize([prompt + t for t in TEXTS], kind)["input_ids"])
        assert ids.shape[1] == 12  # the long text is cut to 12 tokens, the prompt's among them
        np.testing.assert_allclose(
            enc.encode(TEXTS, kind, show_progress=False),
            plain.encode([prompt + t for t in TEXTS], kind, show_progress=False),
            atol=1e-6,
        )
    assert not np.allclose(
        enc.encode_queries(TEXTS, show_progress=False), plain.encode_queries(TEXTS, show_progress=False)
    )
    assert {k: enc.config_dict()[k] for k in PROMPTS} == PROMPTS
    assert "query_prompt" not in plain.config_dict()  # an encoder without prompts keeps its keys (and caches)


def test_export_gives_sentence_transformers_the_same_prompted_embeddings(tiny_bert, tmp_path):
    enc = _encoder(tiny_bert, **PROMPTS)
    out = export(enc, tmp_path / "export")
    st_config = json.loads((out / "config_sentence_transformers.json").read_text())
    assert st_config["prompts"] == {"query": "query: ", "document": "passage: ", "passage": "passage: "}
    assert st_config["default_prompt_name"] is None  # a plain encode cannot know which kind it is given
    assert "`model.encode_query`" in (out / "README.md").read_text()

    st = SentenceTransformer(str(out), device="cpu")
    queries, passages = enc.encode_queries(TEXTS, show_progress=False), enc.encode_passages(TEXTS, show_progress=False)
    for got in (st.encode(TEXTS, prompt_name="query"), st.encode_query(TEXTS)):
        np.testing.assert_allclose(got, queries, atol=1e-5)
    for got in (st.encode(TEXTS, prompt_name="passage"), st.encode_document(TEXTS)):
        np.testing.assert_allclose(got, passages, atol=1e-5)
    assert not np.allclose(st.encode(TEXTS), passages, atol=1e-3)  # no prompt: other embeddings

    # dr's own folder keeps them: reloading, ONNX and a shared prompt
    back = BiEncoder.from_pretrained(str(out))
    assert (back.query_prompt, back.passage_prompt) == ("query: ", "passage: ")
    np.testing.assert_allclose(back.encode_queries(TEXTS, show_progress=False), queries, atol=1e-6)
    onnx = onnx_encoder(enc)
    assert onnx.config_dict()["query_prompt"] == "query: "
    np.testing.assert_allclose(onnx.encode_queries(TEXTS, show_progress=False), queries, atol=1e-5)
    np.testing.assert_allclose(onnx.encode_passages(TEXTS, show_progress=False), passages, atol=1e-5)
    shared = export(_encoder(tiny_bert, query_prompt="Represent: ", passage_prompt="Represent: "), tmp_path / "shared")
    assert json.loads((shared / "config_sentence_transformers.json").read_text())["default_prompt_name"] == "query"


def test_prompts_of_a_sentence_transformers_folder_are_read(tiny_bert, tmp_path):
    """An E5-style folder (prompts in config_sentence_transformers.json, no dr_config.json) brings its
    prompts; an argument overrides them, and "" removes one."""
    folder = tmp_path / "e5"
    SentenceTransformer(tiny_bert, device="cpu").save(str(folder))
    config = json.loads((folder / "config_sentence_transformers.json").read_text())
    config["prompts"] = {"query": "query: ", "document": "", "passage": "passage: "}
    (folder / "config_sentence_transformers.json").write_text(json.dumps(config))
    enc = BiEncoder.from_pretrained(str(folder))
    assert (enc.query_prompt, enc.passage_prompt) == ("query: ", "passage: ")
    enc = BiEncoder.from_pretrained(str(folder), query_prompt="", passage_prompt="search_document: ")
    assert (enc.query_prompt, enc.passage_prompt) == (None, "search_document: ")


def test_a_checkpoint_and_a_refresh_snapshot_keep_the_prompts(cfg_train, tmp_path):
    """dr-train with prompts: the .ckpt (rebuilt from the run's config.yaml) and the saved folder (what
    the refresh worker and the export load) encode with them; TAS clustering gets the query prompt."""
    from dr.training import train

    out = tmp_path / "run"
    cfg = cfg_train(
        "encoder.query_prompt='query: '",
        "encoder.passage_prompt='passage: '",
        "test.enabled=false",
        "export.index=false",
        out=out,
        max_steps=2,
    )
    train(cfg)
    trained = BiEncoder.load(str(out / "checkpoints" / "last.ckpt"), device="cpu")
    assert (trained.query_prompt, trained.passage_prompt) == ("query: ", "passage: ")
    trained.save_pretrained(tmp_path / "snapshot")
    snapshot = BiEncoder.from_pretrained(str(tmp_path / "snapshot"))
    np.testing.assert_allclose(
        snapshot.encode_queries(TEXTS, show_progress=False),
        trained.encode_queries(TEXTS, show_progress=False),
        atol=1e-6,
    )
    assert json.loads((out / "export" / "dr_config.json").read_text())["passage_prompt"] == "passage: "
    tas = cfg_train("sampler=tas", "encoder.query_prompt='q: '")
    assert tas.data.batch_sampler.encoder.query_prompt == "q: "


def test_a_prompt_that_is_not_a_string_is_refused(tiny_bert, tmp_path):
    with pytest.raises(ValueError, match="encoder.query_prompt=5: expected a string"):
        BiEncoder.from_pretrained(tiny_bert, query_prompt=5)
    with pytest.raises(ConfigError, match="encoder.passage_prompt=True: expected a string"):
        validate_config(OmegaConf.create({"encoder": {"passage_prompt": True}}))
    corpus = tmp_path / "corpus.tsv"
    corpus.write_text("d1\tsome text\n")
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "dr-encode"),
            f"model={tiny_bert}",
            f"corpus={corpus}",
            "encoder.query_prompt=[a]",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        "dr-encode: error: encoder.query_prompt=['a']: expected a string (the text put before each text, "
        'e.g. "query: ") or null'
    ], proc.stderr
