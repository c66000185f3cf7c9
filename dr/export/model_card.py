"""The model card (``README.md``) written into every exported folder, in the Hugging Face format.

YAML front matter (``library_name: sentence-transformers``, ``pipeline_tag``, ``tags``,
``base_model`` when it is a hub id, ``datasets`` when known), then: the base model and the
encoder's settings, the training recipe (the run's resolved ``config.yaml``), the data, the
evaluation table exactly as the run's ``metrics.json`` holds it (every system, the validation
metrics, interpolation and extrapolation when the run measured them), the package versions,
usage with sentence-transformers and with FAISS, and the papers to cite.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping

import yaml

from dr.data.hf import hf_node
from dr.export.portable import portable_config
from dr.models.encoder import PACKAGED_MINILM_ALIASES

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

#: Known data specs -> (Hugging Face dataset id, description).
_DATASETS = {
    "scifact": ("BeIR/scifact", "BEIR SciFact (Wadden et al. 2020): 5,183 abstracts; 809 train and 300 test claims")
}

_CITATIONS = {
    "sentence-transformers": "Reimers and Gurevych. Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks. "
    "EMNLP 2019.",
    "tas": "Hofstätter et al. Efficiently Teaching an Effective Dense Retriever with Balanced Topic Aware Sampling. "
    "SIGIR 2021.",
    "simans": "Zhou et al. SimANS: Simple Ambiguous Negatives Sampling for Dense Text Retrieval. EMNLP 2022 (industry "
    "track).",
    "ance": "Xiong et al. Approximate Nearest Neighbor Negative Contrastive Learning for Dense Text Retrieval. ICLR "
    "2021.",
    "split": "Zhan et al. Evaluating Interpolation and Extrapolation Performance of Neural Retrieval Models. CIKM "
    "2022.",
    "beir": "Thakur et al. BEIR: A Heterogeneous Benchmark for Zero-shot Evaluation of Information Retrieval Models. "
    "NeurIPS 2021 Datasets and Benchmarks.",
    "scifact": "Wadden et al. Fact or Fiction: Verifying Scientific Claims. EMNLP 2020.",
    "matryoshka": "Kusupati et al. Matryoshka Representation Learning. NeurIPS 2022.",
}


def read_run_outputs(run_dir: str | os.PathLike | None) -> tuple[dict | None, dict | None]:
    """The resolved ``config.yaml`` and the ``metrics.json`` of a dr-train run directory (None when absent)."""
    if run_dir is None:
        return None, None
    run_dir = Path(run_dir)
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else None
    metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else None
    return config, metrics


def _base_model(config: Mapping | None) -> str | None:
    name = ((config or {}).get("encoder") or {}).get("name_or_path")
    if name is None:
        return None
    return "sentence-transformers/all-MiniLM-L6-v2" if str(name) in PACKAGED_MINILM_ALIASES else str(name)


def _dataset(spec: Any) -> tuple[str, str] | None:
    return _DATASETS.get(str(spec).split(":", 1)[0]) if spec else None


def _fmt(value: Any) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "-"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.4f}"
    return str(int(value)) if isinstance(value, float) else str(value)


def evaluation_tables(metrics: Mapping[str, float]) -> list[str]:
    """Markdown tables of a metrics.json: systems x measures (``<system>/<measure>``), their
    interpolation/extrapolation rows (``<system>/interpolation/<measure>``) and the validation metrics."""
    rows: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if parts[0] in ("time", "train", "refresh", "backend", "memory", "wise_ft") or len(parts) < 2:
            continue
        if parts[0] == "val":
            rows.setdefault("validation (held-out train queries)", {})[parts[1]] = value
        elif len(parts) == 2:
            rows.setdefault(parts[0], {})[parts[1]] = value
        elif len(parts) == 3 and parts[1] in ("interpolation", "extrapolation", "gap"):
            rows.setdefault(f"{parts[0]} {parts[1]}", {})[parts[2]] = value
        elif len(parts) == 4 and parts[0] == "ood":  # ood/<set>/<system>/<measure>: out-of-domain rows
            rows.setdefault(f"{parts[2]} on {parts[1]} (out of domain)", {})[parts[3]] = value
    if not rows:
        return []
    columns = list(dict.fromkeys(m for r in rows.values() for m in r if m != "queries"))
    counted = any("queries" in r for r in rows.values())
    header = ["system", *columns] + (["queries"] if counted else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, values in rows.items():
        cells = [_fmt(values[c]) if c in values else "" for c in columns]
        if counted:
            cells.append(_fmt(values["queries"]) if "queries" in values else "")
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return lines


def model_card(
    encoder,
    config: Mapping | None = None,
    metrics: Mapping[str, float] | None = None,
    name: str = "dr dense retriever",
    lora: str = "merge",
) -> str:
    """The README.md of an exported model (see the module docstring). Absolute paths of the
    config are left out (:func:`dr.export.portable.portable_config`): the card may be published.
    ``lora`` says how LoRA adapters ship (``merge`` or ``adapter``, ``export.lora``)."""
    import dr

    config = portable_config(config)

    base = _base_model(config)
    data = (config or {}).get("data") or {}
    test = (config or {}).get("test") or {}
    datasets = {d for d in (_dataset(data.get("corpus")), _dataset(test.get("corpus"))) if d}
    front: dict[str, Any] = {
        "library_name": "sentence-transformers",
        "pipeline_tag": "sentence-similarity",
        "tags": ["sentence-transformers", "feature-extraction", "sentence-similarity", "dense-retrieval", "dr"],
    }
    if base and _HUB_ID.match(base):
        front["base_model"] = base
    if datasets:
        front["datasets"] = sorted(d[0] for d in datasets)
    out = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "", f"# {name}", ""]
    settings = encoder.config_dict()
    out += [
        (f"A dual encoder trained with dr {dr.__version__}" + (f" from `{base}`." if base else "."))
        if config
        else f"A dual encoder exported with dr {dr.__version__}.",
        "",
        "| setting | value |",
        "|---|---|",
    ]
    out += [f"| {k} | {v} |" for k, v in settings.items()]
    out += [""]
    out += _lora_lines(encoder, config, lora)
    if config:
        loss = str((config.get("loss") or {}).get("_target_", "")).rsplit(".", 1)[-1]
        trainer = config.get("trainer") or {}
        optimizer = config.get("optimizer") or {}
        out += [
            "## Training",
            "",
            f"Loss `{loss}`, {trainer.get('max_steps')} steps of {data.get('batch_size')} queries, "
            f"learning rate {optimizer.get('lr')}, seed {config.get('seed')}. The resolved configuration of the run:",
            "",
            "<details><summary>config.yaml</summary>",
            "",
            "```yaml",
            yaml.safe_dump(dict(config), sort_keys=False).strip(),
            "```",
            "",
            "</details>",
            "",
        ]
        out += [line for line in (_weights_sentence(config, metrics or {}),) if line]
        out += ["## Data", ""]
        out += [
            f"- training queries `{data.get('train_queries')}`, qrels `{data.get('train_qrels')}`, corpus "
            f"`{data.get('corpus')}`"
        ]
        hf = hf_node(data.get("hf"))
        if hf is not None:  # data.hf: the files above were written from this dataset's texts (dr.data.hf)
            mapping = f", columns {hf.get('columns')}" if hf.get("columns") else ""
            out += [
                f"- built from the dataset `{hf.get('path')}` (split `{hf.get('split', 'train')}`{mapping}): its texts "
                "interned into the corpus, queries and qrels above (ids: SHA-256 of the text)"
            ]
        if test.get("enabled"):
            out += [
                f"- test queries `{test.get('queries')}`, qrels `{test.get('qrels')}`, corpus `{test.get('corpus')}`"
            ]
        out += [f"- {d[1]}" for d in sorted(datasets)] + [""]
    tables = evaluation_tables(metrics or {})
    if tables:
        test_name = test.get("name") or "test"
        out += [
            "## Evaluation",
            "",
            f"As printed by the run (its `metrics.json`), on the {test_name} split:",
            "",
            *tables,
            "",
        ]
        if "wise_ft/alpha" in (metrics or {}):
            out += [
                f"The weights are WiSE-FT's mix (Wortsman et al. 2022, Eq. 1) of the initial and the fine-tuned "
                f"weights at α = {metrics['wise_ft/alpha']:g} (`export.interpolate`); the rows above are that mix.",
                "",
            ]
        if any("/interpolation/" in k for k in metrics or {}):
            out += [
                "Interpolation: test queries whose nearest training query has a cosine at or above the threshold "
                "or that share a relevant document with a training query; extrapolation: the others "
                "(`dr-split`, after Zhan et al. 2022).",
                "",
            ]
    out += [
        "## Usage",
        "",
        "sentence-transformers:",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "",
        'model = SentenceTransformer("path/to/this/folder")',
        'queries = model.encode(["what is dense retrieval?"], normalize_embeddings=True)',
        'passages = model.encode(["Dense retrieval encodes queries and passages into vectors."], '
        "normalize_embeddings=True)",
        "print(queries @ passages.T)",
        "```",
        "",
        "FAISS (inner product; the embeddings are normalised, so it is cosine):",
        "",
        "```python",
        "import faiss",
        "",
        "index = faiss.IndexFlatIP(passages.shape[1])",
        "index.add(passages)",
        "scores, ids = index.search(queries, 10)",
        "```",
        "",
    ]
    out += _truncation_lines(settings, metrics or {})
    out += _prompt_lines(settings)
    out += [
        "With dr: `dr-eval model=path/to/this/folder preset=scifact`, `dr-encode model=path/to/this/folder "
        "corpus=...`.",
        "",
        "## Versions",
        "",
        f"- dr {dr.__version__}",
    ]
    for package in ("torch", "transformers", "faiss", "sentence_transformers"):
        version = _version(package)
        if version:
            out.append(f"- {package} {version}")
    out += ["", "## Citation", ""] + [f"- {c}" for c in _citations(config, metrics)]
    text = "\n".join(out) + "\n"
    if settings.get("query_prompt") or settings.get("passage_prompt"):  # the prompts are applied by name
        text = text.replace("queries = model.encode(", "queries = model.encode_query(").replace(
            "passages = model.encode(", "passages = model.encode_document("
        )
    # A dot-product model is used as it is, without normalising its embeddings.
    return (
        text
        if settings.get("normalize")
        else text.replace(", normalize_embeddings=True", "").replace(
            "(inner product; the embeddings are normalised, so it is cosine)",
            "(inner product, the model's dot-product score)",
        )
    )


def _version(package: str) -> str | None:
    from importlib import metadata

    names = {"faiss": ("faiss-cpu", "faiss-gpu-cu12", "faiss-gpu"), "sentence_transformers": ("sentence-transformers",)}
    for dist in names.get(package, (package,)):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def _citations(config: Mapping | None, metrics: Mapping | None) -> list[str]:
    keys = ["sentence-transformers"]
    text = json.dumps(config or {}, default=str).lower()
    if "tas" in text:
        keys.append("tas")
    if "simans" in text:
        keys.append("simans")
    if '"refresh": {"enabled": true' in text or (config or {}).get("refresh", {}).get("enabled"):
        keys.append("ance")
    if any("/interpolation/" in k for k in metrics or {}):
        keys.append("split")
    if any(k.startswith("trained@") for k in metrics or {}) and "matryoshkaloss" not in text:  # the loss cites itself
        keys.append("matryoshka")
    if "scifact" in text:
        keys += ["beir", "scifact"]
    cited = [_CITATIONS[k] for k in dict.fromkeys(keys)]
    return cited[:1] + _loss_citations((config or {}).get("loss")) + cited[1:]


def _loss_citations(node: Any) -> list[str]:
    """What the run's loss class cites (its contract, :meth:`dr.losses.base.Loss.config_citations`)."""
    if not isinstance(node, Mapping) or not node.get("_target_"):
        return []
    from hydra.utils import get_class

    try:
        cls = get_class(str(node["_target_"]))
    except Exception:  # a config from another version of dr: cite what can be found
        return []
    return list(cls.config_citations(node)) if hasattr(cls, "config_citations") else []


