"""Selective recomputation of the feed-forward block (dr.models.recompute): the same loss and
gradients as the plain pass, less stored for the backward pass, and the model left intact."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoTokenizer, DistilBertConfig, DistilBertModel

from dr.models import BiEncoder, resolve_model_name
from dr.models.recompute import CHUNK_TOKENS, feed_forward, set_attention_recompute, set_feed_forward_recompute

TEXTS = [
    "a short query",
    "a somewhat longer passage about proteins and cells in mice",
    "third text here",
    "gene expression in tumours and the outcomes of patients treated with a new drug",
]


def loss_and_grads(encoder: BiEncoder, bf16: bool = False, seed: int = 3):
    encoder.train()  # hidden dropout on: the same seed must give the same masks
    encoder.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        emb = encoder.embed_passages(encoder.tokenize(TEXTS, "passage"))
        loss = (emb.float() @ emb.float().T / 0.05).logsumexp(-1).mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}


def assert_same_loss_and_grads(plain: BiEncoder, recomputed: BiEncoder, atol: float = 1e-6, rtol: float = 1e-4) -> dict:
    """The recomputed encoder's loss and every gradient equal the plain one's; returns the gradients."""
    plain_loss, plain_grads = loss_and_grads(plain)
    loss, grads = loss_and_grads(recomputed)
    torch.testing.assert_close(loss, plain_loss, atol=atol, rtol=1e-6)
    assert grads.keys() == plain_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=atol, rtol=rtol, msg=name)
    return grads


def saved_bytes(encoder: BiEncoder) -> int:
    """Bytes of the distinct storages autograd keeps for the backward pass of one training forward,
    the parameters (alive anyway) left out."""
    seen: dict[int, int] = {}
    params = {p.untyped_storage().data_ptr() for p in encoder.parameters()}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    encoder.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        emb = encoder.embed_passages(encoder.tokenize(TEXTS, "passage"))
    emb.sum().backward()
    return sum(seen.values())


@pytest.mark.parametrize("mode", ["activation", "full"])
@pytest.mark.parametrize("chunk_tokens", [None, 7])  # 7: several chunks of the 4 x 18 tokens, the last one short
def test_recompute_gives_the_same_loss_and_gradients(tiny_bert, mode, chunk_tokens):
    plain = BiEncoder.from_pretrained(tiny_bert, pooling="mean", normalize=True)
    recomputed = copy.deepcopy(plain)
    assert recomputed.set_feed_forward_recompute(mode, chunk_tokens) == 2  # the tiny BERT's two layers
    grads = assert_same_loss_and_grads(plain, recomputed)
    assert any("intermediate.dense" in n for n in grads)


def test_recompute_matches_under_bf16_autocast(tiny_bert):
    """Under autocast the recomputed block runs in bf16 in both passes, as the plain one does."""
    plain = BiEncoder.from_pretrained(tiny_bert, pooling="mean", normalize=True)
    recomputed = copy.deepcopy(plain)
    recomputed.set_feed_forward_recompute("full", chunk_tokens=10)
    plain_loss, plain_grads = loss_and_grads(plain, bf16=True)
    loss, grads = loss_and_grads(recomputed, bf16=True)
    torch.testing.assert_close(loss, plain_loss, atol=2e-2, rtol=2e-2)
    for name, grad in plain_grads.items():
        assert grads[name].dtype == grad.dtype == torch.float32
        cos = torch.nn.functional.cosine_similarity(grads[name].flatten(), grad.flatten(), dim=0)
        assert cos > 0.99, (name, float(cos))


def test_recompute_stores_less_for_the_backward_pass(tiny_bert):
    """'activation' drops act(h), 'full' also h: 2 x intermediate_size values per token and layer."""
    encoder = BiEncoder.from_pretrained(tiny_bert, pooling="mean", normalize=True)
    encoder.set_attention_dropout(0.0)
    sizes = {}
    for mode in ("none", "activation", "full"):
        encoder.set_feed_forward_recompute(mode)
        sizes[mode] = saved_bytes(encoder)
    tokens = encoder.tokenize(TEXTS, "passage")["input_ids"].numel()
    inner, layers = encoder.query_model.config.intermediate_size, encoder.query_model.config.num_hidden_layers
    one = tokens * inner * layers * 4  # one fp32 [tokens, intermediate_size] tensor per layer
    assert sizes["none"] - sizes["activation"] == one
    assert sizes["none"] - sizes["full"] == 2 * one
    assert 0 < sizes["full"] < sizes["activation"] < sizes["none"]


def test_none_restores_the_model_and_the_state_dict_is_unchanged(tiny_bert):
    encoder = BiEncoder.from_pretrained(tiny_bert)
    keys = list(encoder.state_dict())
    layer = encoder.query_model.encoder.layer[0]
    assert "feed_forward_chunk" not in vars(layer)
    encoder.set_feed_forward_recompute("full")
    assert "feed_forward_chunk" in vars(layer) and list(encoder.state_dict()) == keys
    assert encoder.set_feed_forward_recompute("none") == 2
    assert "feed_forward_chunk" not in vars(layer)
    with pytest.raises(ValueError, match="one of"):
        set_feed_forward_recompute(encoder.query_model, "some")


def test_distilbert_feed_forward_is_recomputed(tmp_path):
    config = DistilBertConfig(
        vocab_size=30522, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=512
    )
    torch.manual_seed(0)
    DistilBertModel(config).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(resolve_model_name("all-MiniLM-L6-v2")).save_pretrained(tmp_path)
    plain = BiEncoder.from_pretrained(str(tmp_path), pooling="mean", normalize=True)
    recomputed = copy.deepcopy(plain)
    assert recomputed.set_feed_forward_recompute("full", chunk_tokens=9) == 2
    assert_same_loss_and_grads(plain, recomputed)


def test_feed_forward_function_gradients_by_gradcheck():
    """The autograd function against finite differences (float64), both modes, all five inputs."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    params = [torch.randn(*shape, dtype=torch.float64, requires_grad=True) for shape in ((7, 5), (7,), (5, 7), (5,))]
    for mode in ("activation", "full"):
        for chunk in (4, 6):  # uneven and even chunks of the 6 rows

            def f(x, w1, b1, w2, b2):
                return feed_forward(x, _Linear(w1, b1), torch.nn.functional.gelu, _Linear(w2, b2), mode, chunk)

            assert torch.autograd.gradcheck(f, (x, *params))


