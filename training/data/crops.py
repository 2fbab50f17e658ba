"""Training and evaluation samples from real scenes: seeded HR crops of the chosen blocks and their LR inputs.

A scene is any GDAL-readable image (GeoTIFF, PNG, ...; uint8 or uint16; any
band count with a 1-based band mapping) with blocks per role, from the data
manifest (`training.data.sources`) or a plain folder. Values are mapped to
[0, 1] with `backend.normalisation`, resolved once per scene from a decimated
read, the same rule the engine applies to a user's window, so the model sees
at training time what it sees at inference time; `CropDataset.normalisation_spec`
is the spec to record in the weights' metadata. HR crops are clipped to [0, 1],
the range the model can produce.

Crops are drawn sensor first (sensors mixed equally), then scene and block by
area, then position; crops with nodata or with too many cloud-bright pixels are
redrawn. Item `i` depends only on (seed, i), so a run is reproducible whatever
the number of data-loader workers.

Options for remote-sensing recipes, all off by default so existing recipes
replay item for item: `exclude_sensors` leaves sensor families out (the
leave-one-family-out protocol: train without F, score on F with
`benchmarks.quality --sensors F`); `single_band_fraction` draws that share of
crops from the manifest's single-band files (every Sentinel-2 and Landsat 8
band), replicated to the model's three channels as the engine feeds every
non-RGB band; `degradation` picks the chain for degraded items: Real-ESRGAN's
(`realesrgan`), the sensor chain of `training.data.sensor_degradation` (`sensor`),
or either with equal chance (`mix`). `CropSettings` holds the defaults of
these and of the other sampling keys, shared with a config's `data` section.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Protocol, Sequence

import numpy as np
import torch
from osgeo import gdal

from backend.normalisation import Normalisation, resolve
from backend.raster import STRETCH_SAMPLE_SIDE, map_bands

from training.data.scene_split import ROLES, Block, whole_scene
from training.data.realesrgan_degradation import DegradationSettings, bicubic_downsample, degrade
from training.data.sensor_degradation import SensorSettings, sensor_degrade

gdal.UseExceptions()

DEFAULT_SPEC = "percentile:2,98"
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
# A pixel is "cloud-bright" when its darkest channel is above this, after the scene's stretch.
BRIGHT_LEVEL = 0.9
# Crops with a larger share of cloud-bright pixels are redrawn.
MAX_BRIGHT_SHARE = 0.1
MAX_DRAWS = 30
# How degraded items get their LR: one chain, or either with equal chance.
DEGRADATIONS = ("realesrgan", "sensor", "mix")
# The LR kinds an item can carry ("degraded" items are one of the last two).
LR_KINDS = ("clean", "realesrgan", "sensor")


@dataclass(frozen=True)
class SceneRef:
    """A scene file, its band mapping and nodata, and its blocks per role (pixel rectangles)."""

    name: str
    path: Path
    sensor: str
    bands: tuple[int, int, int] = (1, 2, 3)
    nodata: Optional[float] = None
    blocks: dict[str, list[Block]] = field(default_factory=dict)


def scenes_from_manifest(manifest: Path, sensors: Optional[Sequence[str]] = None) -> list[SceneRef]:
    """The 3-band scenes listed in a data manifest (paths relative to the manifest's folder); with `sensors`,
    only those families' (an unknown name is an error, so a typo cannot empty a benchmark silently)."""
    return _entries(manifest, "scenes", (1, 2, 3), sensors)


def band_scenes_from_manifest(manifest: Path, sensors: Optional[Sequence[str]] = None) -> list[SceneRef]:
    """The manifest's single-band files (`bands`), each read as its band replicated to three channels."""
    return _entries(manifest, "bands", (1, 1, 1), sensors)


def _entries(manifest: Path, key: str, bands: tuple[int, int, int],
             sensors: Optional[Sequence[str]]) -> list[SceneRef]:
    content = json.loads(Path(manifest).read_text())
    entries = content.get(key, [])
    if sensors is not None:
        known = {entry["sensor"] for entry in content["scenes"]} | {entry["sensor"] for entry in entries}
        unknown = sorted(set(sensors) - known)
        if unknown:
            raise ValueError(f"sensor(s) {', '.join(unknown)} are not in {manifest}; it has {', '.join(sorted(known))}")
        entries = [entry for entry in entries if entry["sensor"] in sensors]
    scenes = []
    for entry in entries:
        blocks = {role: [Block(*b) for b in entry["blocks"].get(role, [])] for role in ROLES}
        scenes.append(SceneRef(entry["name"], Path(manifest).parent / entry["file"], entry["sensor"], bands,
                               nodata=entry.get("nodata"), blocks=blocks))
    return scenes


def scenes_from_folder(folder: Path, bands: Optional[Sequence[int]] = None, role: str = "train",
                       sensor: Optional[str] = None) -> list[SceneRef]:
    """Every image in `folder` (sorted), each whole in one role; sensor defaults to the folder's name."""
    scenes = []
    for path in sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        ds = gdal.Open(str(path))
        mapped = map_bands(ds.RasterCount, tuple(bands) if bands else None, str(path))
        nodata = ds.GetRasterBand(mapped[0]).GetNoDataValue()
        scenes.append(SceneRef(path.stem, path, sensor or Path(folder).name, mapped, nodata,
                               whole_scene(ds.RasterXSize, ds.RasterYSize, role)))
        ds = None
    if not scenes:
        raise ValueError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return scenes


def read_decimated(ds: gdal.Dataset, bands: Sequence[int], side: int = STRETCH_SAMPLE_SIDE) -> np.ndarray:
    """[C, h, w] of the whole raster read at most `side` pixels a side (GDAL nearest decimation)."""
    factor = max(1.0, max(ds.RasterXSize, ds.RasterYSize) / side)
    width, height = max(1, int(ds.RasterXSize / factor)), max(1, int(ds.RasterYSize / factor))
    return np.stack([ds.GetRasterBand(b).ReadAsArray(buf_xsize=width, buf_ysize=height) for b in bands])


def nodata_mask(values: np.ndarray, nodata: Optional[float]) -> np.ndarray:
    """[H, W] True where any channel equals the nodata value."""
    if nodata is None:
        return np.zeros(values.shape[1:], bool)
    return (values == nodata).any(axis=0)


def invalid_mask(values: np.ndarray, nodata: Optional[float], spec: str = DEFAULT_SPEC) -> np.ndarray:
    """[H, W] True for nodata or cloud-bright pixels of raw [C, H, W] values, stretched by `spec` over them."""
    missing = nodata_mask(values, nodata)
    stretched = resolve(spec, values, ~missing).apply(values)
    return missing | (stretched.min(axis=0) > BRIGHT_LEVEL)


class SceneReader:
    """Reads windows of scenes as normalised float arrays; opens each file once per process."""

    def __init__(self, scenes: Sequence[SceneRef], spec: str = DEFAULT_SPEC):
        self.scenes = list(scenes)
        self.spec = spec
        self._datasets: dict[str, gdal.Dataset] = {}
        self._normalisations: dict[str, Normalisation] = {}

    def __getstate__(self) -> dict:
        # GDAL datasets cannot be pickled into data-loader workers; each worker reopens.
        return {**self.__dict__, "_datasets": {}}

    def dataset(self, scene: SceneRef) -> gdal.Dataset:
        if scene.name not in self._datasets:
            self._datasets[scene.name] = gdal.Open(str(scene.path))
        return self._datasets[scene.name]

    def normalisation(self, scene: SceneRef) -> Normalisation:
        """The scene's normalisation, resolved once from a decimated read of its valid pixels."""
        if scene.name not in self._normalisations:
            sample = read_decimated(self.dataset(scene), scene.bands)
            self._normalisations[scene.name] = resolve(self.spec, sample, ~nodata_mask(sample, scene.nodata))
        return self._normalisations[scene.name]

    def read(self, scene: SceneRef, x: int, y: int, width: int,
             height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Normalised [3, h, w] float32 values clipped to [0, 1], and [h, w] nodata and cloud-bright masks."""
        ds = self.dataset(scene)
        raw = np.stack([ds.GetRasterBand(b).ReadAsArray(x, y, width, height) for b in scene.bands])
        missing = nodata_mask(raw, scene.nodata)
        values = self.normalisation(scene).apply(raw)
        bright = values.min(axis=0) > BRIGHT_LEVEL
        return np.clip(values, 0.0, 1.0), missing, bright


def make_lr(hr: torch.Tensor, scale: int, kind: str, generator: torch.Generator,
            settings: DegradationSettings = DegradationSettings(),
            sensor: SensorSettings = SensorSettings()) -> torch.Tensor:
    """LR for a [B, 3, H, W] HR batch of one of LR_KINDS: clean bicubic downsampling, the Real-ESRGAN
    degradation, or the sensor chain."""
    if kind == "realesrgan":
        return degrade(hr, scale, generator, settings)
    if kind == "sensor":
        return sensor_degrade(hr, scale, generator, sensor)
    if kind == "clean":
        return bicubic_downsample(hr, scale).clamp(0.0, 1.0)
    raise ValueError(f"unknown LR kind {kind!r}; use one of {', '.join(LR_KINDS)}")


class PairSource(Protocol):
    """Where real-pair items come from (`training.data.pairs.PairCrops`)."""

    def item(self, rng: np.random.Generator, augmented: bool) -> dict: ...


@dataclass(frozen=True)
class CropSettings:
    """How training crops are drawn: `CropDataset`'s defaults and the sampling keys of a config's data section.

    The remote-sensing options (degradation, single_band_fraction,
    exclude_sensors) default to off, so recipes that predate them replay item
    for item.
    """

    crop: int = 128
    length: int = 10_000
    seed: int = 0
    degraded_fraction: float = 0.0
    degradation: str = "realesrgan"
    """The chain of degraded items, one of DEGRADATIONS."""
    single_band_fraction: float = 0.0
    exclude_sensors: tuple[str, ...] = ()
    pair_fraction: float = 0.0
    """Share of items cut from the manifest's real pairs (`training.data.pairs.PairCrops`) instead of scenes."""

    def __post_init__(self) -> None:
        if self.degradation not in DEGRADATIONS:
            raise ValueError(f"unknown degradation {self.degradation!r}; use one of {', '.join(DEGRADATIONS)}")
        for name in ("degraded_fraction", "single_band_fraction", "pair_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} {getattr(self, name)} is not between 0 and 1")
        if self.crop < 1 or self.length < 1:
            raise ValueError(f"crop and length must be at least 1, not {self.crop} and {self.length}")


def dataset_options(data: CropSettings | dict, manifest: Optional[Path] = None) -> dict:
    """CropDataset keyword arguments for the remote-sensing options of `data` (CropSettings, or a mapping of
    its keys: exclude_sensors, single_band_fraction, degradation).

    `manifest` holds the single-band files `single_band_fraction` draws from.
    """
    settings = data if isinstance(data, CropSettings) else CropSettings(**data)
    if settings.single_band_fraction > 0 and manifest is None:
        raise ValueError("data.single_band_fraction needs data.manifest (its single-band files); "
                         "run python -m training.data.sources prepare")
    bands = band_scenes_from_manifest(manifest) if settings.single_band_fraction > 0 else []
    return {"exclude_sensors": tuple(settings.exclude_sensors), "single_band_fraction": settings.single_band_fraction,
            "band_scenes": bands, "degradation_kind": settings.degradation}


class CropDataset(torch.utils.data.Dataset):
    """Random, augmented HR crops of one role's blocks with their LR; item i is fixed by (seed, i).

    Items are dicts: "hr" [3, crop, crop] and "lr" [3, crop/scale, crop/scale]
    float tensors in [0, 1], "sensor" and "scene" names, the crop's scene pixel
    offset "x", "y" (before augmentation), "degraded" (bool) and "lr_kind" (one of LR_KINDS).
    degraded_fraction: share of items whose LR is degraded instead of clean
    bicubic downsampling; degradation_kind: which chain degrades them (DEGRADATIONS).
    exclude_sensors: families left out of `scenes` and `band_scenes`.
    single_band_fraction: share of items drawn from `band_scenes` (single-band
    files read as three equal channels) instead of `scenes`.
    pair_fraction: share of items taken from `pairs` (real cross-resolution
    pairs, whose LR the sensor made: lr_kind REAL_PAIR) before any other draw.
    """

    def __init__(self, scenes: Sequence[SceneRef], *, crop: int = CropSettings.crop, scale: int = 4,
                 role: str = "train", length: int = CropSettings.length, seed: int = CropSettings.seed,
                 spec: str = DEFAULT_SPEC, degraded_fraction: float = CropSettings.degraded_fraction,
                 degradation: DegradationSettings = DegradationSettings(), augment: bool = True,
                 degradation_kind: str = CropSettings.degradation, sensor: SensorSettings = SensorSettings(),
                 exclude_sensors: Sequence[str] = CropSettings.exclude_sensors, band_scenes: Sequence[SceneRef] = (),
                 single_band_fraction: float = CropSettings.single_band_fraction,
                 pair_fraction: float = CropSettings.pair_fraction, pairs: Optional[PairSource] = None):
        CropSettings(crop, length, seed, degraded_fraction, degradation_kind, single_band_fraction,
                     tuple(exclude_sensors), pair_fraction)  # the same checks as a config's data section
        if pair_fraction > 0 and pairs is None:
            raise ValueError("pair_fraction needs pairs to draw from (training.data.pairs.PairCrops)")
        if crop % scale:
            raise ValueError(f"crop {crop} is not a multiple of the scale {scale}")
        known = {scene.sensor for scene in [*scenes, *band_scenes]}
        unknown = sorted(set(exclude_sensors) - known)
        if unknown:
            raise ValueError(f"exclude_sensors names {', '.join(unknown)}, which the data does not hold "
                             f"(it has {', '.join(sorted(known))})")
        scenes = [scene for scene in scenes if scene.sensor not in exclude_sensors]
        band_scenes = [scene for scene in band_scenes if scene.sensor not in exclude_sensors]
        self.reader = SceneReader([*scenes, *band_scenes], spec)
        self.crop, self.scale, self.length, self.seed = crop, scale, length, seed
        self.degraded_fraction, self.degradation, self.augment = degraded_fraction, degradation, augment
        self.degradation_kind, self.sensor_settings = degradation_kind, sensor
        self.single_band_fraction = single_band_fraction
        self.pair_fraction, self.pairs = pair_fraction, pairs
        self.choices = _choices(scenes, role, crop)
        self.band_choices = _choices(band_scenes, role, crop)
        if not self.choices or (single_band_fraction > 0 and not self.band_choices):
            which = "single-band file" if self.choices else "scene"
            raise ValueError(f"no {role} block of the given {which}s holds a {crop} px crop")

    @property
    def normalisation_spec(self) -> str:
        """The spec string to store as the weights' meta["normalisation"]."""
        return self.reader.spec

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, index])
        # Drawn only when asked for, so the items of recipes without pairs are unchanged.
        if self.pair_fraction > 0 and rng.random() < self.pair_fraction:
            return self.pairs.item(rng, self.augment)
        best = None
        for _ in range(MAX_DRAWS):
            scene, x, y = self._draw(rng)
            values, missing, bright = self.reader.read(scene, x, y, self.crop, self.crop)
            badness = float(missing.any()) + bright.mean()
            if best is None or badness < best[0]:
                best = (badness, scene, x, y, values)
            if not missing.any() and bright.mean() <= MAX_BRIGHT_SHARE:
                break
        _, scene, x, y, values = best
        if self.augment:
            values = augment(values, rng)
        hr = torch.from_numpy(np.ascontiguousarray(values))
        degraded = bool(rng.random() < self.degraded_fraction)
        generator = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
        kind = self._lr_kind(degraded, rng)
        lr = make_lr(hr[None], self.scale, kind, generator, self.degradation, self.sensor_settings)[0]
        return {"hr": hr, "lr": lr, "sensor": scene.sensor, "scene": scene.name, "x": x, "y": y,
                "degraded": degraded, "lr_kind": kind}

    def _lr_kind(self, degraded: bool, rng: np.random.Generator) -> str:
        """The item's LR kind; only `mix` draws from `rng` (after every earlier draw), so the other settings
        keep the item streams of recipes that predate it."""
        if not degraded:
            return "clean"
        if self.degradation_kind == "mix":
            return "sensor" if rng.random() < 0.5 else "realesrgan"
        return self.degradation_kind

    def _draw(self, rng: np.random.Generator) -> tuple[SceneRef, int, int]:
        # The single-band draw is made only when asked for, so a default run's random stream is unchanged.
        single = self.single_band_fraction > 0 and rng.random() < self.single_band_fraction
        choices = self.band_choices if single else self.choices
        sensors = sorted(choices)
        sensor = sensors[rng.integers(len(sensors))]
        options = choices[sensor]
        weights = np.array([b.width * b.height for _, b in options], dtype=np.float64)
        scene, block = options[rng.choice(len(options), p=weights / weights.sum())]
        x = block.x + int(rng.integers(block.width - self.crop + 1))
        y = block.y + int(rng.integers(block.height - self.crop + 1))
        return scene, x, y


