"""Models: the dual encoder (:class:`BiEncoder`), loaded from a hub name, a folder or a ``.ckpt``;
its ONNX export and the onnxruntime encoder (:class:`OnnxEncoder`); :func:`load_encoder` for either."""

from dr.models.encoder import DR_CONFIG, BiEncoder, autocast_context, pool, resolve_model_name
from dr.models.onnx import BACKENDS, OnnxEncoder, export_onnx, load_encoder, onnx_encoder

__all__ = [
    "BACKENDS",
    "DR_CONFIG",
    "BiEncoder",
    "OnnxEncoder",
    "autocast_context",
    "export_onnx",
    "load_encoder",
    "onnx_encoder",
    "pool",
    "resolve_model_name",
]
