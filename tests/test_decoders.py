"""Decoder backbones (dr/models/decoder.py): last-token pooling over an appended eos token, right
padding, on tiny randomly initialised Llama and Qwen2 models with tiny BPE tokenizers."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from sentence_transformers import SentenceTransformer
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaModel, PreTrainedTokenizerFast, Qwen2Config, Qwen2Model

from conftest import merge_overrides, tiny_train_overrides
from dr.config import ConfigError
from dr.export.export import export
from dr.models import BiEncoder
from dr.models.base import pool
from dr.models.onnx import onnx_encoder
from dr.validate import validate_config

TEXTS = [
    "dense retrieval with a decoder",
    "a much longer passage about dense retrieval and language models, with more words than the rest",
    "x",
]
KINDS = ("llama", "qwen2")


def _tokenizer(kind: str) -> PreTrainedTokenizerFast:
    """A byte-level BPE (any text tokenises) with Llama's special tokens (bos added, no pad) or
    Qwen2's (no bos, pad = eos)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<s>", "</s>"] if kind == "llama" else ["<|endoftext|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(TEXTS * 3, trainer)
    if kind == "llama":
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
        return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


@pytest.fixture(scope="module")
def tiny_decoders(tmp_path_factory) -> dict[str, str]:
    """``{kind: folder}``: 2-layer, 32-dim Llama and Qwen2 models with random weights."""
    folders = {}
    for kind in KINDS:
        out = tmp_path_factory.mktemp(f"tiny-{kind}")
        torch.manual_seed(0)
        sizes = dict(vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
        config = (LlamaConfig if kind == "llama" else Qwen2Config)(num_key_value_heads=2, **sizes)
        (LlamaModel if kind == "llama" else Qwen2Model)(config).save_pretrained(out)
        _tokenizer(kind).save_pretrained(out)
        folders[kind] = str(out)
    return folders


def test_last_pooling_takes_the_last_real_token_on_either_side():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]])
    assert torch.equal(pool(hidden, right, "last"), torch.stack([hidden[0, 1], hidden[1, 3]]))
    assert torch.equal(pool(hidden, left, "last"), hidden[:, 3])


