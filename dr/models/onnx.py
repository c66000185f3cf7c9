"""The onnxruntime encoder (:class:`OnnxEncoder`, the encoder contract over ONNX files) and
:func:`load_encoder`, which gives a torch or an ONNX encoder for a model by ``backend``.

The ONNX files are those of :mod:`dr.models.onnx_export` (pooling and normalisation inside the
graph, settings in the metadata): a model folder's own when they match the weights and settings,
otherwise exported (and quantised) on the fly, into a cache folder when one is given.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from dr.models.base import Encoder, check_prompt
from dr.models.encoder import BiEncoder, resolve_model_name
from dr.models.onnx_export import (  # noqa: F401 (the export's names, importable from here as before)
    BACKENDS,
    EMBEDDING,
    EXAMPLE_TEXTS,
    INT8,
    INT8_FP32_DOWN_PROJECTIONS,
    METADATA_KEY,
    MODEL_INPUTS,
    ONNX_DIR,
    ONNX_INT8_MODEL,
    ONNX_MODEL,
    OPSET,
    TOKEN_STATES,
    _metadata,
    _towers,
    check_backend,
    down_projections,
    export_onnx,
    export_tower,
    quantize_int8,
    read_onnx_config,
    weights_digest,
)

log = logging.getLogger(__name__)


def _matching(path: Path, metadata: dict) -> bool:
    if not path.is_file():
        return False
    found = read_onnx_config(path)
    if found != metadata:
        log.info("%s was made from other weights or settings; exporting again", path)
    return found == metadata


def _tower_file(encoder: BiEncoder, sub: str, model: nn.Module, int8: bool, folder: Path | None, work: Path) -> Path:
    """The ONNX file of one tower: the model folder's own when it matches, else one made in ``work``."""
    meta = _metadata(encoder, model)
    qmeta = {**meta, "quantization": INT8}
    key = hashlib.sha1(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:20]
    own = folder / sub / ONNX_DIR if folder is not None else None
    if int8 and own is not None and _matching(own / ONNX_INT8_MODEL, qmeta):
        return own / ONNX_INT8_MODEL
    if own is not None and _matching(own / ONNX_MODEL, meta):
        fp32 = own / ONNX_MODEL
    else:
        fp32 = work / f"{key}.onnx"
        if not _matching(fp32, meta):
            export_tower(model, encoder.tokenizer, encoder.pooling, encoder.normalize, fp32, meta)
    if not int8:
        return fp32
    quantized = work / f"{key}.qint8.onnx"
    if not _matching(quantized, qmeta):
        quantize_int8(fp32, quantized, qmeta)
    return quantized


def onnx_encoder(
    encoder: BiEncoder,
    int8: bool = False,
    folder: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    intra_op_num_threads: int | None = None,
) -> "OnnxEncoder":
    """An :class:`OnnxEncoder` for ``encoder``'s weights and settings.

    The ONNX files of ``folder`` (a saved or exported model) are used when their metadata matches
    the encoder; otherwise the towers are exported (and quantised) into ``cache_dir``, where they
    are reused next time, or into a temporary folder deleted once the sessions are built.
    """
    with tempfile.TemporaryDirectory(prefix="dr-onnx-") as tmp:
        work = Path(cache_dir).expanduser() if cache_dir is not None else Path(tmp)
        root = Path(folder) if folder is not None else None
        files = {sub: _tower_file(encoder, sub, model, int8, root, work) for sub, model in _towers(encoder).items()}
        return OnnxEncoder(
            files.get("", files.get("query")),
            encoder.tokenizer,
            passage_path=files.get("passage"),
            pooling=encoder.pooling,
            normalize=encoder.normalize,
            similarity=encoder.similarity,
            query_max_length=encoder.query_max_length,
            passage_max_length=encoder.passage_max_length,
            query_prompt=encoder.query_prompt,
            passage_prompt=encoder.passage_prompt,
            intra_op_num_threads=intra_op_num_threads,
            backend="onnx-int8" if int8 else "onnx",
        )


def load_encoder(
    model: str,
    overrides: dict | None = None,
    backend: str = "torch",
    device: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    intra_op_num_threads: int | None = None,
):
    """An inference encoder from a hub name, a saved/exported folder or a ``dr-train`` checkpoint.

    ``backend="torch"`` gives :meth:`BiEncoder.load` (on ``device``); ``"onnx"`` and
    ``"onnx-int8"`` an :class:`OnnxEncoder` on the CPU, from the folder's ``onnx/`` files when they
    match the weights and settings (``overrides`` included), else exported (and quantised) on the
    fly, into ``cache_dir`` when given.
    """
    check_backend(backend)
    if backend == "torch":
        return BiEncoder.load(model, overrides, device)
    encoder = BiEncoder.load(model, overrides, device="cpu")
    path = Path(resolve_model_name(str(model)))
    return onnx_encoder(
        encoder,
        int8=backend == "onnx-int8",
        folder=path if path.is_dir() else None,
        cache_dir=cache_dir,
        intra_op_num_threads=intra_op_num_threads,
    )


