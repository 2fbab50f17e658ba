"""A non-editable install carries the code, the console script and resources/ (sample, weights)."""

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(REPO)], check=True, timeout=300, capture_output=True)
    return next(out.glob("slimdiffsr-*.whl"))


def test_wheel_carries_every_package_and_the_resources(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("backend/engine.py", "backend/models/student.py", "training/__init__.py",
                     "slimdiffsr_qgis/__init__.py", "slimdiffsr_resources/sample/sentinel2_l1c_rgb.tif"):
        assert required in names, required
    shipped_weights = sorted(p.name for p in (REPO / "resources" / "weights").glob("*.safetensors"))
    for name in shipped_weights:
        assert f"slimdiffsr_resources/weights/{name}" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "slimdiffsr = backend.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_resources_are_found_after_a_non_editable_install(wheel, tmp_path):
    env_dir = tmp_path / "env"
    venv.create(env_dir, system_site_packages=False, with_pip=False)
    python = env_dir / "bin" / "python"
    site = next((env_dir / "lib").glob("python3*/site-packages"))
    zipfile.ZipFile(wheel).extractall(site)  # what pip does for a pure-Python wheel
    probe = ("from backend.resources import sample_raster_path, resources_dir; "
             "p = sample_raster_path(); assert p.is_file(), p; print(resources_dir())")
    result = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert str(site) in result.stdout, "resources must come from the installed package, not the checkout"
