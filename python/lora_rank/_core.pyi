"""Type stubs of the Rust extension module ``lora_rank._core``."""

from os import PathLike
from typing import Any, Callable, Optional, TypedDict, final

from lora_rank.spectral.settings import SpectralSettings

__all__ = [
    "ByteBuffer",
    "CheckpointIndexError",
    "FileChangedError",
    "HeaderError",
    "LoraRankError",
    "NotACheckpointError",
    "UnsupportedFormatError",
    "__version__",
    "bf16_kernels_available",
    "checkpoint_from_headers",
    "f32_kernels_available",
    "frobenius_norms",
    "header_length",
    "name_patterns",
    "natural_order",
    "open_checkpoint",
    "parse_index",
    "pass_kernel",
    "product_spectra",
    "read_matrix",
    "spectra",
    "spectra_in_memory",
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
def checkpoint_from_headers(
    root: str | PathLike[Any],
    index: tuple[str | PathLike[Any], bytes] | None,
    config_json: str | None,
    shards: list[tuple[str, str | PathLike[Any], int, bytes]],
    threads: int | None = None,
) -> _CheckpointDict: ...
def header_length(prefix: bytes, file_len: int, path: str | PathLike[Any]) -> int: ...
def parse_index(data: bytes, path: str | PathLike[Any]) -> dict[str, str]: ...
def name_patterns(
    names: list[str], placeholder: str
) -> tuple[list[str], list[int], list[list[str]]]: ...
def natural_order(names: list[str]) -> list[int]: ...
def bf16_kernels_available() -> bool: ...
def f32_kernels_available() -> bool: ...
def pass_kernel() -> str: ...

@final
class ByteBuffer:
    def __new__(cls, size: int) -> ByteBuffer: ...
    def write(self, offset: int, data: bytes) -> None: ...
    def __len__(self) -> int: ...

_AuxTuple = tuple[str, int, int, list[int], str]
_QuantTuple = tuple[
    str,
    str,
    int,
    tuple[int, int],
    int,
    _AuxTuple,
    Optional[_AuxTuple],
    Optional[_AuxTuple],
    list[_AuxTuple],
    float,
]
_JobTuple = tuple[str, list[tuple[int, int, int]], int, str]

def read_matrix(
    shards: list[tuple[str, int]],
    job: _JobTuple,
    quant: Optional[list[_QuantTuple]] = None,
    minus: Optional[tuple[_JobTuple, Optional[list[_QuantTuple]]]] = None,
) -> bytes: ...
def frobenius_norms(
    shards: list[tuple[str, int]],
    jobs: list[_JobTuple],
    *,
    quant: Optional[list[Optional[list[_QuantTuple]]]] = None,
    minus: Optional[list[Optional[tuple[_JobTuple, Optional[list[_QuantTuple]]]]]] = None,
    threads: Optional[int] = None,
) -> list[float]: ...
def product_spectra(
    shards: list[tuple[str, int]],
    modules: list[tuple[_JobTuple, _JobTuple, float]],
    top_k: int,
    *,
    threads: Optional[int] = None,
) -> list[dict[str, Any]]: ...

# Each result dict has exactly the fields of ``lora_rank.report.Spectrum``, in its order (the
# one definition; ``Spectrum.from_core`` converts by field name and tests/test_architecture.py
# fails when the binding's keys or value types differ).
def spectra(
    shards: list[tuple[str, int]],
    jobs: list[_JobTuple],
    settings: SpectralSettings,
    *,
    progress: Optional[Callable[[int, int, str], object]] = None,
    quant: Optional[list[Optional[list[_QuantTuple]]]] = None,
    minus: Optional[list[Optional[tuple[_JobTuple, Optional[list[_QuantTuple]]]]]] = None,
) -> list[dict[str, Any]]: ...
def spectra_in_memory(
    buffers: list[tuple[str, int, ByteBuffer]],
    jobs: list[_JobTuple],
    settings: SpectralSettings,
    *,
    progress: Optional[Callable[[int, int, str], object]] = None,
) -> list[dict[str, Any]]: ...
