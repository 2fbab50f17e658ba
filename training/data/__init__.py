"""Training imagery: fetching, scene splits, crops, batches and the two LR degradation models."""
