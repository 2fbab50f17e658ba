"""Every section a training config may hold and the dataclass that reads it, to check a whole config at once.

Each dataclass lives next to the code it configures; a stage reads its own
sections when it runs, and `check_config` reads all of them before any stage
starts, so a misspelt key in the teacher's section cannot wait behind a long
uncertainty run.
"""

from __future__ import annotations

from typing import Any

from training.data.datasets import DataSettings
from training.evaluation.report import EvaluateSettings
from training.networks.backbone import BackboneSettings
from training.runtime.config import run_settings, typed_section
from training.stages.student import StudentSettings
from training.stages.teacher import TeacherSettings
from training.stages.uncertainty import UncertaintySettings

SECTIONS = {
    "data": DataSettings,
    "backbone": BackboneSettings,
    "uncertainty": UncertaintySettings,
    "teacher": TeacherSettings,
    "student": StudentSettings,
    "evaluate": EvaluateSettings,
}


def check_config(config: dict[str, Any]) -> None:
    """Read the top level and every section the config holds; the first bad key is a BadInput naming it."""
    run_settings(config)
    for name, kind in SECTIONS.items():
        if config.get(name) is not None:
            typed_section(kind, config, name)