class _Linear:
    """The two attributes feed_forward reads from an nn.Linear, over given tensors."""

    def __init__(self, weight, bias):
        self.weight, self.bias = weight, bias

    def __call__(self, x):
        return torch.nn.functional.linear(x, self.weight, self.bias)


def test_module_option_sets_the_encoder(tiny_bert):
    """module.ffn_recompute reaches the encoder through DenseRetrievalModule."""
    from functools import partial

    from dr.training import DenseRetrievalModule
    from dr.losses import InfoNCELoss

    encoder = BiEncoder.from_pretrained(tiny_bert)
    DenseRetrievalModule(encoder, InfoNCELoss(), partial(torch.optim.AdamW, lr=1e-3), ffn_recompute="full")
    chunk = vars(encoder.query_model.encoder.layer[1])["feed_forward_chunk"]
    assert (chunk.mode, chunk.chunk_tokens) == ("full", CHUNK_TOKENS)


def test_the_setting_survives_pickling_and_deep_copies(tiny_bert):
    """ddp_spawn pickles the model into its processes; refresh snapshots deep-copy it."""
    import pickle

    encoder = BiEncoder.from_pretrained(tiny_bert, pooling="mean", normalize=True)
    encoder.set_feed_forward_recompute("full", chunk_tokens=5)
    for copied in (pickle.loads(pickle.dumps(encoder)), copy.deepcopy(encoder)):
        chunk = vars(copied.query_model.encoder.layer[0])["feed_forward_chunk"]
        assert chunk.layer is copied.query_model.encoder.layer[0] and (chunk.mode, chunk.chunk_tokens) == ("full", 5)
        loss, grads = loss_and_grads(copied)
        plain_loss, plain_grads = loss_and_grads(encoder)
        torch.testing.assert_close(loss, plain_loss)
        for name, grad in plain_grads.items():
            torch.testing.assert_close(grads[name], grad, msg=name)


