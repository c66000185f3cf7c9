"""ONNX export of a :class:`~dr.models.BiEncoder` and an onnxruntime encoder with the same interface.

Each tower is exported with our pooling and L2 normalisation inside the graph. Inputs are
``input_ids``, ``attention_mask`` and ``token_type_ids`` (when the tokenizer produces them), with
dynamic batch and sequence axes; outputs are ``sentence_embedding`` ``[batch, dim]`` and, so that
sentence-transformers' ONNX backend (Optimum's ``ORTModelForFeatureExtraction``, which reads the
output by name and pools it itself) can load the same file, ``last_hidden_state``.

Files follow the sentence-transformers layout: ``onnx/model.onnx`` in the model folder (in
``query/`` and ``passage/`` for separate towers) and the int8 variant under the name
sentence-transformers gives the same quantisation (Optimum's ``avx512`` dynamic config: int8
weights, symmetric, per channel; uint8 activations): ``onnx/model_qint8_avx512.onnx``. It runs
on any CPU; its accuracy was measured with AVX512-VNNI. Without VNNI, x86 uint8 x int8 kernels
can saturate (Optimum's configs note it), which may cost accuracy there.

Each file carries its settings in the ONNX metadata (``dr_config``: pooling, normalisation, dim,
a sha1 of the tower's weights, the quantisation), so a file is reused only for the weights and
settings it was made from.

The exporter is PyTorch's TorchScript one (``torch.onnx.export(..., dynamo=False)``): it traces an
encoder in about a second and needs no extra package. Models over 2 GB (protobuf's limit) are
not supported.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Iterable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from dr.data.limits import cut_texts
from dr.data.io import atomic_write
from dr.models.encoder import BiEncoder, pool, resolve_model_name

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx", "onnx-int8")
ONNX_DIR = "onnx"
ONNX_MODEL = "model.onnx"
ONNX_INT8_MODEL = "model_qint8_avx512.onnx"  # sentence-transformers' name for this quantisation
INT8 = "dynamic-qint8-per-channel-fp32-first-down-proj"  # what the metadata says of the int8 file
INT8_FP32_DOWN_PROJECTIONS = 1  # the first FFN down-projection stays fp32 in int8 models (quantize_int8)
METADATA_KEY = "dr_config"
EMBEDDING = "sentence_embedding"
TOKEN_STATES = "last_hidden_state"
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OPSET = 17
# Traced once; two texts of different lengths, so the padded attention-mask path is the one recorded.
EXAMPLE_TEXTS = ["dense retrieval", "an example passage, several tokens longer than the first text of the batch"]


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(repr(b) for b in BACKENDS)}, got {backend!r}")
    return backend


def weights_digest(model: nn.Module) -> str:
    """sha1 over every weight of a tower (name, dtype, shape, bytes)."""
    digest = hashlib.sha1()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        if t.numel():
            digest.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _towers(encoder: BiEncoder) -> dict[str, nn.Module]:
    """Tower name -> model; the name is also the tower's subfolder of a saved or exported model."""
    if encoder.shared:
        return {"": encoder.query_model}
    return {"query": encoder.query_model, "passage": encoder.passage_model}


def _metadata(encoder: BiEncoder, model: nn.Module, quantization: str | None = None) -> dict:
    return {"pooling": encoder.pooling, "normalize": bool(encoder.normalize), "dim": encoder.dim,
            "weights": weights_digest(model), "quantization": quantization}


def read_onnx_config(path: str | os.PathLike) -> dict | None:
    """The ``dr_config`` metadata of an ONNX file (None when it has none)."""
    import onnx

    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return json.loads(props[METADATA_KEY]) if METADATA_KEY in props else None


def _save(proto, path: Path, metadata: dict) -> None:
    """Write an ONNX model with our metadata, atomically."""
    for prop in [p for p in proto.metadata_props if p.key == METADATA_KEY]:
        proto.metadata_props.remove(prop)
    proto.metadata_props.add(key=METADATA_KEY, value=json.dumps(metadata, sort_keys=True))
    with atomic_write(path, "wb") as f:
        f.write(proto.SerializeToString())


class _PooledTower(nn.Module):
    """A tower followed by our pooling and normalisation: what one ONNX file computes."""

    def __init__(self, model: nn.Module, pooling: str, normalize: bool, input_names: list[str]):
        super().__init__()
        self.model, self.pooling, self.normalize, self.input_names = model, pooling, normalize, input_names

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = dict(zip(self.input_names, inputs))
        hidden = self.model(**features).last_hidden_state
        emb = pool(hidden, features["attention_mask"], self.pooling)
        if self.normalize:
            emb = F.normalize(emb.float(), p=2, dim=-1)
        return hidden, emb


def _input_names(tokenizer) -> list[str]:
    return [name for name in MODEL_INPUTS if name in tokenizer.model_input_names]


