"""Query-cluster files (TAS, Hofstätter et al., SIGIR 2021): the reference format.

One cluster per line, its query ids separated by whitespace. ``dr-cluster`` writes them
(:mod:`dr.sampling.clustering`); ``sampler=tas`` reads them.
"""

from __future__ import annotations

import os
from pathlib import Path

from dr.data.io import DataError, atomic_write, numbered_lines


def read_clusters(path: str | os.PathLike) -> list[list[str]]:
    """Read a cluster assignment file: one cluster per line, query ids separated by whitespace.

    Blank lines (empty clusters) are skipped. A query id in two clusters, or a file without any
    query id, raises :class:`dr.data.io.DataError` naming the file and line.
    """
    clusters: list[list[str]] = []
    line_of: dict[str, int] = {}
    with numbered_lines(path) as lines:
        for line_no, line in lines:
            members = line.split()
            if not members:
                continue
            for qid in members:
                if qid in line_of:
                    where = (
                        "earlier on the same line"
                        if line_of[qid] == line_no
                        else f"already in the cluster on line {line_of[qid]}"
                    )
                    raise DataError(
                        path,
                        line_no,
                        f"query {qid!r} is {where}; expected every query id in exactly one cluster (one cluster per "
                        f"line)",
                    )
                line_of[qid] = line_no
            clusters.append(members)
    if not clusters:
        raise DataError(path, None, "no clusters; expected one cluster per line, query ids separated by whitespace")
    return clusters


def write_clusters(path: str | os.PathLike, clusters: list[list[str]]) -> Path:
    """Write clusters in the reference format (one per line, ids separated by spaces), atomically."""
    with atomic_write(path) as f:
        for members in clusters:
            f.write(" ".join(members) + "\n")
    return Path(path)
