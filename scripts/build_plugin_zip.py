"""Build the installable QGIS plugin zip: one top folder `slimdiffsr_qgis/` with the plugin, icons and backend wheel.

    python scripts/build_plugin_zip.py --out dist/

The zip holds the plugin's Python files and metadata.txt, the LICENSE, the
icons under resources/icons/, and under wheels/ a wheel of this repository
(`pip wheel --no-deps .`), which carries the backend and the shipped default
weights. First-run set-up installs that wheel into the backend's venv, so
nothing (and no model) is downloaded except PyTorch.
"""

from __future__ import annotations

import argparse
import configparser
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PLUGIN = "slimdiffsr_qgis"
# What `pip wheel` needs from the repository to build the package.
WHEEL_SOURCES = ("pyproject.toml", "README.md", "LICENSE", "backend", "training", PLUGIN, "resources")
SKIPPED = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "*.aux.xml")


def plugin_version() -> str:
    """The version in metadata.txt, which names the zip."""
    metadata = configparser.ConfigParser()
    metadata.read(REPO / PLUGIN / "metadata.txt", encoding="utf-8")
    return metadata["general"]["version"]


def build_wheel(work: Path) -> Path:
    """A wheel of this repository, built from a clean copy so stale build folders cannot leak into it."""
    source = work / "source"
    source.mkdir()
    for name in WHEEL_SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=SKIPPED)
        elif path.is_file():
            shutil.copy2(path, source / name)
    wheels = work / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "-q", "-w", str(wheels), str(source)], check=True)
    (wheel,) = wheels.glob("slimdiffsr-*.whl")
    return wheel


def stage_plugin(work: Path, wheel: Path) -> Path:
    """The plugin folder exactly as it goes into the zip."""
    folder = work / "stage" / PLUGIN
    shutil.copytree(REPO / PLUGIN, folder, ignore=SKIPPED)
    shutil.copy2(REPO / "LICENSE", folder / "LICENSE")
    shutil.copytree(REPO / "resources" / "icons", folder / "resources" / "icons")
    (folder / "wheels").mkdir()
    shutil.copy2(wheel, folder / "wheels" / wheel.name)
    return folder


def write_zip(folder: Path, target: Path) -> None:
    """Zip `folder` so that its name is the single top folder of the archive."""
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, Path(PLUGIN) / path.relative_to(folder))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="dist", help="folder for the zip (default: dist/)")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{PLUGIN}-{plugin_version()}.zip"
    with tempfile.TemporaryDirectory(prefix="slimdiffsr-zip-") as temp:
        work = Path(temp)
        write_zip(stage_plugin(work, build_wheel(work)), target)
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
