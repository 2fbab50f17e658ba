"""Data-parallel training: two CPU processes under torchrun (gloo) end a training step with identical weights."""

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent


def test_two_gloo_processes_train_to_identical_parameters(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": "29517"}
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
         str(HERE / "ddp_worker.py"), str(tmp_path)],
        cwd=HERE.parent, env=env, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    rank0 = load_file(str(tmp_path / "rank0.safetensors"))
    rank1 = load_file(str(tmp_path / "rank1.safetensors"))
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    assert (tmp_path / "run" / "student" / "student.safetensors").is_file()
    assert "x 2 processes" in (tmp_path / "run" / "student" / "run.log").read_text()
