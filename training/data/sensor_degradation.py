"""Make LR training inputs the way an Earth-observation sensor does: optics PSF, detector, noise, JPEG2000.

Real-ESRGAN's chain (`training.data.realesrgan_degradation`) models web photographs: JPEG
blocks, sinc ringing, resizes. A spaceborne imager degrades differently, and
this module models that chain for [B, C, H, W] batches in [0, 1]:

1. PSF: an isotropic Gaussian whose system MTF (Gaussian optics x the
   detector's box footprint of `scale` HR pixels) at the LR Nyquist frequency
   is drawn uniformly from `mtf_nyquist` (0.1-0.4: Sentinel-2's and Landsat
   8's specified MTF at Nyquist lies in this band). The Gaussian's sigma is
   solved for, by bisection on the discrete kernels' response, so the drawn
   MTF is the one the LR gets, not an approximation of it.
2. Detector: each LR pixel is the mean of its `scale` x `scale` HR footprint
   (area reduction, centre-aligned like the clean bicubic LR).
3. Noise: signal-dependent Poisson-Gaussian, variance = shot * signal +
   read², in the Gaussian approximation of the Poisson term (Foi et al.,
   "Practical Poissonian-Gaussian noise modeling", 2008), independent per band
   (a multispectral sensor has a detector per band); shot and read are drawn
   log-uniformly.
4. Quantisation to `bits` (12, as Sentinel-2 L1C digitises) and lossy
   JPEG2000, the codec Sentinel-2 L1C products are distributed in: GDAL's
   JP2OpenJPEG driver (irreversible 9/7 wavelet, each band coded on its own
   as in the L1C files, no colour transform) at a QUALITY drawn from
   `jpeg2000_quality` (GDAL's percentage of the uncompressed size).

Every random draw comes from the torch.Generator passed in, and the JPEG2000
coder is deterministic, so a seed gives the same LR on any machine.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from osgeo import gdal

from slimdiffsr_qgis.contract import BadInput

gdal.UseExceptions()

JPEG2000_DRIVER = "JP2OpenJPEG"
_names = itertools.count()


@dataclass(frozen=True)
class SensorSettings:
    """Ranges of the sensor chain; values are in the [0, 1] units of the normalised HR.

    mtf_nyquist: system MTF at the LR Nyquist frequency. shot: variance per
    unit signal of the shot noise. read: standard deviation of the
    signal-independent noise. bits: quantisation before coding.
    jpeg2000_probability: chance a sample is JPEG2000-coded; jpeg2000_quality:
    GDAL JP2OpenJPEG QUALITY range (percent of the uncompressed size).
    """

    mtf_nyquist: tuple[float, float] = (0.1, 0.4)
    shot: tuple[float, float] = (1e-5, 1e-3)
    read: tuple[float, float] = (5e-4, 1e-2)
    bits: int = 12
    jpeg2000_probability: float = 1.0
    jpeg2000_quality: tuple[float, float] = (5.0, 40.0)


def sensor_degrade(hr: torch.Tensor, scale: int, generator: torch.Generator,
                   settings: SensorSettings = SensorSettings()) -> torch.Tensor:
    """The sensor chain on a [B, C, H, W] batch in [0, 1] -> [B, C, H/scale, W/scale], each sample its own draws."""
    height, width = hr.shape[-2:]
    if height % scale or width % scale:
        raise ValueError(f"HR size {height}x{width} is not a multiple of the scale {scale}")
    out = []
    for image in hr:
        mtf = _uniform(*settings.mtf_nyquist, generator)
        lr = F.avg_pool2d(blur(image[None], psf_kernel(mtf, scale)), scale)[0]
        lr = add_sensor_noise(lr, _log_uniform(*settings.shot, generator), _log_uniform(*settings.read, generator),
                              generator)
        levels = 2 ** settings.bits - 1
        lr = torch.round(lr.clamp(0.0, 1.0) * levels) / levels
        if _uniform(0.0, 1.0, generator) < settings.jpeg2000_probability:
            lr = jpeg2000(lr, _uniform(*settings.jpeg2000_quality, generator), settings.bits)
        out.append(lr)
    return torch.stack(out)


def psf_kernel(mtf: float, scale: int) -> torch.Tensor:
    """The 1-D Gaussian (float64, sums to 1) whose product with a `scale`-pixel box has MTF `mtf` at the LR Nyquist."""
    if not 0.0 < mtf < box_mtf(scale):
        raise ValueError(f"an MTF of {mtf} at Nyquist is not reachable with a {scale}-pixel detector "
                         f"(its footprint alone gives {box_mtf(scale):.3f})")
    low, high = 1e-3, 4.0 * scale
    for _ in range(60):
        sigma = 0.5 * (low + high)
        if system_mtf(gaussian_1d(sigma), scale) > mtf:
            low = sigma
        else:
            high = sigma
    return gaussian_1d(0.5 * (low + high))


def gaussian_1d(sigma: float) -> torch.Tensor:
    """A sampled Gaussian of `sigma` HR pixels over ±4 sigma (at least ±1 pixel), normalised."""
    radius = max(1, math.ceil(4.0 * sigma))
    axis = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (axis / sigma) ** 2)
    return kernel / kernel.sum()


def system_mtf(kernel: torch.Tensor, scale: int) -> float:
    """|DTFT| at the LR Nyquist (1 / (2 scale) cycles per HR pixel) of `kernel` times the detector's box."""
    frequency = 1.0 / (2 * scale)
    axis = torch.arange(kernel.numel(), dtype=torch.float64) - kernel.numel() // 2
    response = torch.sum(kernel * torch.exp(-2j * math.pi * frequency * axis))
    return float(abs(response)) * box_mtf(scale)


