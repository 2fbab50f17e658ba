"""Real cross-resolution pairs of the data manifest: a sensor's coarse band(s) and its own finer band, same scene.

`python -m training.data.sources prepare` writes each pair as two GeoTIFFs and a manifest entry with blocks
per role in LR pixels (Sentinel-2 B8A at 20 m with B8 at 10 m; Landsat 8 red/green/blue at 30 m with the
panchromatic B8 at 15 m, whose grid is offset by half a 15 m pixel). Each file is normalised by its own
2-98 % stretch, the engine's rule. benchmarks.real_pairs scores methods on the validation and test blocks;
`PairCrops` draws training crops from the train blocks of the pairs a model can learn directly: one LR band
on the HR's grid (the HR is then that band at the finer resolution, up to the small spectral shift between
the two bands, which `align_to_input` takes out as a gain and offset).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from osgeo import gdal

from backend.normalisation import Normalisation, resolve
from training.data.crops import (BRIGHT_LEVEL, DEFAULT_SPEC, MAX_BRIGHT_SHARE, MAX_DRAWS, augment_together,
                                 nodata_mask, read_decimated)
from training.data.realesrgan_degradation import bicubic_downsample
from training.data.scene_split import ROLES, Block

gdal.UseExceptions()

REAL_PAIR = "real pair"
"""The lr_kind of a training item cut from a real pair."""


def pair_entries(manifest: Path, names: Optional[Sequence[str]] = None) -> list[dict]:
    """The manifest's pair entries (of `names` only, when given); an unknown name or no pairs is an error."""
    pairs = json.loads(Path(manifest).read_text()).get("pairs", [])
    if not pairs:
        raise ValueError(f"{manifest} lists no pairs; run python -m training.data.sources prepare")
    known = [entry["name"] for entry in pairs]
    unknown = sorted(set(names or ()) - set(known))
    if unknown:
        raise ValueError(f"pair(s) {', '.join(unknown)} are not in {manifest}; it has {', '.join(known)}")
    return [entry for entry in pairs if not names or entry["name"] in names]


class PairFiles:
    """One pair's LR and HR files, each with its own normalisation, read at matching positions.

    Opened lazily and dropped on pickling, so a data-loader worker opens its own GDAL handles."""

    def __init__(self, entry: dict, root: Path):
        self.entry, self.root = entry, Path(root)
        self.name, self.sensor = entry["name"], entry["sensor"]
        self.scale, self.offset = int(entry["scale"]), float(entry["hr_offset"])
        self.nodata = entry.get("nodata")
        self._handles: Optional[tuple[gdal.Dataset, gdal.Dataset]] = None
        self._normalisations: Optional[tuple[Normalisation, Normalisation]] = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handles": None}

    def blocks(self, role: str) -> list[Block]:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
        return [Block(*block) for block in self.entry["blocks"].get(role, [])]

    def _open(self) -> tuple[gdal.Dataset, gdal.Dataset]:
        if self._handles is None:
            self._handles = (gdal.Open(str(self.root / self.entry["lr"]["file"])),
                             gdal.Open(str(self.root / self.entry["hr"]["file"])))
        return self._handles

    @property
    def lr_bands(self) -> int:
        return self._open()[0].RasterCount

    def normalisations(self) -> tuple[Normalisation, Normalisation]:
        """(LR, HR) normalisations, each from a decimated read of its own file's valid pixels."""
        if self._normalisations is None:
            lr_ds, hr_ds = self._open()
            lr_sample = read_decimated(lr_ds, tuple(range(1, lr_ds.RasterCount + 1)))
            hr_sample = read_decimated(hr_ds, (1,))
            self._normalisations = (resolve(DEFAULT_SPEC, lr_sample, ~nodata_mask(lr_sample, self.nodata)),
                                    resolve(DEFAULT_SPEC, hr_sample, ~nodata_mask(hr_sample, self.nodata)))
        return self._normalisations

    def read(self, x: int, y: int, side: int) -> tuple[np.ndarray, np.ndarray, bool]:
        """(LR [C, side, side], HR [H, H], usable) at LR pixel (x, y), both normalised; H is scale * side, one
        less for an HR grid offset by half a pixel. Not usable: nodata in either, or more than
        MAX_BRIGHT_SHARE cloud-bright LR pixels."""
        lr_ds, hr_ds = self._open()
        lr_norm, hr_norm = self.normalisations()
        hr_side = self.scale * side - (1 if self.offset else 0)
        raw_lr = lr_ds.ReadAsArray(x, y, side, side).reshape(lr_ds.RasterCount, side, side)
        raw_hr = hr_ds.GetRasterBand(1).ReadAsArray(self.scale * x, self.scale * y, hr_side, hr_side)
        lr = lr_norm.apply(raw_lr)
        usable = not (nodata_mask(raw_lr, self.nodata).any() or nodata_mask(raw_hr[None], self.nodata).any()
                      or (lr.min(axis=0) > BRIGHT_LEVEL).mean() > MAX_BRIGHT_SHARE)
        return lr, hr_norm.apply(raw_hr[None])[0], usable


