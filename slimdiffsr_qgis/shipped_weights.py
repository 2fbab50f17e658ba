"""Which scales have shipped default weights, seen from the plugin without asking the backend.

The backend finds its default weights itself (backend/resources.py); the plugin
only needs to know which scales to offer without a weights file. It looks at
what it ships: `resources/weights/slimdiffsr_x{scale}.safetensors` beside the
plugin in a source checkout, or the same file inside the backend wheel that the
plugin zip carries under `wheels/` (first-run set-up installs that wheel, so the
two agree). A backend installed by other means may hold other weights; the
plugin then still asks for a weights file for a scale it does not ship.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from .contract import SUPPORTED_SCALES, BadInput, RunRequest

PLUGIN_DIR = Path(__file__).resolve().parent
WHEEL_WEIGHTS = "slimdiffsr_resources/weights/"


def weights_name(scale: int) -> str:
    """The shipped weights' file name for `scale`."""
    return f"slimdiffsr_x{scale}.safetensors"


def shipped_scales(plugin_dir: Path = PLUGIN_DIR) -> tuple[int, ...]:
    """The supported scales whose default weights travel with this plugin (checkout or wheel)."""
    names: set[str] = set()
    checkout = plugin_dir.parent / "resources" / "weights"
    if checkout.is_dir():
        names.update(path.name for path in checkout.glob("*.safetensors"))
    for wheel in sorted((plugin_dir / "wheels").glob("slimdiffsr-*.whl")):
        try:
            with zipfile.ZipFile(wheel) as archive:
                names.update(name[len(WHEEL_WEIGHTS):] for name in archive.namelist()
                             if name.startswith(WHEEL_WEIGHTS))
        except (OSError, zipfile.BadZipFile):
            continue
    return tuple(scale for scale in SUPPORTED_SCALES if weights_name(scale) in names)


def check_weights(request: RunRequest, shipped: tuple[int, ...], control: str) -> None:
    """Raise BadInput when the request relies on shipped weights that do not exist for its scale.

    `control` names where the user gives a weights file ("the Weights box" in the
    dock, "WEIGHTS" in Processing), so the message points at a control they have.
    """
    if request.weights is None and request.model is None and request.scale not in shipped:
        offered = ", ".join(f"x{scale}" for scale in shipped) or "none"
        raise BadInput(f"no weights for x{request.scale} yet (shipped: {offered}); "
                       f"choose a weights file in {control}")
