"""lora_rank: choose LoRA target modules and ranks from a checkpoint's safetensors headers and
weight spectra, without loading the model.

The public API; the package layout is described in ``docs/architecture.md``.

Example:
    >>> import lora_rank
    >>> report = lora_rank.analyze(lora_rank.demo_checkpoint())
    >>> len(report.lora_targets)
    37
"""

from ._core import __version__
from .analysis import analyze, analyze_many
from .deltas import AdapterReport, Comparison, compare
from .demo import demo_checkpoint
from .errors import (
    CheckpointIndexError,
    ConfigError,
    FileChangedError,
    HeaderError,
    HubError,
    LoraRankError,
    NotACheckpointError,
    PeftEmulationError,
    UnsupportedFormatError,
)
from .inventory.kinds import KINDS
from .peft.recommendation import Recommendation
from .report import Module, Report, Spectrum, Tensor
from .spectral.settings import SpectralSettings

__all__ = [
    "KINDS",
    "AdapterReport",
    "CheckpointIndexError",
    "Comparison",
    "ConfigError",
    "FileChangedError",
    "HeaderError",
    "HubError",
    "LoraRankError",
    "Module",
    "NotACheckpointError",
    "PeftEmulationError",
    "Recommendation",
    "Report",
    "SpectralSettings",
    "Spectrum",
    "Tensor",
    "UnsupportedFormatError",
    "__version__",
    "analyze",
    "analyze_many",
    "compare",
    "demo_checkpoint",
]