@pytest.mark.parametrize("kind", KINDS)
def test_a_decoder_embeds_each_text_by_its_appended_eos(tiny_decoders, kind):
    enc = BiEncoder.from_pretrained(tiny_decoders[kind], pooling="last", normalize=True, passage_max_length=8)
    tok = enc.tokenizer
    assert enc.append_eos and tok.padding_side == "right" and tok.pad_token_id == tok.eos_token_id
    batch = enc.tokenize(TEXTS, "passage")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape[1] == 8  # the long text is cut to 8 tokens, the eos among them
    last = mask.sum(1) - 1
    assert (ids[torch.arange(len(TEXTS)), last] == tok.eos_token_id).all()
    assert (ids[:, 0] == tok.bos_token_id).all() if kind == "llama" else tok.bos_token_id is None
    # RepLLaMA's embedding: the last state of text + eos, run alone (no padding), normalised
    with torch.no_grad():
        alone = torch.stack(
            [
                enc.query_model(input_ids=ids[i : i + 1, : last[i] + 1]).last_hidden_state[0, -1]
                for i in range(len(TEXTS))
            ]
        )
    expected = torch.nn.functional.normalize(alone, dim=-1).numpy()
    # right padding is exact under causal attention: a batch gives the texts' own embeddings
    np.testing.assert_allclose(enc.encode_passages(TEXTS, show_progress=False, batch_size=3), expected, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_a_decoder_exports_to_sentence_transformers_and_onnx(tiny_decoders, tmp_path, kind):
    enc = BiEncoder.from_pretrained(
        tiny_decoders[kind], pooling="last", normalize=True, query_max_length=16, passage_max_length=16
    )
    out = export(enc, tmp_path / "export", format="onnx")
    pooling = json.loads((out / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_lasttoken"] and not pooling["pooling_mode_cls_token"]
    assert "A decoder backbone" in (out / "README.md").read_text()
    expected = enc.encode_passages(TEXTS, show_progress=False)
    st = SentenceTransformer(str(out), device="cpu")
    np.testing.assert_allclose(st.encode(TEXTS), expected, atol=1e-5)  # the tokenizer.json appends the eos
    back = BiEncoder.from_pretrained(str(out))
    assert back.pooling == "last" and back.append_eos
    np.testing.assert_allclose(back.encode_passages(TEXTS, show_progress=False), expected, atol=1e-6)
    onnx = onnx_encoder(back, folder=out)  # the export's own onnx/model.onnx
    np.testing.assert_allclose(onnx.encode_passages(TEXTS, show_progress=False), expected, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_train_a_decoder_with_lightning(tiny_decoders, scifact_slice, tmp_path, compose_config, caplog, kind):
    """dr-train's module and a real Trainer on a tiny decoder: the default levers (feed-forward and
    attention recomputation, oneDNN linear layers) apply, and gradient checkpointing (qwen2); the
    attention dropout, which these models keep as a float, is skipped with a log line; the export
    gives sentence-transformers the trained embeddings."""
    from dr.training import train

    out = tmp_path / "run"
    overrides = [
        "encoder=repllama",
        "encoder.pooling=last",  # tiny_train_overrides says cls
        f"encoder.name_or_path={tiny_decoders[kind]}",
        "test.bm25=false",
        "test.before=false",
        "export.index=false",
        *(["module.gradient_checkpointing=true"] if kind == "qwen2" else []),
    ]
    base = tiny_train_overrides(tiny_decoders[kind], scifact_slice, out, max_steps=2)
    cfg = compose_config("train", merge_overrides(base, overrides))
    assert cfg.encoder.pooling == "last" and cfg.encoder.query_prompt == "query: "
    with caplog.at_level(logging.WARNING, logger="dr"):
        metrics = train(cfg)
    assert metrics["train/global_step"] == 2 and 0.0 <= metrics["trained/nDCG@10"] <= 1.0
    assert "no supported" not in caplog.text  # the recomputation levers (on by default) found their blocks
    assert "module.attention_dropout=0: no attention module with an nn.Dropout" in caplog.text  # said, skipped
    trained = BiEncoder.from_pretrained(str(out / "export"))
    untrained = BiEncoder.from_pretrained(tiny_decoders[kind], pooling="last", normalize=True)
    assert not np.allclose(
        trained.encode_passages(TEXTS, show_progress=False), untrained.encode_passages(TEXTS, show_progress=False)
    )
    st = SentenceTransformer(str(out / "export"), device="cpu")
    np.testing.assert_allclose(
        st.encode_document(TEXTS), trained.encode_passages(TEXTS, show_progress=False), atol=1e-5
    )
    short = TEXTS[::2]  # within the query max length (sentence-transformers cuts queries at the passage length)
    np.testing.assert_allclose(st.encode_query(short), trained.encode_queries(short, show_progress=False), atol=1e-5)


def test_decoder_settings_are_checked(tiny_bert, tmp_path):
    with pytest.raises(ConfigError, match="encoder.append_eos=true: the tokenizer has no eos token"):
        BiEncoder.from_pretrained(tiny_bert, pooling="last", append_eos=True)  # BERT's tokenizer
    assert not BiEncoder.from_pretrained(tiny_bert, pooling="last").append_eos  # the default needs an eos token
    with pytest.raises(ConfigError, match="encoder.pooling=max: expected one of cls, mean, last"):
        validate_config(OmegaConf.create({"encoder": {"pooling": "max"}}))
    with pytest.raises(ConfigError, match="encoder.append_eos=yes: expected true or false"):
        validate_config(OmegaConf.create({"encoder": {"append_eos": "yes"}}))


def test_a_sentence_transformers_6_folder_keeps_its_pooling(tiny_bert, tmp_path):
    """sentence-transformers >= 6 writes ``"pooling_mode": "mean"`` instead of one boolean per mode;
    dr read no pooling there and fell back to cls."""
    folder = tmp_path / "st6"
    SentenceTransformer(tiny_bert, device="cpu").save(str(folder))  # mean pooling, ST's default
    assert json.loads((folder / "1_Pooling" / "config.json").read_text())["pooling_mode"] == "mean"
    assert BiEncoder.from_pretrained(str(folder)).pooling == "mean"
    assert Path(folder / "modules.json").is_file()


@pytest.mark.parametrize("kind", KINDS)
def test_recompute_levers_give_a_decoder_the_same_gradients_for_less_memory(tiny_decoders, kind):
    """``module.ffn_recompute`` (the gated feed-forward block, checkpointed) and
    ``module.attention_recompute`` (the rotary self-attention) apply to Llama and Qwen2: the same loss
    and gradients as the plain pass, less kept for the backward pass."""
    from test_recompute import assert_same_loss_and_grads, saved_bytes

    def encoder():
        return BiEncoder.from_pretrained(tiny_decoders[kind], pooling="last", normalize=True)

    plain = encoder()
    for mode in ("activation", "full"):
        recomputed = encoder()
        assert recomputed.set_feed_forward_recompute(mode) == 2  # one block per layer
        assert recomputed.set_attention_recompute(True) == 2
        assert_same_loss_and_grads(plain, recomputed)
        assert saved_bytes(recomputed) < saved_bytes(plain)
    assert recomputed.set_feed_forward_recompute("none") == 2 and recomputed.set_attention_recompute(False) == 2
    assert "forward" not in recomputed.query_model.layers[0].mlp.__dict__