def export_tower(model: nn.Module, tokenizer, pooling: str, normalize: bool, path: str | os.PathLike, metadata: dict) -> Path:
    """Trace one tower (with pooling and normalisation) into an ONNX file at ``path``.

    The tower is put in eval mode for the trace (dropout off) and given back in its mode; it is
    traced on its own device, so a live training model can be exported as it is.
    """
    import onnx

    input_names = _input_names(tokenizer)
    device = next(model.parameters()).device
    example = tokenizer(EXAMPLE_TEXTS, padding=True, return_tensors="pt")
    args = tuple(example[name].to(device) for name in input_names)
    axes = {name: {0: "batch", 1: "sequence"} for name in [*input_names, TOKEN_STATES]}
    axes[EMBEDDING] = {0: "batch"}
    buffer = io.BytesIO()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # Known and harmless here: the TorchScript exporter's deprecation notice; tracer warnings
            # on transformers' mask code (shape checks that are constant for an encoder); the note
            # on advanced indexing with negative indices (ours are positions, never negative).
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message="Exporting aten::index operator")
            torch.onnx.export(_PooledTower(model, pooling, normalize, input_names), args, buffer, input_names=input_names,
                              output_names=[TOKEN_STATES, EMBEDDING], dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    finally:
        model.train(was_training)
    path = Path(path)
    _save(onnx.load_from_string(buffer.getvalue()), path, metadata)
    return path


def down_projections(graph) -> list[str]:
    """The MatMul nodes of ``graph`` whose constant weight maps a wider input to a narrower output
    (``[K, N]``, K > N): the feed-forward blocks' down-projections (BERT's ``output.dense``,
    DistilBERT's ``lin2``), in graph order. Their inputs are the post-GELU activations, whose
    outliers make one dynamic uint8 scale per tensor the coarsest of the model."""
    shapes = {t.name: list(t.dims) for t in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "MatMul" and len(n.input) == 2
            and len(shapes.get(n.input[1], ())) == 2 and shapes[n.input[1]][0] > shapes[n.input[1]][1]]


def quantize_int8(source: str | os.PathLike, path: str | os.PathLike, metadata: dict) -> Path:
    """Dynamic int8 quantisation of an exported tower (onnxruntime's ``quantize_dynamic``).

    The weights of every MatMul/Gemm with a constant weight (the linear layers, not the attention
    products) become int8, symmetric, one scale per output channel, which keeps retrieval much
    closer to fp32 than one scale per matrix (top-10 overlap 0.92 against 0.83 for
    all-MiniLM-L6-v2 on SciFact); activations are quantised to uint8 on the fly. The
    first ``INT8_FP32_DOWN_PROJECTIONS`` feed-forward down-projections (:func:`down_projections`)
    stay in fp32. For all-MiniLM-L6-v2 on 300 SciFact passages (1 thread), keeping the first
    layer's takes the mean 1 − cos to fp32 from 5.1e-3 to 4.0e-3 for 6% of the int8 speed;
    the first three layers' 2.7e-3 for 16%, all six 2.3e-3; a later layer alone helps least.
    The model is first pre-processed as onnxruntime recommends (ONNX shape inference and graph
    optimisation; its symbolic shape inference does not complete on these graphs, so it is
    skipped).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=path.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        except Exception as e:  # quantisation works without it, only with a warning
            log.info("onnxruntime pre-processing failed (%s); quantising the exported graph as it is", e)
            prepared = Path(source)
        down = down_projections(onnx.load(str(prepared)).graph)
        keep = down[:INT8_FP32_DOWN_PROJECTIONS]
        quantized = Path(tmp) / "quantized.onnx"
        quantize_dynamic(prepared, quantized, op_types_to_quantize=["MatMul", "Gemm"], per_channel=True,
                         weight_type=QuantType.QInt8, nodes_to_exclude=keep)
        _save(onnx.load(str(quantized)), path, metadata)
    return path


def export_onnx(encoder: BiEncoder, out_dir: str | os.PathLike, int8: bool = False) -> list[Path]:
    """Write ``onnx/model.onnx`` (and with ``int8`` ``onnx/model_qint8_avx512.onnx``) into a model
    folder, in ``query/`` and ``passage/`` for separate towers; returns the files written."""
    out, written = Path(out_dir), []
    for sub, model in _towers(encoder).items():
        folder = out / sub / ONNX_DIR
        fp32 = export_tower(model, encoder.tokenizer, encoder.pooling, encoder.normalize, folder / ONNX_MODEL, _metadata(encoder, model))
        written.append(fp32)
        if int8:
            written.append(quantize_int8(fp32, folder / ONNX_INT8_MODEL, _metadata(encoder, model, INT8)))
    return written


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


def onnx_encoder(encoder: BiEncoder, int8: bool = False, folder: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike | None = None, intra_op_num_threads: int | None = None) -> "OnnxEncoder":
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
            intra_op_num_threads=intra_op_num_threads,
            backend="onnx-int8" if int8 else "onnx",
        )


def load_encoder(model: str, overrides: dict | None = None, backend: str = "torch", device: str | None = None,
                 cache_dir: str | os.PathLike | None = None, intra_op_num_threads: int | None = None):
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
    return onnx_encoder(encoder, int8=backend == "onnx-int8", folder=path if path.is_dir() else None,
                        cache_dir=cache_dir, intra_op_num_threads=intra_op_num_threads)


class OnnxEncoder:
    """:class:`~dr.models.BiEncoder`'s inference interface over onnxruntime (CPU).

    Args:
        query_path: the ONNX file of the query tower (of both, when shared).
        tokenizer: the encoder's tokenizer.
        passage_path: the passage tower's file; ``None`` shares the query tower's.
        pooling, normalize, similarity, query_max_length, passage_max_length: as for BiEncoder;
            pooling and normalisation are inside the graph, and a file whose metadata says
            otherwise is refused.
        intra_op_num_threads: onnxruntime threads (default: torch's thread count).
        backend: ``"onnx"`` or ``"onnx-int8"``, reported by :meth:`config_dict`.

    The files are read into memory when the sessions are built; they may be deleted afterwards.
    """

    def __init__(self, query_path: str | os.PathLike, tokenizer, passage_path: str | os.PathLike | None = None,
                 pooling: str = "cls", normalize: bool = False, similarity: str = "dot", query_max_length: int = 32,
                 passage_max_length: int = 256, intra_op_num_threads: int | None = None, backend: str = "onnx"):
        if similarity not in ("dot", "cos"):
            raise ValueError(f"similarity must be 'dot' or 'cos', got {similarity!r}")
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = bool(normalize or similarity == "cos")
        self.similarity = similarity
        self.query_max_length = query_max_length
        self.passage_max_length = passage_max_length
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
        self.dim = int(dim)

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
                raise ValueError(f"{path}: exported with pooling={meta['pooling']} normalize={meta['normalize']}, "
                                 f"but the encoder asks for pooling={self.pooling} normalize={self.normalize}")
        self._output_index(session, path)
        return session

    @staticmethod
    def _output_index(session, path: Path | None = None) -> int:
        names = [o.name for o in session.get_outputs()]
        if EMBEDDING not in names:
            raise ValueError(f"{path}: no {EMBEDDING!r} output (outputs: {names}); export the model with dr-export format=onnx")
        return names.index(EMBEDDING)

    @staticmethod
    def _feeds(session, batch) -> dict[str, np.ndarray]:
        """The session's inputs from a tokenised batch (zeros for token types the tokenizer lacks)."""
        ids = np.asarray(batch["input_ids"], dtype=np.int64)
        return {i.name: np.asarray(batch[i.name], dtype=np.int64) if i.name in batch else np.zeros_like(ids)
                for i in session.get_inputs()}

    @property
    def shared(self) -> bool:
        return self.passage_session is None

    def config_dict(self) -> dict:
        # BiEncoder's settings (read from the same attribute names), plus the backend
        return {**BiEncoder.config_dict(self), "backend": self.backend}

    def fingerprint(self) -> str:
        """sha1 of the ONNX files' bytes: what the embeddings depend on besides :meth:`config_dict`
        (the role ``state_dict()`` plays for a torch encoder, e.g. in embedding caches)."""
        return self._digest.hexdigest()

    def __repr__(self) -> str:
        return f"OnnxEncoder({self.paths['query']!r}, backend={self.backend!r}, dim={self.dim}, pooling={self.pooling!r})"

    def encode(
        self,
        texts: Iterable[str],
        kind: Literal["query", "passage"],
        batch_size: int = 64,
        bf16: bool = False,
        show_progress: bool = True,
        device: str | torch.device | None = None,
    ) -> np.ndarray:
        """Encode texts into a float32 ``[N, dim]`` array, in the input order, as BiEncoder.encode.

        ``bf16`` and ``device`` are accepted for a common interface and ignored: onnxruntime runs
        the graph on the CPU in its own precision (fp32, or int8 matrix products).
        """
        if kind not in ("query", "passage"):
            raise ValueError(f"kind must be 'query' or 'passage', got {kind!r}")
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        session = self.query_session if kind == "query" or self.shared else self.passage_session
        max_length = self.query_max_length if kind == "query" else self.passage_max_length
        encoded = self.tokenizer(cut_texts(texts, max_length), truncation=True, max_length=max_length, padding=False)
        lengths = np.array([len(ids) for ids in encoded["input_ids"]])
        order = np.argsort(-lengths, kind="stable")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        bar = tqdm(total=len(texts), desc=f"encode {kind}s", unit=kind[0], disable=not show_progress, mininterval=2)
        try:
            for start in range(0, len(texts), batch_size):
                idx = order[start : start + batch_size]
                features = {key: [encoded[key][i] for i in idx] for key in encoded.keys()}
                batch = self.tokenizer.pad(features, padding=True, return_tensors="np")
                out[idx] = session.run([EMBEDDING], self._feeds(session, batch))[0]
                bar.update(len(idx))
        finally:
            bar.close()
        return out

    def encode_queries(self, texts: Iterable[str], **kwargs) -> np.ndarray:
        return self.encode(texts, "query", **kwargs)

    def encode_passages(self, texts: Iterable[str], **kwargs) -> np.ndarray:
        return self.encode(texts, "passage", **kwargs)
