"""ONNX export of a :class:`~dr.models.BiEncoder` (the onnxruntime encoder is :mod:`dr.models.onnx`).

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

import torch
import torch.nn.functional as F
from torch import nn

from dr.config import BACKENDS, ConfigError
from dr.models.lora import merged_tower
from dr.data.io import atomic_write
from dr.models.base import pool
from dr.models.decoder import forward_kwargs
from dr.models.encoder import BiEncoder

log = logging.getLogger(__name__)

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
    """Tower name -> model (LoRA adapters merged in); the name is also the tower's subfolder of a saved
    or exported model."""
    if (
        encoder.truncate_dim is not None
    ):  # the graph would output the full pooled embedding: refused, not served untruncated
        raise ConfigError(
            f"truncate_dim={encoder.truncate_dim}: the ONNX graph has no truncation; "
            "use the torch backend (backend=torch, format=torch) for a truncated model"
        )
    # LoRA adapters are merged into a plain copy of each tower (dr.models.lora): the graph holds W + ΔW
    if encoder.shared:
        return {"": merged_tower(encoder.query_model)}
    return {"query": merged_tower(encoder.query_model), "passage": merged_tower(encoder.passage_model)}


def _metadata(encoder: BiEncoder, model: nn.Module, quantization: str | None = None) -> dict:
    return {
        "pooling": encoder.pooling,
        "normalize": bool(encoder.normalize),
        "dim": encoder.dim,
        "weights": weights_digest(model),
        "quantization": quantization,
    }


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
        hidden = self.model(**features, **forward_kwargs(self.model)).last_hidden_state
        emb = pool(hidden, features["attention_mask"], self.pooling)
        if self.normalize:
            emb = F.normalize(emb.float(), p=2, dim=-1)
        return hidden, emb


def _input_names(tokenizer) -> list[str]:
    return [name for name in MODEL_INPUTS if name in tokenizer.model_input_names]


def export_tower(
    model: nn.Module, tokenizer, pooling: str, normalize: bool, path: str | os.PathLike, metadata: dict
) -> Path:
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
            torch.onnx.export(
                _PooledTower(model, pooling, normalize, input_names),
                args,
                buffer,
                input_names=input_names,
                output_names=[TOKEN_STATES, EMBEDDING],
                dynamic_axes=axes,
                opset_version=OPSET,
                dynamo=False,
            )
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
    return [
        n.name
        for n in graph.node
        if n.op_type == "MatMul"
        and len(n.input) == 2
        and len(shapes.get(n.input[1], ())) == 2
        and shapes[n.input[1]][0] > shapes[n.input[1]][1]
    ]


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
        # onnxruntime's quantiser logs an INFO line per tensor on the root logger ("Quantization
        # parameters for tensor ... not specified"): hundreds of lines in every run's log.
        root = logging.getLogger()
        level = root.level
        root.setLevel(max(level, logging.WARNING))
        try:
            quantize_dynamic(
                prepared,
                quantized,
                op_types_to_quantize=["MatMul", "Gemm"],
                per_channel=True,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=keep,
            )
        finally:
            root.setLevel(level)
        _save(onnx.load(str(quantized)), path, metadata)
    return path


def export_onnx(encoder: BiEncoder, out_dir: str | os.PathLike, int8: bool = False) -> list[Path]:
    """Write ``onnx/model.onnx`` (and with ``int8`` ``onnx/model_qint8_avx512.onnx``) into a model
    folder, in ``query/`` and ``passage/`` for separate towers; returns the files written."""
    out, written = Path(out_dir), []
    for sub, model in _towers(encoder).items():
        folder = out / sub / ONNX_DIR
        fp32 = export_tower(
            model, encoder.tokenizer, encoder.pooling, encoder.normalize, folder / ONNX_MODEL, _metadata(encoder, model)
        )
        written.append(fp32)
        if int8:
            written.append(quantize_int8(fp32, folder / ONNX_INT8_MODEL, _metadata(encoder, model, INT8)))
    return written
