"""The quickstart itself (about 40 minutes on an AVX2-only 2-core CPU): `pytest -m slow`.

Trains all-MiniLM-L6-v2 on the bundled SciFact train split with the default config and checks
the published-level outcome on the full test split.
"""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from dr.cli import config_dir
from dr.training import train


@pytest.mark.slow
def test_quickstart_reaches_the_reference_quality(tmp_path):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.output_dir={tmp_path}"])
    metrics = train(cfg)
    assert abs(metrics["bm25/nDCG@10"] - 0.679) < 0.002  # bm25s, stemmed, k1=1.2, b=0.75
    assert abs(metrics["zero_shot/nDCG@10"] - 0.645) < 0.005  # MTEB's all-MiniLM-L6-v2 figure
    assert metrics["trained/nDCG@10"] >= 0.70
    assert (tmp_path / "export" / "modules.json").is_file()
