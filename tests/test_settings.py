"""The plugin's stored settings: what an older profile stored reads as what it meant."""

from __future__ import annotations

import pytest
from qgis.core import QgsSettings

from slimdiffsr_qgis.settings import OLD_DEFAULT_TORCH_REQUIREMENT, PREFIX, load_settings

KEY = PREFIX + "torch_requirement"


@pytest.fixture
def stored_torch_requirement(qgis_app):
    """Sets the stored PyTorch requirement for one test and puts the user's value back after it."""
    settings = QgsSettings()
    before = settings.value(KEY)
    yield lambda value: settings.setValue(KEY, value)
    if before is None:
        settings.remove(KEY)
    else:
        settings.setValue(KEY, before)


def test_the_old_default_torch_requirement_lets_set_up_choose_and_a_custom_one_is_kept(stored_torch_requirement):
    # Profiles saved every setting when the requirement defaulted to this pin; kept as a custom requirement
    # it would make set-up skip its own choice (on Linux, pip's default torch is the CUDA build).
    stored_torch_requirement(OLD_DEFAULT_TORCH_REQUIREMENT)
    assert load_settings().torch_requirement == ""
    custom = "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
    stored_torch_requirement(custom)
    assert load_settings().torch_requirement == custom
    stored_torch_requirement("")
    assert load_settings().torch_requirement == ""