def _weights_sentence(config: Mapping, metrics: Mapping[str, float]) -> str | None:
    """Which weights the run exported (``export.checkpoint``; :mod:`dr.training.best_checkpoint`), or None."""
    if "train/checkpoint_step" not in metrics:
        return None
    step, total = (
        int(metrics["train/checkpoint_step"]),
        int(metrics.get("train/global_step", metrics["train/checkpoint_step"])),
    )
    if metrics.get("train/checkpoint_best"):
        monitor = ((config.get("callbacks") or {}).get("best_checkpoint") or {}).get(
            "monitor", "the validation measure"
        )
        return (
            f"The weights are those of the best validation, step {step} of {total} ({monitor} "
            f"{_fmt(float(metrics.get('train/best_score', math.nan)))}; `export.checkpoint=best`).\n"
        )
    return (
        f"The weights are those of the last step, {step} of {total} (`export.checkpoint=last`, or no validation "
        f"queries).\n"
    )


def _prompt_lines(settings: Mapping) -> list[str]:
    """Usage notes for a decoder backbone (last-token pooling) and for query or passage prompts."""
    out = []
    if settings.get("pooling") == "last":
        out += [
            "A decoder backbone: the embedding is the last layer's state of the last token"
            + (
                ", the end-of-sequence token the tokenizer appends to every text (RepLLaMA, Ma et al. 2023; "
                "`tokenizer.json` carries it, so sentence-transformers appends it too)"
                if settings.get("append_eos")
                else ""
            )
            + ". Texts are padded on the right; sentence-transformers' `lasttoken` pooling reads the same token.",
            "",
        ]
    query, passage = settings.get("query_prompt"), settings.get("passage_prompt")
    if not (query or passage):
        return out
    said = " and ".join(
        f"{kind} with the prompt `{json.dumps(text)}` before them"
        for kind, text in (("queries", query), ("passages", passage))
        if text
    )
    return out + [
        f"Trained and evaluated with {said} (`encoder.query_prompt` / `encoder.passage_prompt`; its tokens count "
        "against the max length). They are the `prompts` of `config_sentence_transformers.json`: "
        "`model.encode_query` and `model.encode_document` (sentence-transformers >= 5) apply them, as does "
        '`model.encode(texts, prompt_name="query")` (or `"passage"`)'
        + (
            "; a plain `model.encode` applies the shared prompt too."
            if query == passage
            else "; a plain `model.encode` applies none."
        ),
        "",
    ]