def align_to_input(hr: np.ndarray, lr: np.ndarray, scale: int) -> np.ndarray:
    """`hr` [H, W] under the gain and offset that make its clean reduction to the LR grid match `lr` [h, w]
    best (least squares): the finer band in the coarse band's radiometry, so a model learns resolution, not
    the two bands' spectral difference."""
    reduced = bicubic_downsample(torch.from_numpy(np.ascontiguousarray(hr, dtype=np.float32))[None, None],
                                 scale)[0, 0].numpy().astype(np.float64).ravel()
    design = np.stack([reduced, np.ones_like(reduced)], axis=1)
    (gain, offset), *_ = np.linalg.lstsq(design, lr.astype(np.float64).ravel(), rcond=None)
    return (gain * hr + offset).astype(np.float32)


class PairCrops:
    """Training items cut from the train blocks of the manifest's learnable pairs (one LR band, HR on its
    grid) of one scale: the LR band and the aligned HR band, each replicated to the model's three channels,
    clipped to [0, 1], augmented like scene crops."""

    def __init__(self, manifest: Path, scale: int, crop: int, role: str = "train",
                 exclude_sensors: Sequence[str] = ()):
        if crop % scale:
            raise ValueError(f"crop {crop} is not a multiple of the scale {scale}")
        root = Path(manifest).parent
        files = [PairFiles(entry, root) for entry in pair_entries(manifest)]
        self.side, self.scale = crop // scale, scale
        self.choices = [(pair, block) for pair in files
                        if pair.scale == scale and not pair.offset and pair.sensor not in exclude_sensors
                        and pair.lr_bands == 1
                        for block in pair.blocks(role) if block.width >= self.side and block.height >= self.side]
        if not self.choices:
            raise ValueError(f"no one-band x{scale} pair of {manifest} has a {role} block holding a {crop} px crop")
        areas = np.array([block.width * block.height for _, block in self.choices], dtype=np.float64)
        self.weights = areas / areas.sum()

    def item(self, rng: np.random.Generator, augmented: bool) -> dict:
        """One item drawn with `rng`: a pair and block by area, then a position; unusable draws are redrawn."""
        for _ in range(MAX_DRAWS):
            pair, block = self.choices[rng.choice(len(self.choices), p=self.weights)]
            x = block.x + int(rng.integers(block.width - self.side + 1))
            y = block.y + int(rng.integers(block.height - self.side + 1))
            lr, hr, usable = pair.read(x, y, self.side)
            if usable:
                break
        lr3 = np.repeat(lr, 3, axis=0)
        hr3 = np.repeat(align_to_input(hr, lr[0], self.scale)[None], 3, axis=0)
        if augmented:
            lr3, hr3 = (np.ascontiguousarray(values) for values in augment_together([lr3, hr3], rng))
        return {"hr": torch.from_numpy(np.clip(hr3, 0.0, 1.0).astype(np.float32)),
                "lr": torch.from_numpy(np.clip(lr3, 0.0, 1.0).astype(np.float32)),
                "sensor": pair.sensor, "scene": pair.name, "x": x, "y": y, "degraded": False, "lr_kind": REAL_PAIR}

