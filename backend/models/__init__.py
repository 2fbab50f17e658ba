"""The SlimDiffSR student model: config, construction, and self-describing safetensors weights."""

from .config import StudentConfig
from .student import SlimDiffSR, build, feature_channels, teacher_parameter_name
from .weights import load, read_metadata, save

__all__ = ["StudentConfig", "SlimDiffSR", "build", "feature_channels", "teacher_parameter_name", "load", "read_metadata", "save"]
