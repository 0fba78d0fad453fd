"""Evaluation: metrics (pure functions of arrays), scoring a test set, and writing tables, curves and the report."""
