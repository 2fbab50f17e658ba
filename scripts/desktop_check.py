"""Check the plugin in the real QGIS desktop as a user gets it, and take the README's screenshots.

    python scripts/desktop_check.py [--out-dir docs] [--weights W.safetensors]

Needs Debian's `qgis` desktop package and `xvfb` (`make desktop-check` installs them). It builds the
plugin zip, unpacks it into a fresh QGIS profile the way *Install from ZIP* does and enables it, points
the backend setting at this checkout's venv (first-run set-up would download PyTorch), starts QGIS under
Xvfb and, through QGIS's --code hook (which calls `inside_qgis` below):
1. loads the sample Sentinel-2 raster, presses Super-resolve in the dock for the middle of the map, and
   saves the main window as `dock.png` once the result is on the map;
2. runs `processing.runAndLoadResults("slimdiffsr:superresolve", ...)` on the same raster with SCALE 4 as
   an integer, as the Processing dialog does: the algorithm's post-processor gives the loaded result the
   input's renderer and a unique name, and `processing.png` shows it;
3. writes `desktop_check.json`: what each step produced (layer names, band count, renderer type, the
   dock's status line, errors), which the script checks before it exits 0.
Not part of `make test`: it needs the desktop package and a virtual screen.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "resources" / "sample" / "sentinel2_l1c_rgb.tif"
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
TIME_LIMIT_MS = 420_000


def build_zip(folder: Path) -> Path:
    """The plugin zip exactly as users install it."""
    subprocess.run([str(VENV_PYTHON), str(REPO / "scripts" / "build_plugin_zip.py"), "--out", str(folder)],
                   check=True, cwd=REPO)
    return next(folder.glob("slimdiffsr_qgis-*.zip"))


def write_profile(profiles: Path, plugin_zip: Path) -> None:
    """A fresh QGIS profile with the zip unpacked into its plugins folder, enabled, no first-start dialogs."""
    profile = profiles / "profiles" / "default"
    plugins = profile / "python" / "plugins"
    plugins.mkdir(parents=True)
    with zipfile.ZipFile(plugin_zip) as archive:
        archive.extractall(plugins)
    settings = profile / "QGIS" / "QGIS3.ini"
    settings.parent.mkdir(parents=True)
    settings.write_text("[PythonPlugins]\nslimdiffsr_qgis=true\n\n"
                        "[qgis]\ncheckVersion=false\nshowTips=false\nallowVersionCheck=false\n"
                        "newProjectDefault=false\n\n"
                        "[core]\nlayer-tree-legend\\showRasterPreview=false\n\n"
                        f"[slimdiffsr]\nbackend_python={VENV_PYTHON}\n", encoding="utf-8")


def check_report(report: dict) -> list[str]:
    """What is wrong with the run, as read from its report (empty when all is well)."""
    problems = []
    dock = report.get("dock", {})
    if not dock.get("layer"):
        problems.append(f"the dock made no layer: {dock.get('status', '?')}")
    elif dock.get("bands") != 3:
        problems.append(f"the dock's result has {dock.get('bands')} bands, not 3")
    processing = report.get("processing", {})
    if processing.get("error"):
        problems.append(f"processing.run failed: {processing['error']}")
    elif processing.get("bands") != 3:
        problems.append(f"the Processing result has {processing.get('bands')} bands, not 3")
    elif processing.get("renderer") != dock.get("renderer"):
        problems.append(f"the Processing result is drawn by {processing.get('renderer')}, the dock's by "
                        f"{dock.get('renderer')}: the input's style was not copied")
    if dock.get("layer") and "Consistency" not in dock.get("status", ""):
        problems.append("the dock's result line gives no consistency figures")
    for name in ("dock.png", "processing.png"):
        if name not in report.get("screenshots", []):
            problems.append(f"no screenshot {name}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=str(REPO / "docs"))
    parser.add_argument("--weights", default="", help="safetensors weights (default: the shipped ones)")
    parser.add_argument("--size", default="1600x1000", help="screen size WIDTHxHEIGHT")
    args = parser.parse_args()
    out_dir = Path(args.out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="slimdiffsr-desktop-") as temp:
        work = Path(temp)
        write_profile(work, build_zip(work / "dist"))
        # A copy, so the statistics QGIS writes beside a raster (.aux.xml) stay out of the repository.
        sample = work / SAMPLE.name
        shutil.copy2(SAMPLE, sample)
        report_path = work / "desktop_check.json"
        config = {"out_dir": str(out_dir), "weights": args.weights, "sample": str(sample),
                  "results": str(work / "results"), "report": str(report_path),
                  "size": [int(v) for v in args.size.split("x")]}
        code = work / "startup.py"
        code.write_text(f"import sys\nsys.path.insert(0, {str(REPO / 'scripts')!r})\nimport desktop_check\n"
                        f"desktop_check.inside_qgis({json.dumps(config)!r})\n", encoding="utf-8")
        env = {key: value for key, value in os.environ.items() if key != "QT_QPA_PLATFORM"}
        command = ["xvfb-run", "-a", "-s", f"-screen 0 {args.size}x24", "qgis", "--profiles-path", str(work),
                   "--nologo", "--noversioncheck", "--code", str(code)]
        done = subprocess.run(command, env=env, timeout=TIME_LIMIT_MS / 1000 + 60)
        report = json.loads(report_path.read_text(encoding="utf-8")) if report_path.is_file() else {}
    (out_dir / "desktop_check.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    problems = check_report(report) if report else [f"QGIS wrote no report (exit code {done.returncode})"]
    for problem in problems:
        print(f"desktop check: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"desktop check passed; screenshots in {out_dir}: {', '.join(report['screenshots'])}")
    return 0


def inside_qgis(config_json: str) -> None:
    """Runs inside QGIS (via --code): drive the dock, then Processing, save screenshots and a report, quit."""
    from qgis.core import QgsProject, QgsRasterLayer, QgsRectangle
    from qgis.PyQt.QtCore import QTimer
    from qgis.utils import iface, plugins

    config = json.loads(config_json)
    canvas = iface.mapCanvas()
    window = iface.mainWindow()
    state: dict = {}
    report: dict = {"screenshots": []}

    def screenshot(name: str) -> None:
        window.grab().save(str(Path(config["out_dir"]) / name))
        report["screenshots"].append(name)

    def after_render(then, delay_ms: int = 1500) -> None:
        """Call `then` once the canvas has finished drawing (plus a moment for the widgets)."""
        def rendered() -> None:
            canvas.mapCanvasRefreshed.disconnect(rendered)
            QTimer.singleShot(delay_ms, then)
        canvas.mapCanvasRefreshed.connect(rendered)
        canvas.refresh()

    def finish(code: int) -> None:
        Path(config["report"]).write_text(json.dumps(report, indent=2), encoding="utf-8")
        QgsProject.instance().setDirty(False)
        QgsProject.instance().clear()
        QTimer.singleShot(500, lambda: sys.exit(code) if code else iface.actionExit().trigger())

    def describe(layer: QgsRasterLayer) -> dict:
        renderer = layer.renderer()
        return {"layer": layer.name(), "bands": layer.bandCount(),
                "renderer": type(renderer).__name__ if renderer is not None else None,
                "band_names": [layer.bandName(b) for b in range(1, layer.bandCount() + 1)]}

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
        poll_dock()

    def poll_dock() -> None:
        dock = state["dock"]
        if dock.task is not None:
            QTimer.singleShot(300, poll_dock)
            return
        report["dock"] = {"status": dock.status_label.text()}
        if dock.last_layer is None:
            finish(1)
            return
        report["dock"].update(describe(dock.last_layer))
        iface.setActiveLayer(dock.last_layer)
        context = state["layer"].extent()
        context.scale(0.62)
        canvas.setExtent(context)
        after_render(lambda: (screenshot("dock.png"), run_processing()), 2500)

    def run_processing() -> None:
        import processing

        output = str(Path(config["results"]) / "processing_x4.tif")
        try:
            result = processing.runAndLoadResults("slimdiffsr:superresolve", {
                "INPUT": state["layer"], "SCALE": 4, "DEVICE": "cpu", "OUTPUT": output,
                **({"WEIGHTS": config["weights"]} if config["weights"] else {})})
        except Exception as error:  # the report says what failed; the check turns it into exit 1
            report["processing"] = {"error": f"{type(error).__name__}: {error}"}
            finish(1)
            return
        loaded = [other for other in QgsProject.instance().mapLayers().values()
                  if other.source() == result["OUTPUT"]]
        if not loaded:
            report["processing"] = {"error": f"the result {result['OUTPUT']} was not loaded"}
            finish(1)
            return
        layer = loaded[0]
        report["processing"] = describe(layer)
        iface.setActiveLayer(layer)
        after_render(lambda: (screenshot("processing.png"), finish(0)), 2500)

    QTimer.singleShot(3000, start)
    QTimer.singleShot(TIME_LIMIT_MS, lambda: finish(2))


if __name__ == "__main__":
    sys.exit(main())
