"""ONNX export and the onnxruntime backends (dr/models/onnx.py): real exports, real onnxruntime,
real files; a tiny random BERT for exactness, the packaged all-MiniLM-L6-v2 for int8 quality."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from sentence_transformers import SentenceTransformer

from conftest import merge_overrides, tiny_train_overrides
from dr.cli.cluster import run as cluster
from dr.cli.encode import run as encode
from dr.cli.export import run as export_command
from dr.cli.mine import run as mine
from dr.data import passage_texts, read_corpus, read_positives, read_qrels, read_queries
from dr.data.negatives import read_negatives
from dr.models import BiEncoder, OnnxEncoder, export_onnx, load_encoder, onnx_encoder
from dr.models.onnx import ONNX_INT8_MODEL, ONNX_MODEL, read_onnx_config
from dr.refresh import IndexRefresh, RefreshJob, RefreshSetup, run_job, verified_manifest
from dr.refresh.store import SNAPSHOT, stage_version
from dr.retrieval import DenseIndex
from dr.export.export import export
from dr.training import train

TOLERANCE = 1e-4  # max |onnx - torch| per coordinate


def _encoder(tiny_bert: str, pooling: str = "mean", normalize: bool = True, shared: bool = True) -> BiEncoder:
    enc = BiEncoder.from_pretrained(
        tiny_bert,
        shared=shared,
        pooling=pooling,
        normalize=normalize,
        similarity="cos" if normalize else "dot",
        query_max_length=16,
        passage_max_length=64,
    )
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # move off the fixture's weights; with two towers, only the passage tower moves
        for p in (enc.passage_model or enc.query_model).parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return enc.eval()


@pytest.fixture(scope="module")
def texts(scifact_slice) -> dict[str, list[str]]:
    queries = read_queries(scifact_slice["train_queries"])
    return {"query": list(queries.values())[:24], "passage": passage_texts(read_corpus(scifact_slice["corpus"]))[:40]}


def _max_deviation(onnx_enc, torch_enc, texts: dict[str, list[str]]) -> float:
    worst = 0.0
    for kind, items in texts.items():
        got = onnx_enc.encode(items, kind, batch_size=7, show_progress=False)
        expected = torch_enc.encode(items, kind, batch_size=7, show_progress=False)
        assert got.shape == expected.shape == (len(items), torch_enc.dim) and got.dtype == np.float32
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("normalize", [False, True])
def test_onnx_matches_torch(tiny_bert, texts, pooling, normalize):
    enc = _encoder(tiny_bert, pooling, normalize)
    onnx_enc = onnx_encoder(enc)
    assert _max_deviation(onnx_enc, enc, texts) < TOLERANCE
    assert onnx_enc.config_dict() == {**enc.config_dict(), "backend": "onnx"}
    assert (onnx_enc.dim, onnx_enc.pooling, onnx_enc.normalize, onnx_enc.similarity) == (
        32,
        pooling,
        normalize,
        enc.similarity,
    )
    assert onnx_enc.encode_passages([], show_progress=False).shape == (0, 32)
    if normalize:
        norms = np.linalg.norm(onnx_enc.encode_passages(texts["passage"][:5], show_progress=False), axis=1)
        np.testing.assert_allclose(norms, 1.0, atol=1e-5)


def test_separate_towers_export_two_files(tiny_bert, texts, tmp_path):
    enc = _encoder(tiny_bert, "cls", False, shared=False)
    assert (
        np.abs(
            enc.encode_queries(texts["query"][:4], show_progress=False)
            - enc.encode_passages(texts["query"][:4], show_progress=False)
        ).max()
        > 1e-2
    )  # the towers differ
    files = export_onnx(enc, tmp_path)
    assert files == [tmp_path / "query" / "onnx" / ONNX_MODEL, tmp_path / "passage" / "onnx" / ONNX_MODEL]
    onnx_enc = OnnxEncoder(
        files[0],
        enc.tokenizer,
        passage_path=files[1],
        **{k: v for k, v in enc.config_dict().items() if k not in ("shared", "dim")},
    )
    assert not onnx_enc.shared
    assert _max_deviation(onnx_enc, enc, texts) < TOLERANCE


def test_exporting_a_training_model_keeps_it_training(tiny_bert, texts, tmp_path):
    enc = _encoder(tiny_bert, "mean", True)
    enc.train()
    (path,) = export_onnx(enc, tmp_path)
    assert enc.training and enc.query_model.training
    exported = OnnxEncoder(
        path, enc.tokenizer, pooling="mean", normalize=True, query_max_length=16, passage_max_length=64
    )
    assert _max_deviation(exported, enc.eval(), texts) < TOLERANCE  # traced without dropout


def test_a_file_is_only_used_with_its_settings(tiny_bert, tmp_path):
    enc = _encoder(tiny_bert, "mean", True)
    (path,) = export_onnx(enc, tmp_path)
    meta = read_onnx_config(path)
    assert (
        meta["pooling"] == "mean" and meta["normalize"] is True and meta["dim"] == 32 and meta["quantization"] is None
    )
    with pytest.raises(ValueError, match="pooling=mean"):
        OnnxEncoder(path, enc.tokenizer, pooling="cls", normalize=True)
    with pytest.raises(ValueError, match="backend must be one of"):
        load_encoder(tiny_bert, backend="tensorrt")
    with pytest.raises(ValueError, match="format must be one of"):
        export(enc, tmp_path / "bad", format="onnx-fp16")
    with pytest.raises(ValueError, match="backend must be one of"):
        IndexRefresh(every_n_steps=2, backend="openvino")


def test_load_encoder_uses_the_folders_files_when_they_match(tiny_bert, texts, tmp_path):
    enc = _encoder(tiny_bert, "mean", True)
    out = export(enc, tmp_path / "export", format="onnx-int8")
    assert isinstance(load_encoder(str(out), backend="torch", device="cpu"), BiEncoder)
    fp32 = load_encoder(str(out), backend="onnx")
    assert fp32.paths["query"] == str(out / "onnx" / ONNX_MODEL)
    assert _max_deviation(fp32, enc, texts) < TOLERANCE
    int8 = load_encoder(str(out), backend="onnx-int8")
    assert int8.paths["query"] == str(out / "onnx" / ONNX_INT8_MODEL) and int8.config_dict()["backend"] == "onnx-int8"
    assert int8.fingerprint() != fp32.fingerprint()
    # Other settings than the file's: exported again (into the cache, reused the next time).
    cache = tmp_path / "cache"
    cls = load_encoder(str(out), {"pooling": "cls"}, backend="onnx", cache_dir=cache)
    assert Path(cls.paths["query"]).parent == cache and cls.pooling == "cls"
    stamp = Path(cls.paths["query"]).stat().st_mtime_ns
    again = load_encoder(str(out), {"pooling": "cls"}, backend="onnx", cache_dir=cache)
    assert again.paths == cls.paths and Path(again.paths["query"]).stat().st_mtime_ns == stamp
    assert again.fingerprint() == cls.fingerprint()
    # Separate towers: query/onnx/model.onnx and passage/onnx/model.onnx.
    towers = _encoder(tiny_bert, "cls", False, shared=False)
    out2 = export(towers, tmp_path / "towers", format="onnx")
    loaded = load_encoder(str(out2), backend="onnx")
    assert loaded.paths == {
        "query": str(out2 / "query" / "onnx" / ONNX_MODEL),
        "passage": str(out2 / "passage" / "onnx" / ONNX_MODEL),
    }
    assert _max_deviation(loaded, towers, texts) < TOLERANCE


def _top10(q: np.ndarray, p: np.ndarray) -> np.ndarray:
    return np.argsort(-(q @ p.T), axis=1, kind="stable")[:, :10]


def test_int8_keeps_the_top10(scifact_slice, tmp_path):
    """all-MiniLM-L6-v2 (mean, cosine), 200 SciFact passages at 128 tokens, 64 queries."""
    enc = BiEncoder.load("all-MiniLM-L6-v2", {"passage_max_length": 128, "query_max_length": 64}, device="cpu")
    passages = passage_texts(read_corpus(scifact_slice["corpus"]))[:200]
    queries = list(read_queries(scifact_slice["train_queries"]).values())
    int8 = load_encoder("all-MiniLM-L6-v2", {"passage_max_length": 128, "query_max_length": 64}, backend="onnx-int8")
    fp32_top = _top10(
        enc.encode_queries(queries, show_progress=False), enc.encode_passages(passages, show_progress=False)
    )
    int8_top = _top10(
        int8.encode_queries(queries, show_progress=False), int8.encode_passages(passages, show_progress=False)
    )
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(fp32_top, int8_top)])
    print(f"int8 top-10 overlap with fp32: {overlap:.3f}")
    assert overlap >= 0.9


def _export_cfg(compose_config, tiny_bert, out: Path, fmt: str):
    return compose_config(
        "export",
        [
            f"model={tiny_bert}",
            "encoder.pooling=mean",
            "encoder.normalize=true",
            "encoder.passage_max_length=48",
            f"output={out}",
            f"format={fmt}",
        ],
    )


def test_dr_export_onnx_gives_sentence_transformers_embeddings(tiny_bert, texts, compose_config, tmp_path):
    """sentence-transformers' ONNX backend (Optimum's ORTModelForFeatureExtraction) reads
    ``onnx/model.onnx``'s ``last_hidden_state`` and applies the folder's Pooling and Normalize
    modules; here the same steps run with the real modules, so no Optimum install is needed."""
    from sentence_transformers.backend.utils import backend_should_export

    out = export_command(_export_cfg(compose_config, tiny_bert, tmp_path / "export", "onnx"), tmp_path)
    assert (out / "onnx" / ONNX_MODEL).is_file() and not (out / "onnx" / ONNX_INT8_MODEL).exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary files left
    should_export, kwargs = backend_should_export(out, True, {}, "model.onnx", "*.onnx", "ONNX")
    assert should_export is False and kwargs["subfolder"] == "onnx"  # ST finds the file, does not export

    st = SentenceTransformer(str(out), device="cpu")
    expected = st.encode(texts["passage"], batch_size=8, convert_to_numpy=True)
    session = ort.InferenceSession(str(out / "onnx" / ONNX_MODEL), providers=["CPUExecutionProvider"])
    inputs = [i.name for i in session.get_inputs()]
    got, via_modules = [], []
    for start in range(0, len(texts["passage"]), 8):
        features = st.tokenize(texts["passage"][start : start + 8])
        hidden, emb = session.run(["last_hidden_state", "sentence_embedding"], {k: features[k].numpy() for k in inputs})
        got.append(emb)
        pooled = {"token_embeddings": torch.from_numpy(hidden), "attention_mask": features["attention_mask"]}
        for module in list(st)[1:]:  # Pooling, Normalize
            pooled = module(pooled)
        via_modules.append(pooled["sentence_embedding"].numpy())
    assert np.abs(np.concatenate(got) - expected).max() < TOLERANCE
    assert np.abs(np.concatenate(via_modules) - expected).max() < TOLERANCE


def test_sentence_transformers_onnx_backend_loads_the_export(tiny_bert, texts, compose_config, tmp_path):
    """The real ``SentenceTransformer(path, backend="onnx")``: needs Optimum's ONNX Runtime
    integration (``sentence-transformers[onnx]``), which is not installable next to
    transformers 5 today (optimum-onnx 0.1.0 requires transformers < 4.58)."""
    try:
        import optimum.onnxruntime  # noqa: F401
    except ImportError as e:
        pytest.skip(f"sentence-transformers' ONNX backend is not usable here: {e}")
    out = export_command(_export_cfg(compose_config, tiny_bert, tmp_path / "export", "onnx-int8"), tmp_path)
    expected = SentenceTransformer(str(out), device="cpu").encode(texts["passage"], convert_to_numpy=True)
    st = SentenceTransformer(str(out), backend="onnx", device="cpu", model_kwargs={"file_name": f"onnx/{ONNX_MODEL}"})
    assert np.abs(st.encode(texts["passage"], convert_to_numpy=True) - expected).max() < TOLERANCE
    st8 = SentenceTransformer(
        str(out), backend="onnx", device="cpu", model_kwargs={"file_name": f"onnx/{ONNX_INT8_MODEL}"}
    )
    assert st8.encode(texts["passage"], convert_to_numpy=True).shape == expected.shape


def _check_negatives(path: Path, data: dict[str, str], num_negatives: int) -> dict:
    records = read_negatives(path)
    qrels = read_qrels(data["train_qrels"])
    assert set(records) == {q for q in read_queries(data["train_queries"]) if q in qrels}
    for qid, record in records.items():
        assert not set(record.negatives) & set(qrels[qid]) and 0 < len(record.negatives) <= num_negatives
    return records


def test_dr_mine_with_the_onnx_backend(tiny_bert, scifact_slice, compose_config, tmp_path):
    def overrides(backend: str, out: Path) -> list[str]:
        return [
            f"model={tiny_bert}",
            f"corpus={scifact_slice['corpus']}",
            f"queries={scifact_slice['train_queries']}",
            f"qrels={scifact_slice['train_qrels']}",
            "miner=topk",
            "miner.num_negatives=4",
            "top_k=20",
            "chunk_size=16",
            f"output={out}",
            f"embeddings_cache={tmp_path / (backend + '.npy')}",
            "encoder.passage_max_length=48",
            f"backend={backend}",
        ]

    mine(compose_config("mine", overrides("onnx", tmp_path / "onnx.jsonl")), tmp_path)
    onnx_records = _check_negatives(tmp_path / "onnx.jsonl", scifact_slice, 4)
    meta = json.loads((tmp_path / "onnx.npy.json").read_text())
    assert meta["backend"] == "onnx"
    first = (tmp_path / "onnx.jsonl").read_text()
    mine(compose_config("mine", overrides("onnx", tmp_path / "onnx.jsonl")), tmp_path)  # a new export, same fingerprint
    assert (tmp_path / "onnx.npy.json").read_text() == json.dumps(meta, sort_keys=True)
    assert (tmp_path / "onnx.jsonl").read_text() == first
    # The exact positive scores (q · d+) agree with torch's. (The negatives themselves need not:
    # a random tiny BERT scores every passage within a few 1e-5 of the others.)
    mine(compose_config("mine", overrides("torch", tmp_path / "torch.jsonl")), tmp_path)
    torch_records = read_negatives(tmp_path / "torch.jsonl")
    for qid, record in onnx_records.items():
        np.testing.assert_allclose(record.positive_scores, torch_records[qid].positive_scores, rtol=1e-5, atol=1e-4)


def test_dr_encode_and_dr_cluster_with_onnx_backends(tiny_bert, scifact_slice, compose_config, tmp_path):
    model = [f"model={tiny_bert}", "encoder.pooling=mean", "encoder.normalize=true", "encoder.passage_max_length=48"]
    index = encode(
        compose_config(
            "encode", [*model, f"corpus={scifact_slice['corpus']}", f"output={tmp_path / 'index'}", "backend=onnx-int8"]
        ),
        tmp_path,
    )
    assert len(DenseIndex.load(tmp_path / "index")) == len(index) == len(read_corpus(scifact_slice["corpus"]))
    stats = cluster(
        compose_config(
            "cluster",
            [
                *model[:3],
                f"queries={scifact_slice['train_queries']}",
                f"qrels={scifact_slice['train_qrels']}",
                "num_clusters=2",
                "train_batch_size=8",
                f"output={tmp_path / 'clusters.txt'}",
                "backend=onnx",
            ],
        ),
        tmp_path,
    )
    assert stats["clusters"] == 2 and stats["queries"] == 64


def test_sync_refresh_with_the_onnx_backend(tiny_bert, scifact_slice, compose_config, tmp_path):
    out = tmp_path / "run"
    cfg = compose_config(
        "train",
        merge_overrides(
            tiny_train_overrides(tiny_bert, scifact_slice, out, max_steps=3),
            [
                "encoder.passage_max_length=32",
                "data.val_fraction=0",
                "test.enabled=false",
                "export.enabled=false",
                "refresh=sync",
                "refresh.every_n_steps=2",
                "refresh.top_k=20",
                "miner@refresh.miner=topk",
                "refresh.miner.num_negatives=4",
                "refresh.backend=onnx",
            ],
        ),
    )
    metrics = train(cfg)
    assert metrics["refresh/versions_used"] == 1 and metrics["refresh/failures"] == 0
    manifest = verified_manifest(out / "refresh" / "v0001")
    assert manifest["stats"]["backend"] == "onnx" and 0 < manifest["stats"]["export_s"] < manifest["duration_s"]
    _check_negatives(out / "refresh" / "v0001" / "negatives.jsonl", scifact_slice, 4)


def test_refresh_job_exports_and_quantises_the_snapshot(tiny_bert, scifact_slice, tmp_path):
    """The worker's path: the snapshot folder is loaded, exported to int8 inside the job, and mined with."""
    queries = read_queries(scifact_slice["train_queries"])
    positives = read_positives(read_qrels(scifact_slice["train_qrels"]), 1)
    qids = [q for q in queries if positives.get(q)]
    setup = RefreshSetup(
        corpus=scifact_slice["corpus"],
        qids=qids,
        queries=queries,
        positives=positives,
        top_k=20,
        miner={"_target_": "dr.miners.TopKMiner", "num_negatives": 4},
        device="cpu",
        backend="onnx-int8",
    )
    vdir = stage_version(tmp_path / "refresh", 1, 5, "async", encoder=_encoder(tiny_bert, "mean", True))
    manifest = run_job(setup, RefreshJob(1, 5, str(vdir)))
    assert manifest == verified_manifest(vdir) and not (vdir / SNAPSHOT).exists()
    assert manifest["stats"]["backend"] == "onnx-int8" and 0 < manifest["stats"]["export_s"] < manifest["duration_s"]
    _check_negatives(vdir / "negatives.jsonl", scifact_slice, 4)


def test_int8_keeps_the_first_down_projections_in_fp32(tiny_bert, tmp_path):
    import onnx

    from dr.models.onnx import INT8_FP32_DOWN_PROJECTIONS, down_projections

    enc = _encoder(tiny_bert, "mean", True)
    fp32, int8 = export_onnx(enc, tmp_path, int8=True)
    graph = onnx.load(str(fp32)).graph
    layers = enc.query_model.config.num_hidden_layers
    down = down_projections(graph)
    assert len(down) == layers and all("output/dense" in n and "attention" not in n for n in down)
    quantized = onnx.load(str(int8)).graph
    float_matmuls = {n.name for n in quantized.node if n.op_type == "MatMul"}
    kept = set(down[:INT8_FP32_DOWN_PROJECTIONS])
    assert 0 < len(kept) < layers
    assert kept <= float_matmuls
    assert not (set(down) - kept) & float_matmuls  # the later ones are int8
    assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for n in quantized.node)
