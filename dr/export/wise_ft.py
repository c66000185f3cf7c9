"""WiSE-FT weight interpolation (Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR
2022, Eq. 1): ``θ_α = (1 − α)·θ_0 + α·θ_1``, where θ_0 are the initial (zero-shot) weights and θ_1
the fine-tuned ones. α = 1 is the fine-tuned model, α = 0 the initial one; values between trade
in-domain gains against the initial model's robustness out of domain, at no inference cost.

Both encoders must have the same architecture (the same parameter names and shapes, and both
shared or both with separate towers). Floating-point parameters and buffers are interpolated;
integer buffers (position ids) are the fine-tuned model's. The encoder settings (pooling,
normalisation, lengths) are the fine-tuned model's.
"""

from __future__ import annotations

import torch

from dr.config import ConfigError


def interpolate_weights(finetuned, base, alpha: float, base_name: str = "base"):
    """``finetuned`` with its weights replaced in place by ``(1 − alpha)·base + alpha·finetuned``; returns it."""
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"interpolate={alpha}: expected a number in [0, 1] (the fine-tuned model's weight)")
    if finetuned.shared != base.shared:
        raise ConfigError(
            f"{base_name}: expected {'one shared tower' if finetuned.shared else 'separate query and passage towers'}"
            " like the fine-tuned model"
        )
    mixed = mix_state_dicts(finetuned.state_dict(), base.state_dict(), alpha, base_name)
    finetuned.load_state_dict(mixed)
    return finetuned


def mix_state_dicts(tuned: dict, initial: dict, alpha: float, base_name: str = "base") -> dict:
    """``(1 − alpha)·initial + alpha·tuned`` for every floating-point tensor (``torch.lerp`` in fp32,
    back to the tuned tensor's dtype and device); integer buffers are ``tuned``'s. The two must have
    the same names and shapes (:class:`ConfigError` naming ``base_name`` otherwise)."""
    if tuned.keys() != initial.keys():
        missing = sorted(set(tuned) ^ set(initial))[:3]
        raise ConfigError(
            f"{base_name}: expected the fine-tuned model's architecture, the parameters differ ({', '.join(missing)}, "
            f"...)"
        )
    mixed = {}
    for name, value in tuned.items():
        other = initial[name]
        if value.shape != other.shape:
            raise ConfigError(
                f"{base_name}: expected the fine-tuned model's architecture, {name} has shape "
                f"{tuple(other.shape)} against {tuple(value.shape)}"
            )
        if torch.is_floating_point(value):
            mixed[name] = torch.lerp(other.to(value.device, torch.float32), value.float(), float(alpha)).to(value.dtype)
        else:
            mixed[name] = value
    return mixed
