"""Type stubs of the Rust extension module ``lora_rank._core``."""

from os import PathLike
from typing import Any, TypedDict

__version__: str

class LoraRankError(Exception): ...
class HeaderError(LoraRankError): ...
class CheckpointIndexError(LoraRankError): ...
class UnsupportedFormatError(LoraRankError): ...
class NotACheckpointError(LoraRankError): ...
class FileChangedError(LoraRankError): ...

class ShardDict(TypedDict):
    path: str
    name: str
    size: int
    header_len: int
    metadata: dict[str, str] | None

class CheckpointDict(TypedDict):
    root: str
    index_path: str | None
    config_json: str | None
    shards: list[ShardDict]
    tensors: list[tuple[str, str, tuple[int, ...], int, int, int]]

def open_checkpoint(path: str | PathLike[Any], threads: int | None = None) -> CheckpointDict: ...
