"""Type stubs of the Rust extension module ``lora_rank._core``."""

from os import PathLike
from typing import Any, Callable, Optional, TypedDict, final

__all__ = [
    "ByteBuffer",
    "CheckpointIndexError",
    "FileChangedError",
    "HeaderError",
    "LoraRankError",
    "NotACheckpointError",
    "UnsupportedFormatError",
    "__version__",
    "checkpoint_from_headers",
    "header_length",
    "open_checkpoint",
    "parse_index",
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

@final
class ByteBuffer:
    def __new__(cls, size: int) -> ByteBuffer: ...
    def write(self, offset: int, data: bytes) -> None: ...
    def __len__(self) -> int: ...

class _SpectrumDict(TypedDict):
    singular_values: list[float]
    frobenius_norm: float
    spectral_norm: float
    stable_rank: float
    energy_rank_90: int
    energy_rank_95: int
    energy_rank_99: int
    energy_rank_exact: bool
    alpha: float
    nonfinite: int
    method: str
    iterations: int
    converged: bool
    sv_error: float
    energy_rank_stderr: list[float]
    sv_quantiles: list[float]
    mp_sigma: float
    mp_edge: float
    mp_spikes: int
    spectrum_snr: float
    mp_snr: float
    pl_alpha: float
    pl_xmin: float

_AuxTuple = tuple[str, int, int, list[int], str]
_QuantTuple = tuple[
    str, str, int, tuple[int, int], int, _AuxTuple, Optional[_AuxTuple], Optional[_AuxTuple]
]
_JobTuple = tuple[str, list[tuple[int, int, int]], int, str]

def read_matrix(
    shards: list[tuple[str, int]],
    job: _JobTuple,
    quant: Optional[list[_QuantTuple]] = None,
) -> bytes: ...
def spectra(
    shards: list[tuple[str, int]],
    jobs: list[tuple[str, list[tuple[int, int, int]], int, str]],
    *,
    top_k: int = 32,
    method: str = "auto",
    rtol: Optional[float] = None,
    seed: int = 0,
    oversample: int = 8,
    max_iter: Optional[int] = None,
    threads: Optional[int] = None,
    progress: Optional[Callable[[int, int, str], object]] = None,
    quant: Optional[list[Optional[list[_QuantTuple]]]] = None,
) -> list[_SpectrumDict]: ...
def spectra_in_memory(
    buffers: list[tuple[str, int, ByteBuffer]],
    jobs: list[tuple[str, list[tuple[int, int, int]], int, str]],
    *,
    top_k: int = 32,
    method: str = "auto",
    rtol: Optional[float] = None,
    seed: int = 0,
    oversample: int = 8,
    max_iter: Optional[int] = None,
    threads: Optional[int] = None,
    progress: Optional[Callable[[int, int, str], object]] = None,
) -> list[_SpectrumDict]: ...
