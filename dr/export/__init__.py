"""Shipping a trained encoder: the sentence-transformers layout, ``dr_config.json``, the model card,
and optionally the FAISS index and the ONNX files."""

from dr.export.export import export, read_dr_config

__all__ = ["export", "read_dr_config"]
