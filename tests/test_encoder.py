"""BiEncoder on a real tiny BERT: pooling against hand computations, order, towers, persistence."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from dr.models.encoder import DR_CONFIG, BiEncoder, pool, resolve_model_name

# Deliberately not sorted by length, so encode()'s length sort really reorders them.
TEXTS = [
    "short",
    "a much longer passage about dense retrieval with several more tokens in it",
    "medium length text here",
    "x",
    "another fairly long sentence that needs padding for the shorter ones",
]


def _hidden_states(path: str, texts: list[str]):
    """Last hidden states of the raw AutoModel on one padded batch, plus the real token counts."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    lengths = [len(tokenizer(t)["input_ids"]) for t in texts]
    return batch, hidden, lengths


def _manual(hidden: torch.Tensor, lengths: list[int], pooling: str) -> np.ndarray:
    rows = []
    for i, n in enumerate(lengths):
        if pooling == "cls":
            rows.append(hidden[i, 0])
        else:  # mean over the real tokens only, written as a plain slice
            rows.append(hidden[i, :n].sum(0) / n)
    return torch.stack(rows).numpy()


def test_mean_pooling_equals_manual_masked_mean(tiny_bert):
    batch, hidden, lengths = _hidden_states(tiny_bert, TEXTS)
    assert len(set(lengths)) > 1 and min(lengths) < hidden.shape[1]  # the batch really has padding
    expected = _manual(hidden, lengths, "mean")
    enc = BiEncoder.from_pretrained(tiny_bert, pooling="mean").eval()
    with torch.no_grad():
        got = enc.embed_passages(batch).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(enc.encode_passages(TEXTS, batch_size=2, show_progress=False), expected, atol=1e-5)
    # Masking matters: a plain mean over the padded length gives something else for short texts.
    unmasked = hidden.mean(1).numpy()
    assert not np.allclose(unmasked[0], expected[0], atol=1e-3)


def test_cls_pooling_equals_first_token(tiny_bert):
    batch, hidden, lengths = _hidden_states(tiny_bert, TEXTS)
    expected = _manual(hidden, lengths, "cls")
    enc = BiEncoder.from_pretrained(tiny_bert, pooling="cls").eval()
    with torch.no_grad():
        got = enc.embed_queries(batch).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(enc.encode_queries(TEXTS, batch_size=2, show_progress=False), expected, atol=1e-5)
    # cls and mean really differ, so each test pins its own pooling.
    assert not np.allclose(expected, _manual(hidden, lengths, "mean"), atol=1e-3)


def test_pool_on_a_hand_made_tensor():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert pool(hidden, mask, "cls").tolist() == [[1.0, 2.0]]
    assert pool(hidden, mask, "mean").tolist() == [[2.0, 3.0]]
    with pytest.raises(ValueError, match="pooling"):
        pool(hidden, mask, "max")


def test_normalize_gives_unit_norms_and_keeps_dot(tiny_bert):
    enc = BiEncoder.from_pretrained(tiny_bert, pooling="mean", normalize=True, similarity="dot")
    assert enc.normalize and enc.similarity == "dot"
    emb = enc.encode_passages(TEXTS, show_progress=False)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    raw = BiEncoder.from_pretrained(tiny_bert, pooling="mean", normalize=False).encode_passages(
        TEXTS, show_progress=False
    )
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-2)
    np.testing.assert_allclose(emb, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)


def test_cos_similarity_forces_normalisation(tiny_bert):
    enc = BiEncoder.from_pretrained(tiny_bert, normalize=False, similarity="cos")
    assert enc.normalize is True and enc.similarity == "cos"
    emb = enc.encode_queries(TEXTS, show_progress=False)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # Scores are then cosines: the diagonal of q @ q.T is 1.
    q = torch.from_numpy(emb)
    np.testing.assert_allclose(torch.diagonal(enc.score(q, q)).numpy(), 1.0, atol=1e-5)


def test_invalid_settings_are_rejected(tiny_bert):
    model = AutoModel.from_pretrained(tiny_bert)
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    with pytest.raises(ValueError, match="pooling"):
        BiEncoder(model, tokenizer, pooling="max")
    with pytest.raises(ValueError, match="similarity"):
        BiEncoder(model, tokenizer, similarity="l2")


def test_encode_keeps_input_order(tiny_bert):
    enc = BiEncoder.from_pretrained(tiny_bert, pooling="mean")
    lengths = [len(enc.tokenizer(t)["input_ids"]) for t in TEXTS]
    assert lengths != sorted(lengths, reverse=True)
    batched = enc.encode_passages(TEXTS, batch_size=2, show_progress=False)
    single = np.concatenate([enc.encode_passages([t], show_progress=False) for t in TEXTS])
    assert batched.shape == (len(TEXTS), 32) and batched.dtype == np.float32
    np.testing.assert_allclose(batched, single, atol=1e-5)
    # Rows are distinct, so a permutation would have been caught.
    assert np.linalg.norm(batched[0] - batched[1]) > 1e-2
    assert enc.encode_passages([], show_progress=False).shape == (0, 32)


