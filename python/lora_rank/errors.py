"""The exception hierarchy: everything lora_rank raises on bad input derives from
:class:`LoraRankError` (OS failures stay plain :class:`OSError` subclasses with a filename).

Example:
    >>> import lora_rank
    >>> issubclass(lora_rank.HeaderError, lora_rank.LoraRankError)
    True
"""

from __future__ import annotations

# Raised by the Rust engine, defined in ``_core``; re-exported here (``X as X``) so that every
# error is imported from this module.
from ._core import CheckpointIndexError as CheckpointIndexError
from ._core import FileChangedError as FileChangedError
from ._core import HeaderError as HeaderError
from ._core import LoraRankError as LoraRankError
from ._core import NotACheckpointError as NotACheckpointError
from ._core import UnsupportedFormatError as UnsupportedFormatError


class ConfigError(LoraRankError, ValueError):
    """An argument or option is invalid (bad budget string, unknown preset, ...)."""


class HubError(LoraRankError):
    """A remote checkpoint cannot be read: repo, revision or file not found, access refused
    (gated or private), offline and not cached, or a server answering range requests wrongly."""


class PeftEmulationError(LoraRankError, RuntimeError):
    """A config lora_rank built does not do in PEFT what lora_rank intended (an internal error,
    not bad input: please report it with the model's config.json)."""
