"""The networks the stages train and distil: backbone, estimator, teacher, time embedding, taps."""
