"""Query clustering for TAS (dr/cluster.py): the file format, k-means, the number of clusters, dr-cluster."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from dr.cli import config_dir
from dr.cli.cluster import run as cluster
from dr.data import read_clusters, write_clusters
from dr.sampling.clustering import default_num_clusters, group, kmeans_assign
from dr.data import read_qrels, read_queries
from dr.data.io import DataError


def test_cluster_file_round_trip(tmp_path):
    clusters = [["q1", "q7"], ["q2"], ["q3", "q4", "q5"]]
    path = write_clusters(tmp_path / "clusters.txt", clusters)
    assert path.read_text() == "q1 q7\nq2\nq3 q4 q5\n"
    assert read_clusters(path) == clusters
    # whitespace of any kind separates ids; blank lines (empty clusters) are skipped
    path.write_text("q1\tq7  \n\nq2\n")
    assert read_clusters(path) == [["q1", "q7"], ["q2"]]


@pytest.mark.parametrize(
    "text,line,message",
    [
        ("q1 q2\nq3 q1\n", 2, "already in the cluster on line 1"),
        ("q1 q2 q1\n", 1, "earlier on the same line"),
        ("", None, "no clusters"),
        ("\n  \n", None, "no clusters"),
    ],
)
def test_bad_cluster_files_name_the_file_and_line(tmp_path, text, line, message):
    path = tmp_path / "clusters.txt"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as err:
        read_clusters(path)
    assert err.value.path == str(path) and err.value.line == line


def test_default_number_of_clusters_keeps_the_papers_ratio():
    assert default_num_clusters(400_000, 32) == 2000  # the paper: ~400k queries, 2,000 clusters
    assert default_num_clusters(769, 32) == 4  # SciFact train: ~190 queries a cluster, ~6 batches each
    assert default_num_clusters(10_000, 256) == 39  # capped: an average cluster fills a batch of 256
    assert default_num_clusters(64, 8) == 1  # never below one cluster
    assert default_num_clusters(1000, 8, queries_per_cluster=50) == 20


def test_kmeans_recovers_well_separated_groups():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 16)) * 10
    truth = np.repeat(np.arange(5), 40)
    x = (centres[truth] + rng.normal(size=(200, 16)) * 0.1).astype(np.float32)
    found = kmeans_assign(x, 5, seed=1, init="kmeans++")
    assert len(set(found.tolist())) == 5
    for c in range(5):  # each true group is one found cluster
        assert len(set(found[truth == c].tolist())) == 1
    assert np.array_equal(found, kmeans_assign(x, 5, seed=1, init="kmeans++"))  # seeded
    spherical = kmeans_assign(x / np.linalg.norm(x, axis=1, keepdims=True), 5, seed=1, spherical=True, init="kmeans++")
    assert all(len(set(spherical[truth == c].tolist())) == 1 for c in range(5))
    # random initial centroids (the reference): every query is assigned to a real cluster, seeded
    plain = kmeans_assign(x, 5, seed=3)
    assert set(plain.tolist()) <= set(range(5)) and np.array_equal(plain, kmeans_assign(x, 5, seed=3))
    with pytest.raises(ValueError, match="init must be"):
        kmeans_assign(x, 5, seed=1, init="best")
    with pytest.raises(ValueError, match="cannot make 300 clusters of 200"):
        kmeans_assign(x, 300, seed=1)


def test_group_keeps_query_order_and_drops_empty_clusters():
    assert group(["a", "b", "c", "d"], np.array([3, 0, 3, 0])) == [["b", "d"], ["a", "c"]]


def test_dr_cluster_end_to_end(tiny_bert, scifact_slice, tmp_path):
    out = tmp_path / "run"
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            "cluster",
            overrides=[
                f"model={tiny_bert}",
                f"queries={scifact_slice['train_queries']}",
                f"qrels={scifact_slice['train_qrels']}",
                "num_clusters=4",
                "train_batch_size=8",
                "batch_size=32",
            ],
        )
    stats = cluster(cfg, out)
    path = out / "clusters.txt"
    lines = path.read_text().splitlines()
    assert 1 <= len(lines) <= 4 and all(line.split() for line in lines)  # one non-empty cluster per line
    clusters = read_clusters(path)
    assigned = [q for c in clusters for q in c]
    qrels = read_qrels(scifact_slice["train_qrels"])
    expected = [q for q in read_queries(scifact_slice["train_queries"]) if q in qrels]
    assert sorted(assigned) == sorted(expected) and len(assigned) == len(set(assigned))  # every query exactly once
    written = json.loads((out / "clusters.txt.stats.json").read_text())
    assert written["queries"] == len(expected) == stats["queries"] and written["clusters"] == len(clusters)
    assert written["size_max"] == max(len(c) for c in clusters) and written["batch_size"] == 8
    png = out / "clusters.txt.sizes.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the same seed gives the same clusters
    cluster(cfg, tmp_path / "again")
    assert (tmp_path / "again" / "clusters.txt").read_text() == path.read_text()


def test_clustering_is_spherical_by_default_as_the_reference():
    """The TAS reference clusters with FAISS IVF under METRIC_INNER_PRODUCT, which FAISS trains by
    spherical k-means: queries group by direction, not by norm. So do our defaults (Python and configs)."""
    import inspect

    import faiss

    from dr.sampling import tas_batch_sampler
    from dr.sampling.clustering import auto_clusters, cluster_queries

    # FAISS itself: an inner-product IVF index (the reference's) trains spherical k-means
    ivf = faiss.IndexIVFScalarQuantizer(
        faiss.IndexFlatIP(8), 8, 4, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
    )
    assert ivf.cp.spherical
    # two directions, each at norms 1 and 8: inner product groups by direction; L2 separates the long vectors
    rng = np.random.default_rng(0)
    u, v = np.eye(8)[0], np.eye(8)[1]
    x = np.concatenate([np.outer(np.repeat([1.0, 8.0], 20), w) for w in (u, v)]) + rng.normal(size=(80, 8)) * 0.05
    direction = np.repeat([0, 1], 40)
    for seed in range(3):
        found = kmeans_assign(x.astype(np.float32), 2, seed=seed)
        assert all(len(set(found[direction == c].tolist())) == 1 for c in (0, 1)) and len(set(found.tolist())) == 2
        l2 = kmeans_assign(x.astype(np.float32), 2, seed=seed, spherical=False)
        assert not all(len(set(l2[direction == c].tolist())) == 1 for c in (0, 1))
    for function in (kmeans_assign, cluster_queries, auto_clusters, tas_batch_sampler):
        assert inspect.signature(function).parameters["spherical"].default is True, function
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        assert compose("cluster").spherical is True
        assert compose("train", overrides=["sampler=tas"]).data.batch_sampler.spherical is True
