"""LoRA adapters (encoder.lora, dr.models.lora): training updates and checkpoints the adapters alone,
a resume continues exactly, the export merges them (or keeps peft's adapter files) and loads in
sentence-transformers, and the speed levers, ONNX and the refresh snapshot work with them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dr.config import ConfigError
from dr.export import export
from dr.models import BiEncoder
from dr.training import train

LORA = "+encoder.lora.r=4"
TEXTS = ["a claim about cells and their membranes", "another sentence", "vitamin D deficiency in adults"]


def _lora_encoder(tiny_bert: str, seed: int = 0, **lora) -> BiEncoder:
    """The tiny BERT with adapters whose B matrices are random (fresh ones are zero: no change)."""
    torch.manual_seed(seed)
    encoder = BiEncoder.from_pretrained(tiny_bert, pooling="mean", normalize=True, lora={"r": 4, **lora})
    with torch.no_grad():
        for name, p in encoder.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    return encoder.eval()


def test_training_updates_and_checkpoints_only_the_adapters(cfg_train, tiny_bert, tmp_path):
    out = tmp_path / "run"
    metrics = train(cfg_train(LORA, "test.before=false", "test.bm25=false"))
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    encoder_keys = [k for k in ckpt["state_dict"] if k.startswith("encoder.")]
    assert encoder_keys and all(".lora_A." in k or ".lora_B." in k for k in encoder_keys), encoder_keys[:5]
    # export.checkpoint=best: the best checkpoint (adapters alone) was loaded back into the module
    assert metrics["train/checkpoint_best"] == 1.0
    (kept,) = (out / "checkpoints" / "best").glob("*.ckpt")
    best = out / "checkpoints" / "best.ckpt"  # BiEncoder.load reads the config.yaml two folders above a .ckpt
    shutil.copy(kept, best)
    trained = BiEncoder.load(str(best), device="cpu")
    adapters = [p for p in trained.parameters() if p.requires_grad]
    assert len(adapters) == len(encoder_keys) == len(ckpt["optimizer_states"][0]["state"])
    assert sum(p.numel() for p in adapters) < 0.01 * sum(p.numel() for p in trained.parameters())
    # the base weights are the untrained model's; the adapters moved (B starts at zero)
    base = BiEncoder.from_pretrained(tiny_bert)
    plain = dict(base.query_model.named_parameters())
    for name, p in trained.query_model.get_base_model().named_parameters():
        if "lora_" not in name:
            torch.testing.assert_close(p, plain[name.replace(".base_layer", "")], rtol=0, atol=0)
    assert any(float(v.abs().max()) > 0 for k, v in ckpt["state_dict"].items() if ".lora_B." in k)

    # the export holds merged plain weights: same embeddings in dr and in sentence-transformers
    from sentence_transformers import SentenceTransformer

    exported = out / "export"
    assert (exported / "model.safetensors").is_file() and not (exported / "adapter_config.json").exists()
    want = trained.encode_passages(TEXTS, show_progress=False)
    np.testing.assert_allclose(BiEncoder.from_pretrained(str(exported)).encode_passages(TEXTS), want, atol=1e-5)
    st = SentenceTransformer(str(exported), device="cpu").encode(TEXTS, normalize_embeddings=True)
    np.testing.assert_allclose(st, want, atol=1e-5)
    card = (exported / "README.md").read_text()
    assert "LoRA adapters" in card and "rank r = 4" in card and "merged into the weights" in card

    # dr-export of the checkpoint with lora=adapter: peft's files, loaded by sentence-transformers on the base
    adapter = tmp_path / "adapter"
    done = subprocess.run(
        [str(Path(sys.executable).with_name("dr-export")), f"model={best}"]
        + [f"output={adapter}", "lora=adapter", f"hydra.run.dir={tmp_path / 'export-run'}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (adapter / "adapter_model.safetensors").is_file() and not (adapter / "model.safetensors").exists()
    assert "adapter files" in (adapter / "README.md").read_text()
    st = SentenceTransformer(str(adapter), device="cpu").encode(TEXTS, normalize_embeddings=True)
    np.testing.assert_allclose(st, want, atol=1e-5)


def test_resume_with_adapters_continues_exactly(cfg_train, tmp_path):
    """sentence-transformers' issue #3402: a PEFT run could not resume. Here the step-2 checkpoint
    (adapters, their optimizer moments) resumed ends bit for bit where the uninterrupted run ends."""
    base = [
        LORA,
        "+encoder.lora.dropout=0.1",
        "test.enabled=false",
        "export.enabled=false",
        "data.val_fraction=0",
        "callbacks.model_checkpoint.save_top_k=-1",
    ]
    straight = tmp_path / "straight"
    train(cfg_train(*base, out=straight))
    resumed = tmp_path / "resumed"
    metrics = train(cfg_train(*base, f"ckpt_path={straight / 'checkpoints' / 'step000002.ckpt'}", out=resumed))
    assert metrics["train/global_step"] == 4
    a = torch.load(straight / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(resumed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    for key, state in a["optimizer_states"][0]["state"].items():
        other = b["optimizer_states"][0]["state"][key]
        assert torch.equal(state["exp_avg"], other["exp_avg"]) and torch.equal(state["exp_avg_sq"], other["exp_avg_sq"])


def test_adapter_export_loads_on_its_base_model(tiny_bert, tmp_path):
    from sentence_transformers import SentenceTransformer

    encoder = _lora_encoder(tiny_bert)
    want = encoder.encode_passages(TEXTS, show_progress=False)
    out = export(encoder, tmp_path / "adapter", lora="adapter")
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert not (out / "model.safetensors").exists()  # the base weights stay where adapter_config.json says
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == tiny_bert
    assert "adapter files" in (out / "README.md").read_text()
    np.testing.assert_allclose(BiEncoder.from_pretrained(str(out)).encode_passages(TEXTS), want, atol=1e-5)
    st = SentenceTransformer(str(out), device="cpu").encode(TEXTS, normalize_embeddings=True)
    np.testing.assert_allclose(st, want, atol=1e-5)
    with pytest.raises(ConfigError, match="lora=adapter, format=onnx"):
        export(encoder, tmp_path / "onnx", lora="adapter", format="onnx")


def test_separate_towers_get_their_own_adapters(tiny_bert, tmp_path):
    torch.manual_seed(0)
    encoder = BiEncoder.from_pretrained(tiny_bert, shared=False, lora={"r": 2, "target_modules": ["query", "value"]})
    assert encoder.passage_model is not None and encoder.lora["target_modules"] == ["query", "value"]
    names = [n for n, p in encoder.named_parameters() if p.requires_grad]
    assert {n.split(".")[0] for n in names} == {"query_model", "passage_model"}
    assert len(names) == 2 * 2 * 2 * 2  # 2 towers x 2 layers x (query, value) x (A, B)
    with torch.no_grad():
        for n, p in encoder.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    out = export(encoder, tmp_path / "towers")
    again = BiEncoder.from_pretrained(str(out))
    assert again.lora is None and not again.shared
    for kind in ("query", "passage"):
        np.testing.assert_allclose(
            again.encode(TEXTS, kind=kind, show_progress=False),
            encoder.encode(TEXTS, kind=kind, show_progress=False),
            atol=1e-5,
        )


def _grads(encoder: BiEncoder, seed: int = 1) -> dict[str, torch.Tensor]:
    encoder.train()
    encoder.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the adapters' dropout draws the same masks
    batch = encoder.tokenize(TEXTS, "passage")
    (encoder.embed_passages(batch) ** 2).sum().backward()
    return {n: p.grad.clone() for n, p in encoder.named_parameters() if p.requires_grad}


def test_speed_levers_with_adapters(tiny_bert):
    """Attention recomputation, gradient checkpointing and the oneDNN linear layers work on layers
    with adapters (same gradients); the fused feed-forward block skips layers with adapters."""
    plain = _grads(_lora_encoder(tiny_bert))
    recomputed = _lora_encoder(tiny_bert)
    assert recomputed.set_attention_recompute(True) == 2
    checkpointed = _lora_encoder(tiny_bert)
    checkpointed.gradient_checkpointing_enable()
    aten = _lora_encoder(tiny_bert)
    aten.set_cpu_linear("aten")
    for other, atol in ((recomputed, 1e-6), (checkpointed, 1e-6), (aten, 1e-4)):
        for name, grad in _grads(other).items():
            torch.testing.assert_close(grad, plain[name], atol=atol, rtol=1e-4)
    assert _lora_encoder(tiny_bert).set_feed_forward_recompute("full") == 0  # adapters on the dense layers
    attention_only = _lora_encoder(tiny_bert, target_modules=["query", "value"])
    want = _grads(attention_only)
    assert attention_only.set_feed_forward_recompute("full") == 2
    for name, grad in _grads(attention_only).items():
        torch.testing.assert_close(grad, want[name], atol=1e-5, rtol=1e-4)


def test_onnx_and_refresh_snapshot_hold_the_merged_weights(tiny_bert, tmp_path):
    from dr.models import onnx_encoder
    from dr.refresh.store import SNAPSHOT, stage_version

    encoder = _lora_encoder(tiny_bert)
    want = encoder.encode_passages(TEXTS, show_progress=False)
    np.testing.assert_allclose(onnx_encoder(encoder).encode_passages(TEXTS), want, atol=1e-5)
    snapshot = stage_version(tmp_path / "refresh", 1, 3, "async", encoder) / SNAPSHOT
    assert not (snapshot / "adapter_config.json").exists()
    worker_side = BiEncoder.from_pretrained(str(snapshot))  # what the refresh worker loads
    assert worker_side.lora is None
    np.testing.assert_allclose(worker_side.encode_passages(TEXTS), want, atol=1e-5)
    assert encoder.lora is not None and any(p.requires_grad for p in encoder.parameters())  # left as it was


@pytest.mark.parametrize(
    "value, expected",
    [
        ({"r": 0}, "expected a positive integer"),
        ({"rank": 8}, "unknown setting 'rank'"),
        ({"dropout": 1.5}, "expected a fraction"),
        ({"target_modules": []}, "expected null, all-linear or a non-empty list"),
    ],
)
def test_bad_lora_settings_are_refused_before_training(cfg_train, value, expected):
    from omegaconf import open_dict

    from dr.validate import validate_config

    cfg = cfg_train()
    with open_dict(cfg):
        cfg.encoder.lora = value
    with pytest.raises(ConfigError, match=expected):
        validate_config(cfg)


def test_unknown_target_modules_name_the_setting(tiny_bert):
    with pytest.raises(ConfigError, match="encoder.lora.target_modules"):
        BiEncoder.from_pretrained(tiny_bert, lora={"target_modules": ["no_such_layer"]})


def test_without_peft_dr_train_says_how_to_install_it(tmp_path):
    """peft is an optional extra: without it, encoder.lora fails at once, one line, exit 2."""
    script = (
        "import sys; sys.modules['peft'] = None\n"  # as if not installed
        "from dr.cli.train import main\n"
        "sys.argv = ['dr-train', '+encoder.lora.r=8', 'hydra.run.dir=" + str(tmp_path / "run") + "']\n"
        "main()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "pip install dr[lora]" in errors[0], done.stderr[-2000:]
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_sigkill_with_adapters_and_async_refresh_resumes_exactly(tiny_bert, scifact_slice, tmp_path):
    """tests/test_resume_exact.py's run (TAS-Balanced, teacher file, asynchronous index refresh, whose
    worker loads the merged snapshot) with adapters, SIGKILLed at a random step and resumed from
    last.ckpt: the same batches, losses, final adapters and metrics as the uninterrupted run."""
    import os
    import random

    from test_resume_exact import MAX_STEPS, _batches, _inputs, _run, _spec, _weights

    def spec(folder, resume=False):
        s = json.loads(_spec(tiny_bert, scifact_slice, folder / "run", folder / "batches.jsonl", *inputs, resume))
        s["overrides"].append(LORA)
        return json.dumps(s)

    inputs = _inputs(scifact_slice, tmp_path)
    ref, cut = tmp_path / "uninterrupted", tmp_path / "killed"
    ref.mkdir(), cut.mkdir()
    _run(spec(ref), ref)
    kill_at = random.Random(os.environ.get("DR_KILL_SEED")).randrange(2, MAX_STEPS - 2)
    assert _run(spec(cut), cut, kill_at, cut / "batches.jsonl") == -9
    ckpt_step = int(torch.load(cut / "run" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"])
    _run(spec(cut, resume=True), cut)

    a, b = _batches(ref / "batches.jsonl"), _batches(cut / "batches.jsonl")
    assert sorted(b) == list(range(MAX_STEPS))
    for s in range(ckpt_step, MAX_STEPS):
        assert (b[s]["version"], b[s]["qids"], b[s]["docids"], b[s]["loss"]) == (
            a[s]["version"],
            a[s]["qids"],
            a[s]["docids"],
            a[s]["loss"],
        ), s
    w_a, w_b = _weights(ref / "run" / "checkpoints" / "last.ckpt"), _weights(cut / "run" / "checkpoints" / "last.ckpt")
    assert all(".lora_" in k for k in w_a if k.startswith("encoder."))
    assert max(float((w_a[k] - w_b[k]).abs().max()) for k in w_a) == 0.0
    m_a = json.loads((ref / "run" / "metrics.json").read_text())
    m_b = json.loads((cut / "run" / "metrics.json").read_text())
    assert m_a["refresh/versions_used"] > 0
    for k in m_a:
        if k.startswith(("train/", "trained/")) or k == "refresh/versions_used":
            assert m_a[k] == m_b[k], k
