"""WiSE-FT weight interpolation (dr/export/wise_ft.py, ``dr-export interpolate=α base=MODEL``):
Wortsman et al. 2022, Eq. 1, θ_α = (1 − α)·θ_0 + α·θ_1, checked weight by weight against the
mix computed here from the two saved models."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel

from dr.cli.export import run as export_command
from dr.config import ConfigError
from dr.models import BiEncoder


@pytest.fixture(scope="module")
def tuned_bert(tiny_bert, tmp_path_factory) -> str:
    """The tiny BERT with other random weights: a stand-in for a fine-tuned copy."""
    out = tmp_path_factory.mktemp("tuned-bert")
    shutil.copytree(tiny_bert, out, dirs_exist_ok=True)
    torch.manual_seed(1)
    BertModel(BertConfig.from_pretrained(tiny_bert)).save_pretrained(out)
    return str(out)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return BiEncoder.load(str(path)).state_dict()


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_the_export_holds_the_interpolated_weights(alpha, tiny_bert, tuned_bert, compose_config, tmp_path):
    out = tmp_path / "mixed"
    export_command(
        compose_config("export", [f"model={tuned_bert}", f"base={tiny_bert}", f"interpolate={alpha}", f"output={out}"]),
        tmp_path,
    )
    base, tuned, mixed = _weights(Path(tiny_bert)), _weights(Path(tuned_bert)), _weights(out)
    floats = [n for n, v in mixed.items() if torch.is_floating_point(v)]
    assert len(floats) > 10
    for name in floats:
        expected = (1 - alpha) * base[name] + alpha * tuned[name]
        torch.testing.assert_close(mixed[name], expected, rtol=0, atol=1e-6)
    changed = [n for n in floats if not torch.equal(base[n], tuned[n])]
    assert changed  # the two models differ, so the test can fail
    assert (
        "WiSE-FT interpolation" in (out / "README.md").read_text()
        and f"α = {alpha:g}" in (out / "README.md").read_text()
    )


def test_a_base_of_another_architecture_or_no_base_is_refused(tiny_bert, compose_config, tmp_path):
    other = tmp_path / "other"
    torch.manual_seed(2)
    BertModel(
        BertConfig(vocab_size=30522, hidden_size=48, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    ).save_pretrained(other)
    shutil.copy(Path(tiny_bert) / "tokenizer.json", other / "tokenizer.json") if (
        Path(tiny_bert) / "tokenizer.json"
    ).exists() else None
    for name in ("tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (Path(tiny_bert) / name).exists():
            shutil.copy(Path(tiny_bert) / name, other / name)
    with pytest.raises(ConfigError, match="expected the fine-tuned model's architecture"):
        export_command(
            compose_config(
                "export", [f"model={tiny_bert}", f"base={other}", "interpolate=0.5", f"output={tmp_path / 'a'}"]
            ),
            tmp_path,
        )
    with pytest.raises(ConfigError, match="expected base=MODEL"):
        export_command(
            compose_config("export", [f"model={tiny_bert}", "interpolate=0.5", f"output={tmp_path / 'b'}"]), tmp_path
        )
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_an_alpha_outside_0_1_is_refused_before_any_model_loads(compose_config):
    from dr.validate import validate_config

    with pytest.raises(ConfigError, match=r"interpolate.*expected a number in \[0, 1\]"):
        validate_config(compose_config("export", ["model=nowhere", "base=nowhere", "interpolate=1.5"]))
