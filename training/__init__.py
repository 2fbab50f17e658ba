"""SlimDiffSR training: stage 0 uncertainty estimator, stage 1 single-step teacher, stage 2 student, evaluation.

The folders follow the data flow:

- `data/`: fetch the imagery (`python -m training.data.sources prepare`), split scenes into disjoint
  blocks, cut crops, make LR with the Real-ESRGAN or the sensor degradation, batch them reproducibly;
- `networks/`: the diffusion backbone, the stage-0 estimator, the stage-1 teacher, the per-pixel time
  embedding and the stage-2 distillation taps and initialisation;
- `losses/`: reconstruction, LPIPS, the adversarial term, TV and MMD;
- `stages/`: one entry point per stage (`python -m training.stages.uncertainty`, `.teacher`, `.student`,
  `.error_head`), each driven by a YAML config in `configs/`;
- `runtime/`: what runs every stage: typed config, arguments, loop, EMA, data parallelism, logs, export;
- `evaluation/`: metrics and the evaluation report (`python -m training.evaluation.report`).

The student comes from `backend.models`, so the weights a run writes load in the backend unchanged.
"""
