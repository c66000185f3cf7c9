"""Evaluation: ir-measures on run files and models (TREC-DL conventions, presets), paired
significance tests between systems, interpolation/extrapolation query splits and benchmark tables."""

from dr.evaluation.evaluate import PRESETS, evaluate_run, format_table, parse_measures, per_query, write_metrics

__all__ = ["PRESETS", "evaluate_run", "format_table", "parse_measures", "per_query", "write_metrics"]
