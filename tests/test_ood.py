"""dr-train's out-of-domain sets (test.ood) and WiSE-FT with α chosen on validation
(export.interpolate): real Lightning runs of the tiny BERT on the SciFact slice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dr.config import ConfigError
from dr.training import train
from dr.training.ood import choose_alpha
from dr.validate import validate_config


def test_choose_alpha_keeps_the_best_out_of_domain_alpha_within_the_budget():
    val = {0.5: 0.700, 0.7: 0.745, 0.9: 0.748, 1.0: 0.750}
    ood = {0.5: 0.660, 0.7: 0.650, 0.9: 0.640, 1.0: 0.630}
    # floor 0.745: α 0.7, 0.9, 1 qualify; 0.7 has the best out-of-domain score (0.5 costs 0.05 in domain)
    assert choose_alpha(val, ood, budget=0.005) == 0.7
    assert choose_alpha(val, ood, budget=0.0) == 1.0
    assert choose_alpha(val, ood, budget=0.1) == 0.5
    # a tie out of domain goes to the larger α (closer to the fine-tuned model)
    assert choose_alpha(val, {0.5: 0.6, 0.7: 0.65, 0.9: 0.65, 1.0: 0.6}, budget=0.005) == 0.9


def _ood_set(slice_: dict[str, str]) -> str:
    # the slice's test split stands in for an out-of-domain set (a test of the mechanics, not of domains)
    return (
        f"test.ood=[{{name: other, corpus: '{slice_['corpus']}', queries: '{slice_['test_queries']}', "
        f"qrels: '{slice_['test_qrels']}', measures: [nDCG@10, 'R(rel=1)@50']}}]"
    )


def _mix(initial: dict, tuned: dict, alpha: float) -> dict:
    return {
        k: torch.lerp(initial[k].float(), v.float(), alpha) if v.is_floating_point() else v for k, v in tuned.items()
    }


def test_auto_alpha_is_chosen_on_validation_and_the_ood_set_and_exported(cfg_train, scifact_slice, tiny_bert, tmp_path):
    out = tmp_path / "auto"
    cfg = cfg_train(
        "test.bm25=false",
        "optimizer.lr=3e-3",
        _ood_set(scifact_slice),
        "export.interpolate=auto",
        "export.interpolate_alphas=[0.0,0.5]",
        "export.interpolate_budget=0.5",
        out=out,
        max_steps=6,
    )
    metrics = train(cfg)
    alpha = metrics["wise_ft/alpha"]
    val = {a: metrics[f"wise_ft/{a:g}/val/nDCG@10"] for a in (0.0, 0.5, 1.0)}
    dev = {a: metrics[f"wise_ft/{a:g}/other/nDCG@10"] for a in (0.0, 0.5, 1.0)}
    assert alpha == choose_alpha(val, dev, 0.5)
    # α = 0 is the initial model: its out-of-domain score is the zero-shot row's
    assert dev[0.0] == pytest.approx(metrics["ood/other/zero_shot/nDCG@10"], abs=1e-6)
    # the trained row out of domain is the chosen mix (the run computed while choosing is reused)
    assert metrics["ood/other/trained/nDCG@10"] == pytest.approx(dev[alpha], abs=1e-6)
    assert "ood/other/trained/R(rel=1)@50" in metrics
    assert (out / "runs" / "other.zero_shot.run").is_file() and (out / "runs" / "other.trained.run").is_file()
    assert (out / "wise_ft_alpha.png").stat().st_size > 1000
    assert json.loads((out / "metrics.json").read_text())["wise_ft/alpha"] == alpha
    # The export holds (1 - α)·initial + α·fine-tuned, the fine-tuned weights being the checkpoint's.
    initial = load_file(str(Path(tiny_bert) / "model.safetensors"))
    ckpt = metrics["train/checkpoint_step"]
    source = next((out / "checkpoints" / "best").glob("*.ckpt")) if metrics["train/checkpoint_best"] else None
    state = torch.load(source or out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    tuned = {k[len("encoder.model.") :]: v for k, v in state["state_dict"].items() if k.startswith("encoder.model.")}
    exported = load_file(str(out / "export" / "model.safetensors"))
    expected = _mix({k: initial[k] for k in tuned}, tuned, alpha)
    assert ckpt > 0 and set(expected) <= set(exported)
    for name, value in expected.items():
        torch.testing.assert_close(exported[name].float(), value.float(), atol=1e-6, rtol=0)
    card = (out / "export" / "README.md").read_text()
    assert f"α = {alpha:g}" in card and "other (out of domain)" in card


def test_a_fixed_alpha_of_zero_exports_the_initial_weights(cfg_train, tiny_bert, tmp_path):
    out = tmp_path / "zero"
    metrics = train(cfg_train("test.bm25=false", "test.before=false", "export.interpolate=0", out=out, max_steps=2))
    assert metrics["wise_ft/alpha"] == 0.0
    initial = load_file(str(Path(tiny_bert) / "model.safetensors"))
    exported = load_file(str(out / "export" / "model.safetensors"))
    for name, value in exported.items():
        if name in initial:
            torch.testing.assert_close(value.float(), initial[name].float(), atol=1e-7, rtol=0)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["export.interpolate=auto"], "expected an out-of-domain set"),
        (["export.interpolate=auto", "test.ood=[dl19-pool]", "data.val_fraction=0"], "expected validation queries"),
        (["export.interpolate=1.5"], "expected auto or a number in [0, 1]"),
        (["test.ood=[/no/such/beir/folder]"], "test.ood: /no/such/beir/folder: no such folder"),
        (["test.ood=[{name: a/b, corpus: c, queries: q, qrels: r}]"], "a name without '/'"),
        (["test.ood=[dl19-pool,dl19-pool]"], "expected distinct set names"),
    ],
)
def test_out_of_domain_settings_are_checked_before_any_work(cfg_train, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate_config(cfg_train(*overrides))


def test_the_dl19_pool_preset_is_bundled():
    from dr.training.ood import ood_sets

    from omegaconf import OmegaConf

    (s,) = ood_sets(OmegaConf.create({"ood": ["dl19-pool"]}))
    corpus, queries, qrels = s.data()
    assert (s.name, len(queries), s.k) == ("dl19-pool", 43, 100)
    assert set(d for j in qrels.values() for d in j) <= set(corpus["docid"])