class OnnxEncoder(Encoder):
    """The encoder contract (:class:`~dr.models.base.Encoder`) over onnxruntime (CPU).

    Args:
        query_path: the ONNX file of the query tower (of both, when shared).
        tokenizer: the encoder's tokenizer.
        passage_path: the passage tower's file; ``None`` shares the query tower's.
        pooling, normalize, similarity, query_max_length, passage_max_length, query_prompt,
            passage_prompt: as for BiEncoder (the prompts are put before the texts when tokenising);
            pooling and normalisation are inside the graph, and a file whose metadata says
            otherwise is refused.
        intra_op_num_threads: onnxruntime threads (default: torch's thread count).
        backend: ``"onnx"`` or ``"onnx-int8"``, reported by :meth:`config_dict`.

    The files are read into memory when the sessions are built; they may be deleted afterwards.
    """

    def __init__(
        self,
        query_path: str | os.PathLike,
        tokenizer,
        passage_path: str | os.PathLike | None = None,
        pooling: str = "cls",
        normalize: bool = False,
        similarity: str = "dot",
        query_max_length: int = 32,
        passage_max_length: int = 256,
        query_prompt: str | None = None,
        passage_prompt: str | None = None,
        intra_op_num_threads: int | None = None,
        backend: str = "onnx",
    ):
        if similarity not in ("dot", "cos"):
            raise ValueError(f"similarity must be 'dot' or 'cos', got {similarity!r}")
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = bool(normalize or similarity == "cos")
        self.similarity = similarity
        self.query_max_length = query_max_length
        self.passage_max_length = passage_max_length
        self.query_prompt = check_prompt("query_prompt", query_prompt)
        self.passage_prompt = check_prompt("passage_prompt", passage_prompt)
        self.backend = check_backend(backend)
        self.intra_op_num_threads = intra_op_num_threads or torch.get_num_threads()
        self.paths = {"query": str(query_path), "passage": str(passage_path or query_path)}
        self._digest = hashlib.sha1()
        self.query_session = self._session(Path(query_path))
        self.passage_session = self._session(Path(passage_path)) if passage_path is not None else None
        dim = self.query_session.get_outputs()[self._output_index(self.query_session)].shape[1]
        if not isinstance(dim, int):  # a symbolic shape: run the graph once
            sample = self.tokenizer(["dim"], return_tensors="np")
            dim = self.query_session.run([EMBEDDING], self._feeds(self.query_session, sample))[0].shape[1]
        self._dim = int(dim)

    def _session(self, path: Path):
        import onnxruntime as ort

        data = path.read_bytes()
        self._digest.update(hashlib.sha1(data).digest())
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_num_threads
        # Batches come in many shapes: memory patterns and the CPU arena keep every shape's buffers
        # (640 abstracts at 256 tokens, batch 64: +1.4 GB with them, +0.8 GB without, same speed).
        options.enable_mem_pattern = False
        options.enable_cpu_mem_arena = False
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        meta = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if meta is not None:
            meta = json.loads(meta)
            if meta["pooling"] != self.pooling or bool(meta["normalize"]) != self.normalize:
                raise ValueError(
                    f"{path}: exported with pooling={meta['pooling']} normalize={meta['normalize']}, "
                    f"but the encoder asks for pooling={self.pooling} normalize={self.normalize}"
                )
        self._output_index(session, path)
        return session

    @staticmethod
    def _output_index(session, path: Path | None = None) -> int:
        names = [o.name for o in session.get_outputs()]
        if EMBEDDING not in names:
            raise ValueError(
                f"{path}: no {EMBEDDING!r} output (outputs: {names}); export the model with dr-export format=onnx"
            )
        return names.index(EMBEDDING)

    @staticmethod
    def _feeds(session, batch) -> dict[str, np.ndarray]:
        """The session's inputs from a tokenised batch (zeros for token types the tokenizer lacks)."""
        ids = np.asarray(batch["input_ids"], dtype=np.int64)
        return {
            i.name: np.asarray(batch[i.name], dtype=np.int64) if i.name in batch else np.zeros_like(ids)
            for i in session.get_inputs()
        }

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def shared(self) -> bool:
        return self.passage_session is None

    def config_dict(self) -> dict:
        """The contract's settings, plus the backend."""
        return {**super().config_dict(), "backend": self.backend}

    def fingerprint(self) -> str:
        """sha1 of the ONNX files' bytes: what the embeddings depend on besides :meth:`config_dict`
        (the role ``state_dict()`` plays for a torch encoder, e.g. in embedding caches)."""
        return self._digest.hexdigest()

    def __repr__(self) -> str:
        return (
            f"OnnxEncoder({self.paths['query']!r}, backend={self.backend!r}, dim={self.dim}, pooling={self.pooling!r})"
        )

    @contextlib.contextmanager
    def _batches(self, kind: str, bf16: bool, device=None) -> Iterator:
        """The kind's session; ``bf16`` and ``device`` are ignored: onnxruntime runs the graph on the
        CPU in its own precision (fp32, or int8 matrix products)."""
        session = self.query_session if kind == "query" or self.shared else self.passage_session

        def run(features: dict) -> np.ndarray:
            batch = self.tokenizer.pad(features, padding=True, return_tensors="np")
            return session.run([EMBEDDING], self._feeds(session, batch))[0]

        yield run
