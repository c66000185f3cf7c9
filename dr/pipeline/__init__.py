"""Jobs made of dr's commands, each stage cached by fingerprint (``dr-pipeline``, ``conf/pipeline/``).

- :mod:`dr.pipeline.fingerprint`: a stage's key (its composed config and input files);
- :mod:`dr.pipeline.runner`: plan and run stages, reusing finished ones, resuming killed runs;
- :mod:`dr.pipeline.job`: a pipeline config as stages, and its results table.
"""

from dr.pipeline.fingerprint import embeddings_path, stage_fingerprint
from dr.pipeline.job import job_specs, report, results_table
from dr.pipeline.runner import Stage, cache_lock, plan, run_stages

__all__ = [
    "Stage",
    "cache_lock",
    "embeddings_path",
    "job_specs",
    "plan",
    "report",
    "results_table",
    "run_stages",
    "stage_fingerprint",
]
