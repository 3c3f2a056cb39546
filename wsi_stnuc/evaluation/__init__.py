"""Evaluation: metrics, loading predictions and references, the classical baseline, annotated data."""
