"""fp32 linear layers through oneDNN on CPU (dr.models.cpu_linear): the same values and gradients as
PyTorch's own kernel to fp32 rounding, the fallbacks, and the model left intact."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dr.models import BiEncoder
from dr.models.cpu_linear import _LinearForward, default_mode, kernel_available, linear, set_cpu_linear, usable

pytestmark = pytest.mark.skipif(not kernel_available(), reason="this PyTorch build has no oneDNN linear kernel")

TEXTS = ["a short query", "a somewhat longer passage about proteins and cells in mice", "third text here"]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("needs", [(True, True, True), (True, False, False), (False, True, True)])
def test_linear_matches_f_linear_with_gradients(bias, needs):
    torch.manual_seed(0)
    x = torch.randn(3, 17, 24).requires_grad_(needs[0])
    w = torch.randn(40, 24).requires_grad_(needs[1])
    b = torch.randn(40).requires_grad_(needs[2]) if bias else None
    grad = torch.randn(3, 17, 40)
    ours, ref = linear(x, w, b), F.linear(x, w, b)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    inputs = [t for t in (x, w, b) if t is not None and t.requires_grad]
    got = torch.autograd.grad(ours, inputs, grad)
    expected = torch.autograd.grad(ref, inputs, grad)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-5)


def test_other_dtypes_autocast_and_no_grad_paths():
    torch.manual_seed(0)
    x, w, b = (
        torch.randn(4, 6, dtype=torch.float64),
        torch.randn(5, 6, dtype=torch.float64),
        torch.randn(5, dtype=torch.float64),
    )
    assert not usable(x, w)
    assert torch.equal(linear(x, w, b), F.linear(x, w, b))  # float64: PyTorch's own kernel, bit for bit
    x32, w32 = x.float(), w.float()
    assert usable(x32, w32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not usable(x32, w32)
        assert linear(x32, w32).dtype == torch.bfloat16  # autocast's bf16 product, as nn.Linear gives
    with torch.no_grad():
        torch.testing.assert_close(linear(x32, w32, b.float()), F.linear(x32, w32, b.float()), atol=1e-5, rtol=1e-5)


def test_encoder_uses_onednn_by_default_with_the_same_loss_and_gradients(tiny_bert):
    onednn = BiEncoder.from_pretrained(tiny_bert, pooling="mean", normalize=True)
    linears = [m for m in onednn.query_model.modules() if type(m) is nn.Linear]
    assert linears and all(isinstance(vars(m).get("forward"), _LinearForward) for m in linears)
    aten = copy.deepcopy(onednn)
    keys = list(onednn.state_dict())
    assert aten.set_cpu_linear("aten") == len(linears) and "forward" not in vars(
        aten.query_model.encoder.layer[0].output.dense
    )
    assert list(aten.state_dict()) == keys

    def loss_and_grads(encoder):
        encoder.train()
        encoder.zero_grad(set_to_none=True)
        torch.manual_seed(3)  # the same dropout masks
        emb = encoder.embed_passages(encoder.tokenize(TEXTS, "passage"))
        loss = (emb @ emb.T / 0.05).logsumexp(-1).mean()
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in encoder.named_parameters() if p.grad is not None}

    loss, grads = loss_and_grads(onednn)
    ref_loss, ref_grads = loss_and_grads(aten)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    assert grads.keys() == ref_grads.keys()
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-5, rtol=1e-3, msg=name)
    emb = onednn.encode_passages(TEXTS, show_progress=False)
    ref = aten.encode_passages(TEXTS, show_progress=False)
    assert abs(emb - ref).max() < 1e-5


def test_setting_survives_pickling_and_copies(tiny_bert):
    encoder = BiEncoder.from_pretrained(tiny_bert)
    for copied in (pickle.loads(pickle.dumps(encoder)), copy.deepcopy(encoder)):
        dense = copied.query_model.encoder.layer[0].output.dense
        assert vars(dense)["forward"].module is dense


def test_environment_switch(monkeypatch, tiny_bert):
    monkeypatch.setenv("DR_CPU_LINEAR", "aten")
    assert default_mode() == "aten"
    encoder = BiEncoder.from_pretrained(tiny_bert)
    assert not any("forward" in vars(m) for m in encoder.modules() if type(m) is nn.Linear)
    monkeypatch.setenv("DR_CPU_LINEAR", "fast")
    with pytest.raises(ValueError, match="DR_CPU_LINEAR must be one of"):
        default_mode()
    with pytest.raises(ValueError, match="cpu_linear must be one of"):
        set_cpu_linear(encoder.query_model, "blas")
    monkeypatch.delenv("DR_CPU_LINEAR")
    assert default_mode() == "onednn"
