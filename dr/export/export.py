"""Export a trained encoder for search indexes and other toolkits.

The exported folder holds:

- the Hugging Face weights and tokenizer (``AutoModel.from_pretrained(path)`` loads it);
- the sentence-transformers layout: ``modules.json`` (Transformer, then the real Pooling, then
  Normalize when embeddings are normalised), ``1_Pooling/config.json``,
  ``sentence_bert_config.json`` (max length) and ``config_sentence_transformers.json`` (the
  similarity function, and the query and passage prompts: :func:`sentence_transformers_prompts`), so
  ``SentenceTransformer(path)`` gives the same embeddings as our encoder;
- our own ``dr_config.json`` (pooling, normalisation, similarity, both max lengths);
- ``README.md``, a Hugging Face model card (:mod:`dr.export.model_card`);
- for an encoder trained with LoRA adapters, the merged weights, or with ``lora="adapter"`` the
  adapter files and the name of the base model (:mod:`dr.models.lora`);
- optionally ``index/`` with the FAISS index and its docids (see :mod:`dr.retrieval.index`);
- with ``format="onnx"`` also ``onnx/model.onnx`` (pooling and normalisation inside the graph,
  see :mod:`dr.models.onnx`), where sentence-transformers' ONNX backend looks for it; with
  ``format="onnx-int8"`` also the int8 file under sentence-transformers' name for it,
  ``onnx/model_qint8_avx512.onnx``.

A model with separate query and passage towers is exported as two such folders, ``query/`` and
``passage/``, each loadable on its own, with ``dr_config.json`` at the top.

Sentence-transformers has one max length per model; we write the passage length, which is what
an index is built with. Queries longer than that are truncated by both.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path

from dr.models.encoder import DR_CONFIG, BiEncoder
from dr.models.lora import merged, save_adapters
from dr.models.onnx import export_onnx
from dr.export.model_card import model_card
from dr.retrieval.index import DenseIndex
from dr.config import BACKENDS, ConfigError
from dr.data.io import naming, usual_modes, write_json


def _write_sentence_transformers_layout(out: Path, encoder: BiEncoder, max_seq_length: int) -> None:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if encoder.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (out / "2_Normalize").mkdir(exist_ok=True)
    write_json(out / "modules.json", modules)
    write_json(
        out / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": int(encoder.query_model.config.hidden_size),
            "pooling_mode_cls_token": encoder.pooling == "cls",
            "pooling_mode_mean_tokens": encoder.pooling == "mean",
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": encoder.pooling == "last",
            "include_prompt": True,
        },
    )
    write_json(out / "sentence_bert_config.json", {"max_seq_length": max_seq_length, "do_lower_case": False})
    st_config = {
        "similarity_fn_name": "cosine" if encoder.similarity == "cos" else "dot",
        **sentence_transformers_prompts(encoder),
    }
    if encoder.truncate_dim is not None:
        st_config["truncate_dim"] = encoder.truncate_dim  # read by sentence-transformers >= 5 when loading
    write_json(out / "config_sentence_transformers.json", st_config)


def sentence_transformers_prompts(encoder: BiEncoder) -> dict:
    """``prompts`` and ``default_prompt_name`` of ``config_sentence_transformers.json``.

    The query prompt is named ``query`` (what ``encode_query`` and ``prompt_name="query"`` use), the
    passage prompt both ``document`` (what sentence-transformers >= 5's ``encode_document`` tries
    first; it would find an empty one there otherwise) and ``passage`` (E5's name, for older versions
    and ``prompt_name="passage"``). ``default_prompt_name`` (the prompt a plain ``encode`` applies) is
    set only when both kinds have the same prompt: otherwise a plain ``encode`` could not know
    whether it is given queries or passages, and applies none.
    """
    prompts = {}
    if encoder.query_prompt:
        prompts["query"] = encoder.query_prompt
    if encoder.passage_prompt:
        prompts["document"] = prompts["passage"] = encoder.passage_prompt
    same = encoder.query_prompt and encoder.query_prompt == encoder.passage_prompt
    return {"prompts": prompts, "default_prompt_name": "query" if same else None}


FORMATS = BACKENDS  # an export for each backend
LORA_EXPORTS = ("merge", "adapter")


def truncated(encoder: BiEncoder, dim: int | None) -> BiEncoder:
    """``encoder`` embedding its first ``dim`` dimensions (re-normalised when it normalises): a shallow
    copy sharing the weights; ``encoder`` itself when ``dim`` is None."""
    if dim is None:
        return encoder
    hidden = int(encoder.query_model.config.hidden_size)
    if not (isinstance(dim, int) and 0 < dim <= hidden):
        raise ConfigError(f"truncate_dim={dim}: expected an integer in [1, {hidden}] (the model's dimension)")
    cut = copy.copy(encoder)
    cut.truncate_dim = None if dim == hidden else dim
    return cut


def export(
    encoder: BiEncoder,
    out_dir: str | os.PathLike,
    index: DenseIndex | None = None,
    format: str = "torch",
    card: str | None = None,
    overwrite: bool = False,
    truncate_dim: int | None = None,
    lora: str = "merge",
) -> Path:
    """Write ``encoder`` (and optionally ``index``) to ``out_dir``; returns the folder.

    ``format`` is ``torch`` (the weights and the sentence-transformers files), ``onnx`` (also
    ``onnx/model.onnx`` in each tower's folder) or ``onnx-int8`` (also the int8 file). The folder
    is assembled in a temporary sibling and renamed into place, so a crash or a failed write
    (an ``OSError`` naming ``out_dir``) never leaves a half-exported model. An existing export at
    ``out_dir`` (a folder with ``dr_config.json``) is replaced; anything else there is refused with
    a :class:`ConfigError` unless ``overwrite`` (:func:`check_export_target`). Files and folders
    get the modes the umask gives ordinary ones.
    ``card`` is the ``README.md`` (default: :func:`dr.export.model_card.model_card` of the
    encoder alone; a run passes its config and metrics). ``truncate_dim`` exports the first that many
    dimensions, re-normalised when the encoder normalises (``dr_config.json`` and
    sentence-transformers' ``truncate_dim``; a Matryoshka model); ``index`` must then hold vectors of
    that dimension. ``lora`` is how an encoder with LoRA adapters ships (:mod:`dr.models.lora`):
    ``merge`` writes plain weights with the adapters merged in, ``adapter`` peft's adapter files
    (``adapter_config.json``, which names the base model, and ``adapter_model.safetensors``), which
    ``SentenceTransformer(path)`` loads on top of the base model when ``peft`` is installed.
    """
    if format not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(repr(f) for f in FORMATS)}, got {format!r}")
    if lora not in LORA_EXPORTS:
        raise ConfigError(f"lora={lora}: expected one of {', '.join(LORA_EXPORTS)}")
    encoder = truncated(encoder, truncate_dim)
    if card is None:
        card = model_card(encoder, lora=lora)  # before a merge, so it can say how the adapters were set
    if lora == "merge":
        encoder = merged(encoder)  # a new encoder with plain towers; the trained one keeps its adapters
    elif encoder.lora is not None and format != "torch":
        raise ConfigError(
            f"lora=adapter, format={format}: the ONNX graph holds plain weights; expected lora=merge (or format=torch)"
        )
    if encoder.truncate_dim is not None and format != "torch":
        raise ConfigError(
            f"truncate_dim={encoder.truncate_dim}, format={format}: the ONNX graph has no truncation; expected "
            f"format=torch"
        )
    if index is not None and index.index.d != encoder.dim:
        raise ConfigError(
            f"the index holds {index.index.d}-d vectors but the exported encoder embeds {encoder.dim} dims"
        )
    out = check_export_target(out_dir, overwrite)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as e:
        raise naming(e, out) from e
    try:
        if encoder.lora is not None:  # lora=adapter
            save_adapters(encoder, tmp)
        else:
            encoder.save_pretrained(tmp)
        if encoder.shared:
            _write_sentence_transformers_layout(tmp, encoder, encoder.passage_max_length)
        else:
            _write_sentence_transformers_layout(tmp / "query", encoder, encoder.query_max_length)
            _write_sentence_transformers_layout(tmp / "passage", encoder, encoder.passage_max_length)
        if format != "torch":
            export_onnx(encoder, tmp, int8=format == "onnx-int8")
        if index is not None:
            index.save(tmp / "index")
        (tmp / "README.md").write_text(card, encoding="utf-8")
        usual_modes(tmp)  # mkdtemp makes the folder 0700: others of the group could not load the model
        check_export_target(out, overwrite)  # again: something may have appeared there meanwhile
        _swap_into_place(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and (e.filename is None or str(e.filename).startswith(str(tmp))):
            # The temporary folder's name would mean nothing to a user: name the file in out_dir.
            raise naming(e, str(e.filename or tmp).replace(str(tmp), str(out), 1)) from e
        raise
    return out


def check_export_target(out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """The absolute folder to export to, when ``out_dir`` may be written: absent, or a previous
    export (it has ``dr_config.json``), or anything with ``overwrite``. A symbolic link is never
    written through. Raises :class:`ConfigError` naming ``output=`` otherwise."""
    given = Path(out_dir).expanduser()
    if given.is_symlink():
        raise ConfigError(
            f"output={out_dir}: is a symbolic link; expected a folder path (dr does not write through links)"
        )
    out = given.resolve()  # output=. or a path ending in .. has no name of its own to rename
    if out.parent == out:
        raise ConfigError(f"output={out_dir}: expected a folder below the file system's root")
    if out.exists() and not overwrite and not (out.is_dir() and (out / DR_CONFIG).is_file()):
        what = "a folder that is not a dr export (no dr_config.json)" if out.is_dir() else "a file"
        raise ConfigError(
            f"output={out_dir}: {out} is {what}; expected a new folder or a previous export "
            "(pass overwrite=true to replace it)"
        )
    return out


def _swap_into_place(new: Path, out: Path) -> None:
    """Rename the folder ``new`` to ``out``; an existing ``out`` is moved aside first, into a side
    folder we create, and deleted with it only once ``new`` is in place (put back if that
    fails), so ``out`` is always a complete export and the side folder never stays behind."""
    if not out.exists():
        os.replace(new, out)
        return
    side = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
    try:
        os.replace(out, side / out.name)
    except BaseException:
        side.rmdir()
        raise
    try:
        os.replace(new, out)
    except BaseException:
        os.replace(side / out.name, out)  # should this fail too, the previous export stays in the side folder
        side.rmdir()
        raise
    shutil.rmtree(side, ignore_errors=True)  # made above; holds only the export replaced


def read_dr_config(path: str | os.PathLike) -> dict:
    """The ``dr_config.json`` of an exported or saved model."""
    return json.loads((Path(path) / DR_CONFIG).read_text())