def box_mtf(scale: int) -> float:
    """MTF at the LR Nyquist of averaging `scale` HR pixels: |sin(pi s f) / (s sin(pi f))| at f = 1/(2s)."""
    return 1.0 / (scale * math.sin(math.pi / (2 * scale)))


def blur(images: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] convolved separably with the 1-D `kernel` along both axes, reflect-padded (replicate when small)."""
    channels = images.shape[1]
    pad = kernel.numel() // 2
    mode = "reflect" if pad < min(images.shape[-2:]) else "replicate"
    weight = kernel.to(images.dtype)
    out = F.pad(images, (pad, pad, 0, 0), mode=mode)
    out = F.conv2d(out, weight.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    out = F.pad(out, (0, 0, pad, pad), mode=mode)
    return F.conv2d(out, weight.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)


def add_sensor_noise(image: torch.Tensor, shot: float, read: float, generator: torch.Generator) -> torch.Tensor:
    """Poisson-Gaussian noise: std sqrt(shot * signal + read²) per pixel and band (signal taken at >= 0)."""
    std = torch.sqrt(shot * image.clamp(min=0.0) + read ** 2)
    return image + std * torch.randn(image.shape, generator=generator, dtype=image.dtype)


def jpeg2000(image: torch.Tensor, quality: float, bits: int) -> torch.Tensor:
    """[C, h, w] in [0, 1] coded and decoded by GDAL's JPEG2000 driver at `quality`, as `bits`-bit integers."""
    driver = gdal.GetDriverByName(JPEG2000_DRIVER)
    if driver is None:
        raise BadInput(f"the sensor degradation needs GDAL's {JPEG2000_DRIVER} driver (lossy JPEG2000), which this "
                       "GDAL lacks; install a GDAL built with OpenJPEG or use data.degradation: realesrgan")
    levels = 2 ** bits - 1
    values = np.round(image.clamp(0, 1).numpy().astype(np.float64) * levels).astype(np.uint16)
    channels, height, width = values.shape
    source = gdal.GetDriverByName("MEM").Create("", width, height, channels, gdal.GDT_UInt16)
    for index, band in enumerate(values, start=1):
        source.GetRasterBand(index).WriteArray(band)
    path = f"/vsimem/sensor_degradation_{next(_names)}.j2k"
    resolutions = max(1, min(5, int(math.log2(max(1, min(height, width)))) - 2))
    coded = driver.CreateCopy(path, source, options=[f"QUALITY={quality:.3f}", "REVERSIBLE=NO", "YCC=NO",
                                                     f"NBITS={bits}", f"RESOLUTIONS={resolutions}", "CODEC=J2K"])
    coded = source = None
    try:
        decoded = gdal.Open(path)
        out = decoded.ReadAsArray().reshape(channels, height, width).astype(np.float32) / levels
        decoded = None
    finally:
        gdal.Unlink(path)
    return torch.from_numpy(out).to(image.dtype)


def _uniform(low: float, high: float, generator: torch.Generator) -> float:
    return float(low + (high - low) * torch.rand((), generator=generator, dtype=torch.float64))


def _log_uniform(low: float, high: float, generator: torch.Generator) -> float:
    return math.exp(_uniform(math.log(low), math.log(high), generator))