# ---------------------------------------------------------------------------- self-attention
@pytest.mark.parametrize("attention_dropout", [0.0, 0.1])  # 0: SDPA's fused kernel; 0.1: masks replayed
def test_attention_recompute_gives_the_same_loss_and_gradients(tiny_bert, attention_dropout):
    plain = BiEncoder.from_pretrained(tiny_bert, pooling="mean", normalize=True)
    plain.set_attention_dropout(attention_dropout)
    recomputed = copy.deepcopy(plain)
    assert recomputed.set_attention_recompute(True) == 2 and recomputed.set_feed_forward_recompute("full") == 2
    grads = assert_same_loss_and_grads(plain, recomputed)
    assert any("attention.self.query" in n for n in grads)


def test_attention_recompute_stores_less_for_the_backward_pass(tiny_bert):
    """The query, key and value projections (at least) are no longer kept."""
    encoder = BiEncoder.from_pretrained(tiny_bert, pooling="mean", normalize=True)
    encoder.set_attention_dropout(0.0)
    plain = saved_bytes(encoder)
    encoder.set_attention_recompute(True)
    recomputed = saved_bytes(encoder)
    tokens = encoder.tokenize(TEXTS, "passage")["input_ids"].numel()
    config = encoder.query_model.config
    one = tokens * config.hidden_size * config.num_hidden_layers * 4  # one fp32 [tokens, hidden] per layer
    assert plain - recomputed >= 3 * one, (plain, recomputed, one)


def test_attention_recompute_is_undone_kept_by_copies_and_set_by_the_module(tiny_bert):
    import pickle
    from functools import partial

    from dr.training import DenseRetrievalModule
    from dr.losses import InfoNCELoss

    encoder = BiEncoder.from_pretrained(tiny_bert, pooling="mean", normalize=True)
    keys = list(encoder.state_dict())
    attention = encoder.query_model.encoder.layer[0].attention.self
    DenseRetrievalModule(encoder, InfoNCELoss(), partial(torch.optim.AdamW, lr=1e-3), attention_recompute=True)
    assert "forward" in vars(attention) and list(encoder.state_dict()) == keys
    for copied in (pickle.loads(pickle.dumps(encoder)), copy.deepcopy(encoder)):
        recomputed = vars(copied.query_model.encoder.layer[0].attention.self)["forward"]
        assert recomputed.module is copied.query_model.encoder.layer[0].attention.self
        loss, grads = loss_and_grads(copied)
        plain_loss, plain_grads = loss_and_grads(encoder)
        torch.testing.assert_close(loss, plain_loss)
        for name, grad in plain_grads.items():
            torch.testing.assert_close(grads[name], grad, msg=name)
    with torch.no_grad():  # no gradient: the module's own forward, nothing recomputed
        encoder.embed_passages(encoder.tokenize(TEXTS, "passage"))
    assert set_attention_recompute(encoder.query_model, False) == 2 and "forward" not in vars(attention)
    # whole-layer checkpointing already recomputes the attention: the option is left off
    other = BiEncoder.from_pretrained(tiny_bert)
    DenseRetrievalModule(
        other, InfoNCELoss(), partial(torch.optim.AdamW, lr=1e-3), gradient_checkpointing=True, attention_recompute=True
    )
    assert "forward" not in vars(other.query_model.encoder.layer[0].attention.self)


def test_distilbert_attention_is_recomputed(tmp_path):
    config = DistilBertConfig(
        vocab_size=30522, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=512
    )
    torch.manual_seed(0)
    DistilBertModel(config).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(resolve_model_name("all-MiniLM-L6-v2")).save_pretrained(tmp_path)
    plain = BiEncoder.from_pretrained(str(tmp_path), pooling="mean", normalize=True)
    recomputed = copy.deepcopy(plain)
    assert recomputed.set_attention_recompute(True) == 2
    assert_same_loss_and_grads(plain, recomputed)
