"""Type stubs of the Rust extension module ``lora_rank._core``."""

from os import PathLike
from typing import Any, Callable, Optional, TypedDict

__all__ = [
    "CheckpointIndexError",
    "FileChangedError",
    "HeaderError",
    "LoraRankError",
    "NotACheckpointError",
    "UnsupportedFormatError",
    "__version__",
    "open_checkpoint",
    "spectra",
]

__version__: str

class LoraRankError(Exception): ...
class HeaderError(LoraRankError): ...
class CheckpointIndexError(LoraRankError): ...
class UnsupportedFormatError(LoraRankError): ...
class NotACheckpointError(LoraRankError): ...
class FileChangedError(LoraRankError): ...

class _ShardDict(TypedDict):
    path: str
    name: str
    size: int
    header_len: int
    metadata: dict[str, str] | None

class _CheckpointDict(TypedDict):
    root: str
    index_path: str | None
    config_json: str | None
    shards: list[_ShardDict]
    tensors: list[tuple[str, str, tuple[int, ...], int, int, int]]

def open_checkpoint(path: str | PathLike[Any], threads: int | None = None) -> _CheckpointDict: ...

# Each result dict has exactly the fields of ``lora_rank.report.Spectrum``, in its order (the
# one definition; ``Spectrum.from_core`` converts by field name and tests/test_architecture.py
# fails when the binding's keys or value types differ).
def spectra(
    shards: list[tuple[str, int]],
    jobs: list[tuple[str, list[tuple[int, int, int]], int, str]],
    *,
    top_k: int,
    method: str,
    rtol: float,
    max_iter: int,
    seed: int,
    threads: Optional[int],
    oversample: int,
    progress: Optional[Callable[[int, int, str], object]] = None,
) -> list[dict[str, Any]]: ...
