"""BEIR folders (dr-eval beir=), the multi-dataset summary, presets, dr-plot and the model card."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from PIL import Image

from dr.data import DataError, beir_folder, read_qrels, read_queries
from dr.evaluation import PRESETS


def _beir(slice_files: dict[str, str], out: Path) -> Path:
    """The SciFact slice as a BEIR folder: corpus.jsonl, queries.jsonl, qrels/test.tsv with its header."""
    (out / "qrels").mkdir(parents=True)
    shutil.copy(slice_files["corpus"], out / "corpus.jsonl")
    queries = read_queries(slice_files["test_queries"])
    (out / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q, "text": t, "metadata": {}}) + "\n" for q, t in queries.items())
    )
    qrels = read_qrels(slice_files["test_qrels"])
    (out / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{g}\n" for q, j in qrels.items() for d, g in j.items())
    )
    return out


def _dr_eval(monkeypatch, *args):
    from dr.cli.evaluate import main

    monkeypatch.setattr(sys, "argv", ["dr-eval", *args])
    main()


def test_beir_folder_evaluates_to_the_same_figures_as_the_files(tiny_bert, scifact_slice, tmp_path, monkeypatch):
    folder = _beir(scifact_slice, tmp_path / "scifact-beir")
    assert read_qrels(folder / "qrels" / "test.tsv") == read_qrels(scifact_slice["test_qrels"])
    assert read_queries(folder / "queries.jsonl") == read_queries(scifact_slice["test_queries"])
    model = [f"model={tiny_bert}", "encoder.pooling=mean"]
    _dr_eval(monkeypatch, *model, f"beir={folder}", f"hydra.run.dir={tmp_path / 'beir'}")
    _dr_eval(
        monkeypatch,
        *model,
        f"corpus={scifact_slice['corpus']}",
        f"queries={scifact_slice['test_queries']}",
        f"qrels={scifact_slice['test_qrels']}",
        f"hydra.run.dir={tmp_path / 'files'}",
    )
    beir = json.loads((tmp_path / "beir" / "metrics.json").read_text())
    files = json.loads((tmp_path / "files" / "metrics.json").read_text())
    assert beir == files and set(beir) == {"nDCG@10", "R@100"}

    # Several folders in one command: one row each and their mean.
    other = shutil.copytree(folder, tmp_path / "copy")
    _dr_eval(monkeypatch, *model, f"beir=[{folder},{other}]", f"hydra.run.dir={tmp_path / 'both'}")
    both = json.loads((tmp_path / "both" / "metrics.json").read_text())
    assert (
        both["scifact-beir/nDCG@10"] == both["copy/nDCG@10"] == both["mean/nDCG@10"] == pytest.approx(files["nDCG@10"])
    )


def test_beir_files_are_validated(tmp_path):
    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1", "text": "x"}\n')
    with pytest.raises(FileNotFoundError, match="queries.jsonl or queries.tsv"):
        beir_folder(tmp_path)
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "x"}\n{"_id": "q 2", "text": "y"}\n')
    with pytest.raises(DataError, match=r"queries.jsonl, line 2: expected a non-empty '_id'"):
        read_queries(tmp_path / "queries.jsonl")
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\tx\n")
    with pytest.raises(DataError, match=r"test.tsv, line 3: expected an integer score, got 'x'"):
        read_qrels(tmp_path / "qrels" / "test.tsv")


def test_presets_keep_the_official_conventions():
    trec_dl = ["nDCG@10", "RR@10", "AP(rel=2)", "R(rel=2)@1000"]
    assert PRESETS["dl19"]["measures"] == PRESETS["dl20"]["measures"] == trec_dl
    assert PRESETS["msmarco-dev"]["measures"] == ["RR@10", "R@1000"]
    assert PRESETS["msmarco-dev"]["queries"] == PRESETS["msmarco-dev"]["qrels"] == "irds:msmarco-passage/dev/small"
    assert {p["corpus"] for k, p in PRESETS.items() if k not in ("scifact", "dl19-pool")} == {"irds:msmarco-passage"}
    # the bundled judged pool: DL19's queries and its qrels restricted to the pool, TREC-DL's recall (grade >= 2)
    assert PRESETS["dl19-pool"]["queries"] == PRESETS["dl19"]["queries"]
    assert PRESETS["dl19-pool"]["measures"] == ["nDCG@10", "R(rel=2)@100"]


def test_dr_plot_draws_one_line_per_run_and_leaves_out_constant_series(cfg_train, tmp_path, monkeypatch, capsys):
    from dr.cli.plot import positional_to_override
    from dr.plots import plot_runs, read_metrics_csv
    from dr.training import train

    run = tmp_path / "run"
    train(cfg_train("test.enabled=false", "export.enabled=false", out=run, max_steps=4))
    series = read_metrics_csv(run / "logs" / "metrics.csv")
    assert {"train/loss", "train/negatives_version", "val/nDCG@10"} <= set(series) and any(
        n.startswith("lr-") for n in series
    )
    assert positional_to_override(["a", "output=x.png", "--cfg", "job", "b"]) == [
        "output=x.png",
        "--cfg",
        "job",
        "runs=['a','b']",
    ]

    from dr.cli.plot import main

    monkeypatch.setattr(
        sys,
        "argv",
        [
            "dr-plot",
            str(run),
            str(run),
            "labels=[first,second]",
            f"output={tmp_path / 'p.png'}",
            f"hydra.run.dir={tmp_path / 'plot'}",
        ],
    )
    main()
    assert Image.open(tmp_path / "p.png").size[0] > 500

    import matplotlib.pyplot as plt

    saved = []
    monkeypatch.setattr(
        plt.Figure, "savefig", lambda fig, *a, **k: saved.append(fig) or Image.new("RGB", (8, 8)).save(a[0], "png")
    )
    plot_runs({"a": series, "b": series}, tmp_path / "q.png")
    (fig,) = saved
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert labels[0] == "train/loss" and "train/negatives_version" not in labels and "val/nDCG@10" in labels
    assert all(len(ax.get_lines()) == 2 for ax in fig.axes)  # one line per run, no refresh marker

    monkeypatch.setattr(sys, "argv", ["dr-plot", str(tmp_path / "missing")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2 and "dr-plot: error:" in capsys.readouterr().err


def test_model_card_names_the_metrics_the_run_printed(cfg_train, tiny_bert, tmp_path, capsys):
    from dr.training import train

    run = tmp_path / "run"
    train(cfg_train("test.split.enabled=true", f"test.split.model={tiny_bert}", "test.split.threshold=1.0", out=run))
    printed = capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    assert "trained interp." in printed and "trained extrap." in printed
    card = (run / "export" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: sentence-transformers\n")
    for key in (
        "bm25/nDCG@10",
        "zero_shot/R@100",
        "trained/nDCG@10",
        "trained/R@100",
        "val/nDCG@10",
        "trained/interpolation/nDCG@10",
        "trained/extrapolation/R@100",
    ):
        value = f"{metrics[key]:.4f}"
        assert value in card, key
        if not key.startswith("val/") and "/" not in key.split("/", 1)[1]:
            assert value in printed, key  # the table the run printed shows the same figure
    assert "nDCG@10" in card and "R@100" in card and "Zhan et al." in card and "faiss.IndexFlatIP" in card
    # the resolved config, without absolute paths (issue 25: a card may be pushed to a hub)
    assert "```yaml" in card and "name_or_path: " in card and str(tiny_bert) not in card
