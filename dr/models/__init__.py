"""Models: the encoder contract (:class:`Encoder`); the dual encoder (:class:`BiEncoder`), loaded
from a hub name, a folder or a ``.ckpt`` (:mod:`dr.models.persistence`), with its training levers
(:mod:`dr.models.levers`); its ONNX export (:mod:`dr.models.onnx_export`) and the onnxruntime
encoder (:class:`OnnxEncoder`); :func:`load_encoder` for either."""

from dr.models.base import Encoder

from dr.models.encoder import DR_CONFIG, BiEncoder, autocast_context, pool, resolve_model_name
from dr.models.onnx import BACKENDS, OnnxEncoder, export_onnx, load_encoder, onnx_encoder

__all__ = [
    "BACKENDS",
    "DR_CONFIG",
    "BiEncoder",
    "Encoder",
    "OnnxEncoder",
    "autocast_context",
    "export_onnx",
    "load_encoder",
    "onnx_encoder",
    "pool",
    "resolve_model_name",
]
