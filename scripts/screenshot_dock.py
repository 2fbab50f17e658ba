"""Screenshot of the SlimDiffSR dock in the real QGIS desktop, with an input and its result on the map.

    python scripts/screenshot_dock.py [--out docs/dock.png] [--weights W.safetensors]

Needs Debian's `qgis` desktop package and `xvfb` (apt-get install -y qgis xvfb).
It makes a throw-away QGIS profile with this checkout's plugin enabled, starts
QGIS under Xvfb, and (through QGIS's --code hook, which calls `inside_qgis`
below) loads the sample Sentinel-2 raster, presses Super-resolve in the dock for
the middle of the map, zooms out so input and result show side by side, and
saves the main window as a PNG. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "resources" / "sample" / "sentinel2_l1c_rgb.tif"
TIME_LIMIT_MS = 300_000


def write_profile(profiles: Path) -> None:
    """A QGIS profile with the checkout's plugin enabled and no first-start dialogs."""
    profile = profiles / "profiles" / "default"
    plugins = profile / "python" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "slimdiffsr_qgis").symlink_to(REPO / "slimdiffsr_qgis")
    settings = profile / "QGIS" / "QGIS3.ini"
    settings.parent.mkdir(parents=True)
    settings.write_text("[PythonPlugins]\nslimdiffsr_qgis=true\n\n"
                        "[qgis]\ncheckVersion=false\nshowTips=false\nallowVersionCheck=false\n"
                        "newProjectDefault=false\n\n"
                        "[core]\nlayer-tree-legend\\showRasterPreview=false\n", encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "dock.png"))
    parser.add_argument("--weights", default="", help="safetensors weights (default: the shipped ones)")
    parser.add_argument("--size", default="1600x1000", help="screen size WIDTHxHEIGHT")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="slimdiffsr-shot-") as temp:
        work = Path(temp)
        write_profile(work)
        # A copy, so the statistics QGIS writes beside a raster (.aux.xml) stay out of the repository.
        sample = work / SAMPLE.name
        shutil.copy2(SAMPLE, sample)
        config = {"out": str(Path(args.out).resolve()), "weights": args.weights, "sample": str(sample),
                  "results": str(work / "results"), "size": [int(v) for v in args.size.split("x")]}
        code = work / "startup.py"
        code.write_text(f"import sys\nsys.path.insert(0, {str(REPO / 'scripts')!r})\nimport screenshot_dock\n"
                        f"screenshot_dock.inside_qgis({json.dumps(config)!r})\n", encoding="utf-8")
        env = {key: value for key, value in os.environ.items() if key != "QT_QPA_PLATFORM"}
        command = ["xvfb-run", "-a", "-s", f"-screen 0 {args.size}x24", "qgis", "--profiles-path", str(work),
                   "--nologo", "--noversioncheck", "--code", str(code)]
        done = subprocess.run(command, env=env, timeout=TIME_LIMIT_MS / 1000 + 60)
    if done.returncode != 0 or not Path(args.out).is_file():
        print(f"screenshot failed (QGIS exit code {done.returncode})", file=sys.stderr)
        return 1
    print(args.out)
    return 0


def inside_qgis(config_json: str) -> None:
    """Runs inside QGIS (via --code): drive the dock, wait for the result, save the window, quit."""
    from qgis.core import QgsProject, QgsRasterLayer, QgsRectangle
    from qgis.PyQt.QtCore import QTimer
    from qgis.utils import iface, plugins

    config = json.loads(config_json)
    canvas = iface.mapCanvas()
    window = iface.mainWindow()
    state: dict = {}

    def after_render(then, delay_ms: int = 1500) -> None:
        """Call `then` once the canvas has finished drawing (plus a moment for the widgets)."""
        def rendered() -> None:
            canvas.mapCanvasRefreshed.disconnect(rendered)
            QTimer.singleShot(delay_ms, then)
        canvas.mapCanvasRefreshed.connect(rendered)
        canvas.refresh()

    def finish(code: int) -> None:
        window.grab().save(config["out"])
        QgsProject.instance().setDirty(False)
        QgsProject.instance().clear()
        QTimer.singleShot(500, lambda: sys.exit(code) if code else iface.actionExit().trigger())

    def start() -> None:
        window.setGeometry(0, 0, *config["size"])
        layer = QgsRasterLayer(config["sample"], "Sentinel-2 L1C 10 m")
        QgsProject.instance().addMapLayer(layer)
        state["layer"] = layer
        QTimer.singleShot(2000, zoom_to_middle)

    def zoom_to_middle() -> None:
        full = state["layer"].extent()
        middle = QgsRectangle(full.center().x() - full.width() / 5, full.center().y() - full.height() / 5,
                              full.center().x() + full.width() / 5, full.center().y() + full.height() / 5)
        canvas.setExtent(middle)
        after_render(press_button)

    def press_button() -> None:
        dock = plugins["slimdiffsr_qgis"].dock
        dock.show()
        dock.raise_()
        dock.layer_combo.setLayer(state["layer"])
        dock.set_extent_source("canvas")
        dock.weights_widget.setFilePath(config["weights"])
        dock.device_combo.setCurrentText("cpu")
        dock.folder_widget.setFilePath(config["results"])
        state["dock"] = dock
        dock.run_button.click()
        poll()

    def poll() -> None:
        dock = state["dock"]
        if dock.task is not None:
            QTimer.singleShot(300, poll)
            return
        if dock.last_layer is None:
            print(f"the run failed: {dock.status_label.text()}", file=sys.stderr)
            finish(1)
            return
        iface.setActiveLayer(dock.last_layer)
        context = state["layer"].extent()
        context.scale(0.62)
        canvas.setExtent(context)
        after_render(lambda: finish(0), 2500)

    QTimer.singleShot(3000, start)
    QTimer.singleShot(TIME_LIMIT_MS, lambda: finish(2))


if __name__ == "__main__":
    sys.exit(main())
