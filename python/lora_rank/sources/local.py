"""Checkpoints on the local file system: a directory with ``model.safetensors.index.json`` or
``*.safetensors`` files, a single ``.safetensors`` file, or a Hugging Face cache entry or
snapshot directory. The Rust engine (``_core.open_checkpoint``) finds the shards and reads and
validates every header in parallel; nothing here reads tensor data.

Example:
    >>> import lora_rank
    >>> ckpt = open_local(lora_rank.demo_checkpoint())
    >>> len(ckpt.shards), ckpt.tensors[0].shard, ckpt.config["model_type"]
    (1, 0, 'bert')
"""

from __future__ import annotations

import os
from typing import Optional, Union

from .. import _core
from .checkpoint import Checkpoint

PathLike = Union[str, "os.PathLike[str]"]


def open_local(path: PathLike, threads: Optional[int] = None) -> Checkpoint:
    """The :class:`~lora_rank.sources.checkpoint.Checkpoint` at ``path`` (headers read with
    ``threads`` workers, None: all cores).

    Raises:
        NotACheckpointError, HeaderError, CheckpointIndexError: the files are not a valid
            safetensors checkpoint (the message names file and tensor).
        ConfigError: ``config.json`` is malformed.
    """
    return Checkpoint.from_core(_core.open_checkpoint(os.fspath(path), threads))
