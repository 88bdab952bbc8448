"""What a source hands on: a :class:`Checkpoint` (shard paths, tensors as stored, config), the
same whether the bytes are local (:mod:`lora_rank.sources.local`) or remote
(:mod:`lora_rank.sources.hub`).

Example:
    >>> parse_config('{"model_type": "bert"}', "config.json")
    {'model_type': 'bert'}
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from ..errors import ConfigError
from ..report import Tensor

if TYPE_CHECKING:
    from ..report import RemoteShard


@dataclass(frozen=True)
class Checkpoint:
    """Every shard header of one checkpoint, read and validated; no tensor data.

    ``tensors`` carry their shard as an index into ``shards`` (what the Rust engine reads
    from); ``config`` is the parsed ``config.json`` (None when there is none);
    ``remote_shards`` where each shard is on the hub (None for a local checkpoint).
    """

    root: str
    shards: list[str]
    tensors: list[Tensor]
    config: Optional[dict[str, Any]]
    remote_shards: Optional[list[RemoteShard]] = None

    @classmethod
    def from_core(
        cls, raw: Mapping[str, Any], remote_shards: Optional[list[RemoteShard]] = None
    ) -> Checkpoint:
        """The checkpoint of one ``_core.open_checkpoint`` / ``checkpoint_from_headers`` dict
        (``config.json`` parsed and checked)."""
        config: Optional[dict[str, Any]] = None
        if raw["config_json"] is not None:
            config = parse_config(raw["config_json"], os.path.join(raw["root"], "config.json"))
        tensors = Tensor.from_rows(raw["tensors"])
        shards = [s["path"] for s in raw["shards"]]
        return cls(raw["root"], shards, tensors, config, remote_shards)


#: config.json fields the inventory reads, and the JSON types they must have.
_CONFIG_TYPES: dict[str, type] = {"model_type": str, "architectures": list, "vocab_size": int}


def parse_config(text: str, path: str) -> dict[str, Any]:
    """``config.json`` as a dict; a file that is not a JSON object, or whose ``model_type``,
    ``architectures`` or ``vocab_size`` has the wrong type, is a :class:`ConfigError`.

    Example:
        >>> parse_config('[1]', "config.json")
        Traceback (most recent call last):
        ...
        lora_rank.errors.ConfigError: config.json is not a JSON object
    """
    try:
        parsed = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(parsed, dict):
        raise ConfigError(f"{path} is not a JSON object")
    for key, expected in _CONFIG_TYPES.items():
        value = parsed.get(key)
        if value is None:
            continue
        bad = not isinstance(value, expected) or isinstance(value, bool)
        if key == "architectures" and not bad:
            bad = not all(isinstance(a, str) for a in value)
        if bad:
            raise ConfigError(f"{path}: {key} has the wrong type: {value!r}"[:300])
    return parsed
