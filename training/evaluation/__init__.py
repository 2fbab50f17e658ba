"""Scoring SR outputs: image-quality metrics and the evaluation report."""
