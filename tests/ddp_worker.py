"""One rank of the DDP test: a tiny No-Dis student stage (student + discriminator) under torchrun with gloo.

    python -m torch.distributed.run --nproc_per_node 2 tests/ddp_worker.py OUT
Each rank writes its parameters after training to OUT/rank<r>.safetensors.
"""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training.runtime import data_parallel as distributed  # noqa: E402
from training.stages import student as train_student  # noqa: E402
from training.data.batches import seeded_batches  # noqa: E402
from training.runtime.config import loop_config, stage_dir  # noqa: E402
from training.runtime.loop import seed_everything, train  # noqa: E402
from training_helpers import FixedPairs, tiny_config  # noqa: E402

torch.set_num_threads(1)
out = Path(sys.argv[1])
processes = distributed.start("cpu")
config = tiny_config(out / "run", "student.loop.steps=2", "student.teacher_weights=none", "student.loop.seed=0")
loop = loop_config(config, "student")
seed_everything(100 + processes.rank)  # deliberately different initial weights: rank 0's must win
task = train_student.build_task(config, processes)
batches = seeded_batches(FixedPairs(count=8), loop.batch_size, loop.grad_accum, loop.seed)
outcome = train(task, loop, batches, stage_dir(config, "student"), processes)
state = {f"generator.{k}": v for k, v in task.generator.state_dict().items()}
state.update({f"critic.{k}": v for k, v in task.critic.state_dict().items()})
save_file({k: v.contiguous() for k, v in state.items()}, str(out / f"rank{processes.rank}.safetensors"))
distributed.stop(processes)
