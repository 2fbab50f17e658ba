"""The SlimDiffSR student model: config, construction, and self-describing safetensors weights."""

from .config import StudentConfig
from .student import SlimDiffSR, build, feature_channels

__all__ = ["StudentConfig", "SlimDiffSR", "build", "feature_channels"]
