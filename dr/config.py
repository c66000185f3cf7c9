"""Config errors and the OmegaConf resolvers used by the configs.

:class:`ConfigError` is a config value that cannot work (out of range, inconsistent with another,
a required key missing); its message names the key, e.g. ``data.batch_size=0: expected a
positive integer``. The checks themselves are in :mod:`dr.validate`.

``${dr.bf16:}`` is true where bf16 runs natively (a CUDA device with bf16, or a CPU whose
oneDNN build has bf16 kernels: AVX512-BF16 or AMX). On other CPUs bf16 autocast is emulated and
tens of times slower than fp32, so the default falls back to fp32 there.
``${dr.precision:}`` is the matching Lightning precision string.
"""

from __future__ import annotations

from omegaconf import OmegaConf


#: What encodes text (``backend=``, ``refresh.backend=``, ``test.backend=`` besides ``auto``): torch,
#: or onnxruntime on an ONNX export, fp32 or int8-quantised (:mod:`dr.models.onnx_export`). Here, not
#: there, so that checking a config does not import torch.
BACKENDS = ("torch", "onnx", "onnx-int8")


class ConfigError(ValueError):
    """A bad config value: the message names the key, its value and what was expected."""


def bf16_supported() -> bool:
    import torch

    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check and check())


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("dr.bf16"):
        OmegaConf.register_new_resolver("dr.bf16", bf16_supported)
    if not OmegaConf.has_resolver("dr.precision"):
        OmegaConf.register_new_resolver("dr.precision", lambda: "bf16-mixed" if bf16_supported() else "32-true")