def _choices(scenes: Sequence[SceneRef], role: str, crop: int) -> dict[str, list[tuple[SceneRef, Block]]]:
    """Per sensor, the (scene, block) pairs of `role` that hold at least one crop."""
    choices: dict[str, list[tuple[SceneRef, Block]]] = {}
    for scene in scenes:
        for block in scene.blocks.get(role, []):
            if block.width >= crop and block.height >= crop:
                choices.setdefault(scene.sensor, []).append((scene, block))
    return choices


def augment(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One of the 8 flips/90-degree rotations of a [C, H, W] crop, drawn from `rng`."""
    return augment_together([values], rng)[0]


def augment_together(arrays: Sequence[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """The same flip/90-degree rotation, drawn once from `rng`, of every [C, H, W] array (an LR and its HR)."""
    turns, flip = int(rng.integers(4)), rng.random() < 0.5
    turned = [np.rot90(values, k=turns, axes=(1, 2)) for values in arrays]
    return [values[:, :, ::-1] if flip else values for values in turned]


@dataclass(frozen=True)
class EvaluationTile:
    """One HR evaluation tile and where it comes from."""

    scene: str
    sensor: str
    x: int
    y: int
    hr: np.ndarray  # [3, tile, tile] float32 in [0, 1]


def evaluation_tiles(scenes: Sequence[SceneRef], role: str = "validation", tile: int = 128,
                     spec: str = DEFAULT_SPEC) -> Iterator[EvaluationTile]:
    """Non-overlapping tiles of every `role` block, in scene and raster order, without augmentation.

    Tiles with nodata or more than MAX_BRIGHT_SHARE cloud-bright pixels are
    skipped, the same rule as for training crops. Deterministic: no RNG.
    """
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
    reader = SceneReader(scenes, spec)
    for scene in scenes:
        for block in scene.blocks.get(role, []):
            for y in range(block.y, block.y + block.height - tile + 1, tile):
                for x in range(block.x, block.x + block.width - tile + 1, tile):
                    values, missing, bright = reader.read(scene, x, y, tile, tile)
                    if missing.any() or bright.mean() > MAX_BRIGHT_SHARE:
                        continue
                    yield EvaluationTile(scene.name, scene.sensor, x, y, values)
