"""Scoring SR outputs: LR making, held-out images, the metric set, timing, and the evaluation report."""
