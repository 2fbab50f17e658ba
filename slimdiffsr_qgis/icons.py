"""Locate the plugin's icons, inside an installed plugin or in a source checkout's resources/."""

from __future__ import annotations

from pathlib import Path

PLUGIN_DIR = Path(__file__).resolve().parent


def icon_path(name: str) -> str:
    """Path of icon `name`: the zip puts icons in the plugin's resources/icons/, a checkout in the repo's."""
    for folder in (PLUGIN_DIR / "resources" / "icons", PLUGIN_DIR.parent / "resources" / "icons"):
        if (folder / name).is_file():
            return str(folder / name)
    return ""