def test_query_max_length_truncates(tiny_bert):
    enc = BiEncoder.from_pretrained(tiny_bert, pooling="mean", query_max_length=6, passage_max_length=256)
    long_text = TEXTS[1]
    ids = enc.tokenizer(long_text)["input_ids"]
    assert len(ids) > 6
    # The first 4 word pieces between [CLS] and [SEP] are what a 6-token query keeps.
    cut = enc.tokenizer.decode(ids[1:5])
    np.testing.assert_allclose(
        enc.encode_queries([long_text], show_progress=False),
        enc.encode_passages([cut], show_progress=False),
        atol=1e-5,
    )
    assert not np.allclose(
        enc.encode_queries([long_text], show_progress=False),
        enc.encode_passages([long_text], show_progress=False),
        atol=1e-3,
    )


def _perturb(model: torch.nn.Module, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))


def test_separate_towers_start_equal_and_move_independently(tiny_bert):
    enc = BiEncoder.from_pretrained(tiny_bert, shared=False, pooling="mean")
    assert not enc.shared and enc.passage_model is not enc.query_model
    q0 = enc.encode_queries(TEXTS, show_progress=False)
    p0 = enc.encode_passages(TEXTS, show_progress=False)
    np.testing.assert_allclose(q0, p0, atol=1e-5)
    _perturb(enc.passage_model)
    q1 = enc.encode_queries(TEXTS, show_progress=False)
    p1 = enc.encode_passages(TEXTS, show_progress=False)
    np.testing.assert_allclose(q1, q0, atol=1e-6)
    assert np.abs(p1 - p0).max() > 1e-2


def test_shared_encoder_uses_one_model_for_both(tiny_bert):
    enc = BiEncoder.from_pretrained(tiny_bert, pooling="mean")
    assert enc.shared
    _perturb(enc.query_model)
    np.testing.assert_allclose(
        enc.encode_queries(TEXTS[:2], show_progress=False),
        enc.encode_passages(TEXTS[:2], show_progress=False),
        atol=1e-5,
    )


def test_save_load_round_trip_shared(tiny_bert, tmp_path):
    enc = BiEncoder.from_pretrained(
        tiny_bert, pooling="mean", normalize=True, similarity="dot", query_max_length=12, passage_max_length=40
    )
    _perturb(enc.query_model)  # so the check is about the saved weights, not the starting ones
    enc.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / DR_CONFIG).read_text())
    assert saved["shared"] is True and saved["dim"] == 32
    loaded = BiEncoder.from_pretrained(str(tmp_path / "m"))
    assert loaded.config_dict() == enc.config_dict()
    assert (loaded.pooling, loaded.normalize, loaded.similarity) == ("mean", True, "dot")
    assert (loaded.query_max_length, loaded.passage_max_length) == (12, 40)
    np.testing.assert_allclose(
        loaded.encode_passages(TEXTS, show_progress=False), enc.encode_passages(TEXTS, show_progress=False), atol=1e-6
    )
    # Explicit arguments still win over the saved config.
    assert BiEncoder.from_pretrained(str(tmp_path / "m"), pooling="cls").pooling == "cls"


def test_save_load_round_trip_separate_towers(tiny_bert, tmp_path):
    enc = BiEncoder.from_pretrained(
        tiny_bert,
        shared=False,
        pooling="cls",
        normalize=False,
        similarity="dot",
        query_max_length=10,
        passage_max_length=50,
    )
    _perturb(enc.passage_model)
    enc.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "query" / "config.json").is_file()
    assert (tmp_path / "m" / "passage" / "config.json").is_file()
    loaded = BiEncoder.from_pretrained(str(tmp_path / "m"))
    assert not loaded.shared
    assert loaded.config_dict() == enc.config_dict()
    assert loaded.config_dict()["shared"] is False
    q, p = loaded.encode_queries(TEXTS, show_progress=False), loaded.encode_passages(TEXTS, show_progress=False)
    np.testing.assert_allclose(q, enc.encode_queries(TEXTS, show_progress=False), atol=1e-6)
    np.testing.assert_allclose(p, enc.encode_passages(TEXTS, show_progress=False), atol=1e-6)
    assert np.abs(q - p).max() > 1e-2  # the towers came back different, as saved


