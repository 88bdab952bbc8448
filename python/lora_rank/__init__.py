"""lora_rank: choose LoRA target modules and ranks from a checkpoint's safetensors headers and
weight spectra, without loading the model.

Example:
    >>> import lora_rank
    >>> report = lora_rank.analyze(lora_rank.demo_checkpoint())
    >>> len(report.lora_targets)
    37
"""

from ._core import __version__
from .analysis import analyze
from .demo import demo_checkpoint
from .errors import (
    CheckpointIndexError,
    ConfigError,
    FileChangedError,
    HeaderError,
    HubError,
    LoraRankError,
    NotACheckpointError,
    UnsupportedFormatError,
)
from .peft_config import Recommendation
from .report import KINDS, Module, Report, Spectrum, Tensor

__all__ = [
    "KINDS",
    "CheckpointIndexError",
    "ConfigError",
    "FileChangedError",
    "HeaderError",
    "HubError",
    "LoraRankError",
    "Module",
    "NotACheckpointError",
    "Recommendation",
    "Report",
    "Spectrum",
    "Tensor",
    "UnsupportedFormatError",
    "__version__",
    "analyze",
    "demo_checkpoint",
]