def _lora_lines(encoder, config: Mapping | None, lora: str) -> list[str]:
    """A sentence on the LoRA adapters the model was trained with (``encoder.lora``), and how they ship."""
    from dr.models.lora import describe, settings

    adapters = getattr(encoder, "lora", None)  # None once merged into plain weights
    trained_with = adapters or settings(((config or {}).get("encoder") or {}).get("lora"))
    line = describe(trained_with, merged_weights=adapters is None or lora == "merge")
    return [line, ""] if line else []


def _truncation_lines(settings: Mapping, metrics: Mapping[str, float]) -> list[str]:
    """Usage notes for a Matryoshka model: the exported truncation and the dims the run evaluated."""
    dims = sorted(
        {int(k.split("/")[0].split("@")[1]) for k in metrics if k.split("/")[0].startswith("trained@")}, reverse=True
    )
    out = []
    if settings.get("truncate_dim"):
        out.append(
            f"Embeddings are cut to their first {settings['truncate_dim']} dimensions (`truncate_dim` in "
            "`config_sentence_transformers.json`, read by sentence-transformers >= 5; pass "
            f"`truncate_dim={settings['truncate_dim']}` to older versions) and re-normalised by "
            f"`normalize_embeddings=True`."
        )
    if dims:
        out.append(
            f"Trained with Matryoshka representation learning or evaluated as such: the evaluation rows `trained@m` "
            f"use the first m dimensions ({', '.join(map(str, dims))}); "
            "`SentenceTransformer(path, truncate_dim=m)` gives those embeddings."
        )
    return [*out, ""] if out else []