def test_packaged_minilm_infers_sentence_transformers_settings():
    path = resolve_model_name("all-MiniLM-L6-v2")
    assert path != "sentence-transformers/all-MiniLM-L6-v2"  # the packaged copy, no network
    enc = BiEncoder.from_pretrained("all-MiniLM-L6-v2")
    assert enc.pooling == "mean"
    assert enc.normalize is True
    assert enc.similarity == "cos"
    assert (enc.query_max_length, enc.passage_max_length) == (32, 256)
    assert enc.dim == 384
    emb = enc.encode_passages(["a cat sits on the mat", "dense retrieval"], show_progress=False)
    assert emb.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_plain_hf_folder_gets_the_defaults(tiny_bert):
    enc = BiEncoder.from_pretrained(tiny_bert)
    assert (enc.pooling, enc.normalize, enc.similarity) == ("cls", False, "dot")
    assert (enc.query_max_length, enc.passage_max_length) == (32, 256)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_bert):
    """Checkpointed layers recompute their activations (dropout replayed): same loss, same gradients."""
    texts = ["a short query", "a somewhat longer passage about proteins and cells", "third text here"]

    def loss_and_grads(checkpointing: bool):
        encoder = BiEncoder.from_pretrained(tiny_bert, pooling="mean", normalize=True)
        if checkpointing:
            encoder.gradient_checkpointing_enable()
        assert encoder.query_model.is_gradient_checkpointing == checkpointing
        encoder.train()
        torch.manual_seed(3)  # dropout is active: the same seed gives the same masks
        emb = encoder.embed_passages(encoder.tokenize(texts, "passage"))
        loss = (emb @ emb.T).logsumexp(-1).mean()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}

    plain_loss, plain = loss_and_grads(False)
    ckpt_loss, ckpt = loss_and_grads(True)
    torch.testing.assert_close(ckpt_loss, plain_loss, atol=1e-6, rtol=1e-5)
    assert plain.keys() == ckpt.keys() and len(plain) > 10
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], atol=1e-6, rtol=1e-4, msg=name)


def test_a_missing_model_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model folder"):
        BiEncoder.from_pretrained(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="no such model folder"):
        resolve_model_name("./not-here")
    assert resolve_model_name("org/model") == "org/model"  # a hub id is left to the hub


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_length_buckets_give_the_same_embeddings_loss_and_gradients(tiny_bert, pooling):
    """Bucketed (padding-trimmed) embedding equals the padded pass: embeddings within 1e-5 (fp32),
    and the same loss and gradients."""
    texts = [
        "short",
        "a much longer passage about proteins, cells and the immune system of mice",
        "mid length text here",
        "x",
        "another fairly long passage that talks about gene expression in tumours and outcomes",
    ]

    def run(buckets: int):
        encoder = BiEncoder.from_pretrained(tiny_bert, pooling=pooling, normalize=True)
        encoder.eval()  # no dropout: the passes must agree exactly
        batch = encoder.tokenize(texts, "passage")
        emb = encoder.embed_passages(batch, buckets=buckets)
        loss = (emb @ emb.T / 0.05).logsumexp(-1).mean()
        loss.backward()
        return (
            emb.detach(),
            loss.detach(),
            {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None},
        )

    emb1, loss1, grads1 = run(1)
    for buckets in (2, 3, 5, 8):
        emb, loss, grads = run(buckets)
        assert (emb - emb1).abs().max() < 1e-5, buckets
        torch.testing.assert_close(loss, loss1, atol=1e-5, rtol=1e-5)
        for name, grad in grads1.items():
            torch.testing.assert_close(grads[name], grad, atol=1e-5, rtol=1e-3, msg=name)


def test_attention_dropout_zero_leaves_only_the_hidden_dropout(tiny_bert):
    """set_attention_dropout(0) switches off exactly the dropout on attention probabilities."""
    encoder = BiEncoder.from_pretrained(tiny_bert, pooling="mean", normalize=True)
    for module in encoder.modules():  # switch off every other dropout, so only attention's is left
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    for name, module in encoder.named_modules():
        if type(module).__name__.endswith("SelfAttention"):
            module.dropout.p = 0.5
    inputs = encoder.tokenize(TEXTS, "passage")
    encoder.eval()
    with torch.no_grad():
        reference = encoder.embed_passages(inputs)
    encoder.train()
    torch.manual_seed(0)
    with torch.no_grad():
        assert not torch.allclose(encoder.embed_passages(inputs), reference, atol=1e-4)
    assert encoder.set_attention_dropout(0.0) == encoder.query_model.config.num_hidden_layers
    with torch.no_grad():
        torch.testing.assert_close(encoder.embed_passages(inputs), reference, atol=1e-5, rtol=1e-5)
