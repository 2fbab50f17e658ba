"""SlimDiffSR for QGIS: the entry point QGIS's plugin loader calls."""


def classFactory(iface):  # noqa: N802 (the name QGIS looks for)
    """Create the plugin for QGIS's interface `iface`."""
    from .plugin import SlimDiffSRPlugin

    return SlimDiffSRPlugin(iface)
