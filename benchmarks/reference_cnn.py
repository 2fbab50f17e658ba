"""Train the plain residual CNN that the default student must beat, on the manifest's training blocks.

The reference: 16 residual blocks of 48 channels in LR space, pixel-shuffle x2
stages up to the scale, and a global bicubic skip (about 0.85 M parameters at
x4). L1 loss, Adam 2e-4 with cosine decay over the time budget, batches of 8
HR crops of 128 px with random flips and 90-degree rotations, sensors mixed
equally, clean bicubic LR. It trains for a wall-clock budget, not a step
count, because the question it answers is "what does this CPU buy in N
minutes"; the learning rate follows the cosine over elapsed time. Weights are
saved as safetensors with the config and provenance in the metadata, and
`benchmarks.quality --reference FILE` evaluates them.

    .venv/bin/python -m benchmarks.reference_cnn --minutes 25 --out runs/reference_cnn_x4.safetensors
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from training.data.crops import CropDataset, scenes_from_manifest

CONFIG_KEY = "reference_cnn_config"


class ResidualBlock(nn.Module):
    """conv-ReLU-conv with an identity skip."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ReferenceCNN(nn.Module):
    """LR [B, 3, h, w] in [0, 1] -> HR [B, 3, h*scale, w*scale]: residual features, pixel shuffle, bicubic skip."""

    def __init__(self, scale: int = 4, channels: int = 48, blocks: int = 16):
        super().__init__()
        if scale not in (2, 4, 8):
            raise ValueError(f"scale {scale} is not a power of two up to 8")
        self.scale, self.channels, self.blocks = scale, channels, blocks
        self.head = nn.Conv2d(3, channels, 3, padding=1)
        self.body = nn.Sequential(*[ResidualBlock(channels) for _ in range(blocks)],
                                  nn.Conv2d(channels, channels, 3, padding=1))
        stages = []
        for _ in range(int(math.log2(scale))):
            stages += [nn.Conv2d(channels, channels * 4, 3, padding=1), nn.PixelShuffle(2), nn.ReLU(inplace=True)]
        self.upsample = nn.Sequential(*stages)
        self.tail = nn.Conv2d(channels, 3, 3, padding=1)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        features = self.head(lr)
        features = features + self.body(features)
        skip = F.interpolate(lr, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return skip + self.tail(self.upsample(features))

    def config(self) -> dict:
        return {"scale": self.scale, "channels": self.channels, "blocks": self.blocks}


def save_reference(model: ReferenceCNN, path: Path, meta: dict[str, str]) -> None:
    """Weights and config (+ provenance) as safetensors, written to a temp name and renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(partial), metadata={**meta, CONFIG_KEY: json.dumps(model.config())})
    partial.replace(path)


def load_reference(path: Path) -> ReferenceCNN:
    """The reference CNN stored at `path` (safetensors only), in eval mode, with `.meta`."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        if CONFIG_KEY not in metadata:
            raise ValueError(f"{path} is not a reference-CNN weights file (no {CONFIG_KEY} in its metadata)")
        model = ReferenceCNN(**json.loads(metadata[CONFIG_KEY]))
        model.load_state_dict({key: handle.get_tensor(key) for key in handle.keys()})
    model.meta = {k: v for k, v in metadata.items() if k != CONFIG_KEY}
    return model.eval()


def train(manifest: Path, out: Path, minutes: float, scale: int = 4, batch: int = 8, crop: int = 128,
          learning_rate: float = 2e-4, seed: int = 0, log_every: int = 50) -> ReferenceCNN:
    """Train for `minutes` of wall-clock time and save to `out`; prints the running L1 every `log_every` steps."""
    torch.manual_seed(seed)
    dataset = CropDataset(scenes_from_manifest(manifest), crop=crop, scale=scale, role="train",
                          length=10 ** 9, seed=seed)
    model = ReferenceCNN(scale)
    optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate)
    budget = minutes * 60.0
    start = time.monotonic()
    step, running = 0, 0.0
    model.train()
    while (elapsed := time.monotonic() - start) < budget:
        for group in optimiser.param_groups:
            group["lr"] = learning_rate * 0.5 * (1 + math.cos(math.pi * elapsed / budget))
        items = [dataset[step * batch + i] for i in range(batch)]
        lr = torch.stack([item["lr"] for item in items])
        hr = torch.stack([item["hr"] for item in items])
        loss = F.l1_loss(model(lr), hr)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        step += 1
        running += loss.item()
        if step % log_every == 0:
            print(f"step {step}  {elapsed / 60:.1f} min  L1 {running / log_every:.4f}", flush=True)
            running = 0.0
    meta = {"steps": str(step), "minutes": f"{minutes:g}", "batch": str(batch), "crop": str(crop),
            "normalisation": dataset.normalisation_spec, "data": str(manifest), "lr_kind": "clean bicubic",
            "parameters": str(sum(p.numel() for p in model.parameters()))}
    save_reference(model.eval(), out, meta)
    print(f"saved {out} after {step} steps ({meta['parameters']} parameters)")
    return model


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reference_cnn", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/manifest.json"), help="data manifest")
    parser.add_argument("--minutes", type=float, default=25.0, help="wall-clock training budget")
    parser.add_argument("--scale", type=int, default=4, choices=(4, 8))
    parser.add_argument("--out", type=Path, default=None,
                        help="weights file (default runs/reference_cnn_xS.safetensors)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or Path(f"runs/reference_cnn_x{args.scale}.safetensors")
    train(args.data, out, args.minutes, scale=args.scale, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
