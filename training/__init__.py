"""SlimDiffSR training: stage 0 uncertainty estimator, stage 1 single-step teacher, stage 2 student, evaluation.

Entry points: `python -m training.train_uncertainty`, `training.train_teacher`,
`training.train_student`, `training.evaluate`, each driven by a YAML config in
`training/configs/`. The student comes from `backend.models`, so the weights a
run writes load in the backend unchanged.
"""
