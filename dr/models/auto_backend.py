"""``backend=auto``: the fastest encoding backend and precision on this machine whose embeddings
stay within a stated tolerance of fp32.

The speed of a backend is a property of the CPU, not of its flags: on an AMD EPYC with AVX512-BF16
onnxruntime fp32 beat torch fp32, on an Intel Xeon with AMX torch bf16 was 5x faster than the
int8 ONNX file. So the choice is measured, not looked up: :func:`choose_backend` encodes the same
calibration passages with every candidate (a warm-up batch, then a timed pass) and keeps the
fastest whose mean ``1 − cos`` to torch fp32 is at most :data:`TOLERANCE`.

Candidates: torch fp32; torch bf16 where bf16 is native (``${dr.bf16:}``: AVX512-BF16, AMX or a
GPU); onnxruntime fp32 and int8 (:mod:`dr.models.onnx`) on the CPU. With the tolerance of 1e-3,
bf16 (about 1e-4 on all-MiniLM-L6-v2) and onnx fp32 (1e-7) qualify; the int8 file (2.7e-3 on
the same model) does not: ask for ``backend=onnx-int8`` to use it anyway.

The choice is cached (``<cache_dir>/backend/<key>.json``) under the CPU model, the thread count,
the library versions and the encoder's architecture and passage length, so it is measured once
per machine and model shape. :func:`encoder_for` turns it into the encoder to use.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from dr.config import bf16_supported as native_bf16
from dr.data.io import write_json
from dr.models.encoder import BiEncoder

log = logging.getLogger(__name__)

#: The largest mean (1 − cosine) to torch fp32 embeddings, over the calibration passages, that a
#: backend may have to be chosen (the cosine scale of the embeddings, whatever the similarity).
TOLERANCE = 1e-3
CALIBRATION_PASSAGES = 48
CALIBRATION_BATCH = 16


def default_cache_dir() -> str:
    """dr's cache folder: ``$DR_CACHE_DIR``, else ``~/.cache/dr`` (``paths.cache_dir``'s default)."""
    import os

    return os.environ.get("DR_CACHE_DIR", "~/.cache/dr")


@dataclass
class Choice:
    """The backend and precision picked, with what each candidate measured (passages/s, 1 − cos)."""

    backend: str  # torch | onnx | onnx-int8
    bf16: bool
    measured: dict[str, dict[str, float]] = field(default_factory=dict)
    key: str = ""
    cached: bool = False

    @property
    def name(self) -> str:
        return f"{self.backend}-{'bf16' if self.bf16 else 'fp32'}" if self.backend == "torch" else self.backend

    def summary(self) -> dict[str, float | str]:
        """Flat entries for metrics.json."""
        out: dict[str, float | str] = {"backend/choice": self.name}
        for name, m in self.measured.items():
            out[f"backend/{name}/passages_per_s"] = m["passages_per_s"]
            out[f"backend/{name}/one_minus_cos"] = m["one_minus_cos"]
        return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "-"


def calibration_passages(n: int = CALIBRATION_PASSAGES) -> list[str]:
    """``n`` abstracts of the bundled SciFact corpus (title and text, as dr encodes passages):
    real lengths, offline, the same on every machine."""
    from dr.data import passage_texts, read_corpus

    corpus = read_corpus("scifact:corpus")
    return passage_texts(corpus, range(min(n, len(corpus))))


def calibration_key(encoder: BiEncoder) -> dict:
    config = encoder.query_model.config
    return {
        "cpu": cpu_model(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "threads": torch.get_num_threads(),
        "native_bf16": native_bf16(),
        "versions": {p: _version(p) for p in ("torch", "onnxruntime", "transformers")},
        "model": {
            "type": config.model_type,
            "hidden": config.hidden_size,
            "layers": config.num_hidden_layers,
            "shared": encoder.shared,
            "passage_max_length": encoder.passage_max_length,
        },
        "tolerance": TOLERANCE,
    }


def _measure(
    encoder, texts: list[str], bf16: bool, reference: np.ndarray | None
) -> tuple[np.ndarray, dict[str, float]]:
    encoder.encode(texts[:CALIBRATION_BATCH], "passage", batch_size=CALIBRATION_BATCH, bf16=bf16, show_progress=False)
    t0 = time.perf_counter()
    emb = encoder.encode(texts, "passage", batch_size=CALIBRATION_BATCH, bf16=bf16, show_progress=False)
    seconds = time.perf_counter() - t0
    ref = emb if reference is None else reference
    cos = np.sum(_unit(emb) * _unit(ref), axis=1)
    return emb, {"passages_per_s": len(texts) / seconds, "one_minus_cos": float(np.mean(1.0 - cos))}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def choose_backend(encoder: BiEncoder, cache_dir: str | Path | None = None, texts: list[str] | None = None) -> Choice:
    """Measure each candidate on the calibration passages and pick (see the module docstring);
    read from / written to ``cache_dir`` when given."""
    key_data = calibration_key(encoder)
    key = hashlib.sha1(json.dumps(key_data, sort_keys=True).encode()).hexdigest()[:20]
    path = Path(cache_dir).expanduser() / "backend" / f"{key}.json" if cache_dir else None
    if path is not None and path.is_file():
        try:
            saved = json.loads(path.read_text())
            return Choice(saved["backend"], bool(saved["bf16"]), saved["measured"], key, cached=True)
        except (ValueError, KeyError, TypeError):
            log.warning("%s: unreadable backend calibration (safe to delete); measuring again", path)
    texts = texts or calibration_passages()
    device = next(encoder.parameters()).device
    encoder = encoder.to("cpu") if device.type != "cuda" else encoder
    measured: dict[str, dict[str, float]] = {}
    reference, measured["torch-fp32"] = _measure(encoder, texts, False, None)
    candidates: list[tuple[str, bool, object]] = []
    if native_bf16():
        candidates.append(("torch", True, encoder))
    if device.type != "cuda":
        from dr.models.onnx import onnx_encoder

        onnx_dir = Path(cache_dir).expanduser() / "onnx" if cache_dir else None
        candidates.append(("onnx", False, lambda: onnx_encoder(encoder, cache_dir=onnx_dir)))
        candidates.append(("onnx-int8", False, lambda: onnx_encoder(encoder, int8=True, cache_dir=onnx_dir)))
    for backend, bf16, make in candidates:
        name = Choice(backend, bf16).name
        try:
            model = make() if callable(make) and not isinstance(make, torch.nn.Module) else make
            _, measured[name] = _measure(model, texts, bf16, reference)
        except Exception as e:  # a backend that cannot run here is not a candidate
            log.warning("backend=auto: %s left out (%s: %s)", name, type(e).__name__, e)
    ok = {n: m for n, m in measured.items() if m["one_minus_cos"] <= TOLERANCE}
    best = max(ok, key=lambda n: ok[n]["passages_per_s"])
    backend, bf16 = ("torch", best == "torch-bf16") if best.startswith("torch") else (best, False)
    choice = Choice(backend, bf16, measured, key)
    if path is not None:
        write_json(path, json.loads(json.dumps({**asdict(choice), "calibration": key_data}, default=str)))
    return choice


def choose_and_log(
    encoder: BiEncoder, cache_dir: str | Path | None = None, logger: logging.Logger | None = None, prefix: str = ""
) -> Choice:
    """:func:`choose_backend` under ``cache_dir`` (dr's cache when None), with its one log line."""
    choice = choose_backend(encoder, cache_dir or default_cache_dir())
    (logger or log).info("%s%s", prefix, describe(choice))
    return choice


def describe(choice: Choice) -> str:
    """One log line: the choice and what each candidate measured."""
    parts = [f"{n} {m['passages_per_s']:.1f} p/s (1-cos {m['one_minus_cos']:.1e})" for n, m in choice.measured.items()]
    return (
        f"backend=auto: {choice.name} ({'cached calibration' if choice.cached else 'calibrated'} on "
        f"{cpu_model()}, tolerance 1-cos <= {TOLERANCE:g}): " + "; ".join(parts)
    )


def encoder_for(encoder: BiEncoder, choice: Choice, cache_dir: str | Path | None = None):
    """The encoder ``choice`` names for ``encoder``'s weights (the torch encoder itself, or an
    :class:`~dr.models.OnnxEncoder` from the ONNX cache) and whether to encode in bf16."""
    if choice.backend == "torch":
        return encoder, choice.bf16
    from dr.models.onnx import onnx_encoder

    onnx_dir = Path(cache_dir).expanduser() / "onnx" if cache_dir else None
    return onnx_encoder(encoder.to("cpu"), int8=choice.backend == "onnx-int8", cache_dir=onnx_dir), False
