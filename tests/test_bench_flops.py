"""The FLOPs count of scripts/bench_train.py: hand-computed values, and torch's own FLOP counter on
a real BERT forward and backward."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertConfig, BertModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from bench_train import encoder_flops, step_flops  # noqa: E402


def test_hand_computed_flops_of_one_layer():
    # H=2, I=4, one sequence of 3 tokens: Q,K,V 6·H²·n = 72, output 2·H²·n = 24, up and down
    # 2·H·I·n = 48 each, attention 4·n²·H = 72: forward 264
    parts = encoder_flops([3], layers=1, hidden=2, intermediate=4)
    assert parts == {"qkv": 72, "out": 24, "ffn_up": 48, "ffn_down": 48, "attention": 72}
    (plain,) = step_flops([([3], [])], 1, 2, 4, {})
    assert plain == {"model": 792, "executed": 792}
    (recomputed,) = step_flops([([3], [])], 1, 2, 4, {"ffn_recompute": "full", "attention_recompute": True})
    assert recomputed == {"model": 792, "executed": 792 + 48 + 72 + 72}
    (checkpointed,) = step_flops([([3], [])], 1, 2, 4, {"gradient_checkpointing": True, "ffn_recompute": "full"})
    assert checkpointed["executed"] == 792 + 264


@pytest.mark.parametrize("lengths", [[7], [5, 12]])
def test_the_count_matches_torchs_flop_counter_on_a_bert(lengths):
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        attn_implementation="eager",
    )
    model = BertModel(config, add_pooling_layer=False)
    counted_forward = counted_step = 0
    for n in lengths:  # one sequence at a time: no padding, as the count assumes
        ids = torch.randint(0, 100, (1, n))
        with FlopCounterMode(display=False) as forward:
            model(input_ids=ids)
        counted_forward += forward.get_total_flops()
        with FlopCounterMode(display=False) as step:
            model(input_ids=ids).last_hidden_state.sum().backward()
        counted_step += step.get_total_flops()
    ours = sum(encoder_flops(lengths, 2, 32, 64).values())
    assert ours == pytest.approx(counted_forward, rel=1e-9)
    (flops,) = step_flops([(lengths, [])], 2, 32, 64, {})
    # forward + backward: the backward computes the gradients of both operands of every product
    assert flops["model"] == pytest.approx(counted_step, rel=1e-9)
