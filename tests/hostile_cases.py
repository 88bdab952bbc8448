"""Hostile and broken checkpoints, built precisely from valid ones (issue 7).

Every case writes a small valid checkpoint with the ``safetensors`` package (or by hand where a
JSON dict cannot express the corruption, e.g. duplicate keys), corrupts exactly one thing, and
says which exception ``lora_rank.analyze`` must raise, which file the message must name and a
phrase the message must contain. The cases are shared by ``test_hostile*.py``,
``test_readonly.py`` and the table of the closing note:

    python tests/hostile_cases.py      # markdown table: case → exception → message seen
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import lora_rank
import numpy as np

SHARD = "model.safetensors"
INDEX = "model.safetensors.index.json"
#: Created by unpickling :data:`PICKLE_BOMB`; must never exist.
MARKER_NAME = "UNPICKLED"


def tensors(seed: int = 0) -> dict[str, np.ndarray]:
    """A tiny llama-like layer: two matrices (F32, F16) and a norm vector."""
    rng = np.random.default_rng(seed)
    return {
        "model.layers.0.self_attn.q_proj.weight": rng.standard_normal((16, 16), np.float32),
        "model.layers.0.mlp.up_proj.weight": rng.standard_normal((24, 16)).astype(np.float16),
        "model.norm.weight": np.ones(16, np.float32),
    }


def write_valid(
    path: Path,
    data: Optional[dict[str, np.ndarray]] = None,
    metadata: Optional[dict[str, str]] = None,
) -> Path:
    """Write a valid safetensors file with the reference writer."""
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors() if data is None else data, str(path), metadata=metadata)
    return path


def split(path: Path) -> tuple[dict[str, Any], bytes]:
    """A safetensors file → (header as a dict, data region bytes)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def write_raw(path: Path, header: bytes, data: bytes, length: Optional[int] = None) -> Path:
    """Write ``length`` (default: the true header length), the header bytes, then the data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(header) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + header + data)
    return path


def rewrite(path: Path, edit: Callable[[dict[str, Any]], Any], extra: bytes = b"") -> Path:
    """Re-serialize ``path``'s header after ``edit(header)``; ``extra`` bytes are appended."""
    header, data = split(path)
    edit(header)
    return write_raw(path, json.dumps(header).encode(), data + extra)


def by_offset(header: dict[str, Any]) -> list[dict[str, Any]]:
    """The tensor entries of a header in data order."""
    entries = [v for k, v in header.items() if k != "__metadata__"]
    return sorted(entries, key=lambda e: e["data_offsets"][0])


def shift(header: dict[str, Any], first: int, by: int) -> None:
    """Move the tensors from the ``first``-th (in data order) on by ``by`` bytes."""
    for e in by_offset(header)[first:]:
        e["data_offsets"] = [o + by for o in e["data_offsets"]]


def write_sharded(directory: Path, index: Optional[dict[str, Any]] = None) -> Path:
    """Two shards plus a matching ``model.safetensors.index.json`` (``index`` overrides it)."""
    t = tensors()
    names = sorted(t)
    shards = {
        "model-00001-of-00002.safetensors": names[:2],
        "model-00002-of-00002.safetensors": names[2:],
    }
    weight_map = {}
    for shard, keys in shards.items():
        write_valid(directory / shard, {k: t[k] for k in keys})
        weight_map.update(dict.fromkeys(keys, shard))
    doc = index if index is not None else {"metadata": {}, "weight_map": weight_map}
    (directory / INDEX).write_text(json.dumps(doc))
    return directory


class _Bomb:
    """Unpickling this creates the marker file named by its argument."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def write_pickle(path: Path) -> Path:
    """A torch-style pickle whose loading would create ``MARKER_NAME`` beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"state_dict": _Bomb(str(path.parent / MARKER_NAME))}))
    return path


@dataclass(frozen=True)
class Case:
    """One hostile input: ``build(tmp)`` returns (path to analyze, file the message must name)."""

    name: str
    build: Callable[[Path], tuple[Path, Path]]
    error: type[BaseException]
    phrase: str


def _file_case(name: str, error: type[BaseException], phrase: str) -> Callable[..., Any]:
    """Register a case whose builder gets the path of a valid single-file checkpoint."""

    def register(corrupt: Callable[[Path], Any]) -> Callable[[Path], Any]:
        def build(tmp: Path) -> tuple[Path, Path]:
            shard = write_valid(tmp / SHARD)
            corrupt(shard)
            return tmp, shard

        CASES.append(Case(name, build, error, phrase))
        return corrupt

    return register


def _header_case(name: str, phrase: str) -> Callable[..., Any]:
    """Register a HeaderError case that edits the header dict of a valid file."""

    def register(edit: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], Any]:
        _file_case(name, lora_rank.HeaderError, phrase)(lambda p: rewrite(p, edit))
        return edit

    return register


def _index_case(name: str, error: type[BaseException], phrase: str) -> Callable[..., Any]:
    """Register a case that corrupts a valid two-shard checkpoint; ``corrupt`` returns the
    file the message must name."""

    def register(corrupt: Callable[[Path], Path]) -> Callable[[Path], Path]:
        def build(tmp: Path) -> tuple[Path, Path]:
            return tmp, corrupt(write_sharded(tmp))

        CASES.append(Case(name, build, error, phrase))
        return corrupt

    return register


CASES: list[Case] = []

# -- the 8-byte length prefix ------------------------------------------------------------------


@_file_case("header length > file size", lora_rank.HeaderError, "larger than the rest of the file")
def _len_past_eof(p: Path) -> None:
    with p.open("r+b") as f:
        f.write(struct.pack("<Q", p.stat().st_size))


@_file_case("header length > 100,000,000", lora_rank.HeaderError, "exceeds the safetensors limit")
def _len_over_limit(p: Path) -> None:
    with p.open("r+b") as f:
        f.write(struct.pack("<Q", 100_000_001))
    os.truncate(p, 200_000_000)  # sparse: the length fits the file, only the limit is broken


@_file_case("file shorter than 8 bytes", lora_rank.HeaderError, "shorter than the 8-byte")
def _short(p: Path) -> None:
    os.truncate(p, 5)


@_file_case("empty file", lora_rank.HeaderError, "is 0 bytes")
def _empty(p: Path) -> None:
    os.truncate(p, 0)


# -- the JSON ----------------------------------------------------------------------------------


@_file_case("header not UTF-8", lora_rank.HeaderError, "not valid UTF-8")
def _not_utf8(p: Path) -> None:
    header, data = split(p)
    write_raw(p, json.dumps(header).encode().replace(b"model.norm", b"model.\xff\xfem"), data)


@_file_case("header not JSON", lora_rank.HeaderError, "not valid JSON")
def _not_json(p: Path) -> None:
    header, data = split(p)
    write_raw(p, json.dumps(header).encode()[:-1], data)  # drop the closing brace


@_file_case("header JSON not an object", lora_rank.HeaderError, "not an object")
def _not_object(p: Path) -> None:
    header, data = split(p)
    write_raw(p, json.dumps(list(header.items())).encode(), data)


@_file_case("duplicate tensor names", lora_rank.HeaderError, "duplicate entry")
def _duplicate(p: Path) -> None:
    header, data = split(p)
    name, entry = next((k, v) for k, v in header.items() if k != "__metadata__")
    text = json.dumps(header)
    write_raw(p, (text[:-1] + f", {json.dumps(name)}: {json.dumps(entry)}}}").encode(), data)


@_file_case("duplicate field in a tensor entry", lora_rank.HeaderError, 'duplicate field "shape"')
def _duplicate_field(p: Path) -> None:
    header, data = split(p)
    name = "model.layers.0.self_attn.q_proj.weight"
    text = json.dumps(header).replace(f'"{name}": {{', f'"{name}": {{"shape": [256], ', 1)
    write_raw(p, text.encode(), data)


@_file_case("a tensor named __metadata__", lora_rank.HeaderError, "cannot name a tensor")
def _tensor_named_metadata(p: Path) -> None:
    write_valid(p, {"__metadata__": np.zeros(4, np.float32)})


@_header_case("metadata value not a string", "is not a string")
def _metadata_not_str(h: dict[str, Any]) -> None:
    h["__metadata__"] = {"format": "pt", "step": 1000}


@_header_case("metadata not an object", "__metadata__ is not an object")
def _metadata_list(h: dict[str, Any]) -> None:
    h["__metadata__"] = [["format", "pt"]]


# -- tensor entries ----------------------------------------------------------------------------


def _q(h: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = h["model.layers.0.self_attn.q_proj.weight"]
    return entry


@_header_case("unknown dtype", 'unknown dtype "Q4_K"')
def _dtype(h: dict[str, Any]) -> None:
    _q(h)["dtype"] = "Q4_K"


@_header_case("negative dimension", "not a non-negative integer")
def _negative(h: dict[str, Any]) -> None:
    _q(h)["shape"] = [-16, -16]


@_header_case("dims whose product overflows u64", "overflows")
def _overflow(h: dict[str, Any]) -> None:
    _q(h)["shape"] = [2**32, 2**32, 16]


@_header_case("data_offsets reversed", "reversed")
def _reversed(h: dict[str, Any]) -> None:
    e = by_offset(h)[0]
    e["data_offsets"] = e["data_offsets"][::-1]


@_header_case("data_offsets overlapping", "overlap the previous tensor")
def _overlap(h: dict[str, Any]) -> None:
    shift(h, 1, -4)  # the file then also has 4 trailing bytes: the overlap is reported first


@_file_case("data_offsets with a gap", lora_rank.HeaderError, "gap before tensor")
def _gap(p: Path) -> None:
    rewrite(p, lambda h: shift(h, 1, 8), extra=bytes(8))


@_file_case("data_offsets not starting at 0", lora_rank.HeaderError, "must start at 0")
def _not_at_zero(p: Path) -> None:
    rewrite(p, lambda h: shift(h, 0, 8), extra=bytes(8))


@_header_case("data_offsets size ≠ dtype × shape", "needs")
def _size_mismatch(h: dict[str, Any]) -> None:
    _q(h)["shape"] = [16, 15]


@_file_case("data_offsets past the end of file", lora_rank.HeaderError, "past the end of the data")
def _past_end(p: Path) -> None:
    os.truncate(p, p.stat().st_size - 4)


@_file_case("trailing bytes after the data", lora_rank.HeaderError, "8 trailing bytes")
def _trailing(p: Path) -> None:
    with p.open("ab") as f:
        f.write(bytes(8))


@_file_case("pickle named .safetensors", lora_rank.HeaderError, "exceeds the safetensors limit")
def _disguised_pickle(p: Path) -> None:
    write_pickle(p)


# -- index.json --------------------------------------------------------------------------------


@_index_case("index.json not JSON", lora_rank.CheckpointIndexError, "not valid JSON")
def _index_not_json(d: Path) -> Path:
    (d / INDEX).write_text('{"weight_map": {')
    return d / INDEX


@_index_case("index.json not UTF-8", lora_rank.CheckpointIndexError, "not valid UTF-8")
def _index_not_utf8(d: Path) -> Path:
    (d / INDEX).write_bytes(b'{"weight_map": {"\xff": "model-00001-of-00002.safetensors"}}')
    return d / INDEX


@_index_case("index.json missing weight_map", lora_rank.CheckpointIndexError, "missing")
def _no_weight_map(d: Path) -> Path:
    (d / INDEX).write_text(json.dumps({"metadata": {"total_size": 0}}))
    return d / INDEX


@_index_case("index.json not an object", lora_rank.CheckpointIndexError, "not a JSON object")
def _index_list(d: Path) -> Path:
    (d / INDEX).write_text("[]")
    return d / INDEX


@_index_case("index points to a missing shard", FileNotFoundError, "No such file")
def _missing_shard(d: Path) -> Path:
    (d / "model-00002-of-00002.safetensors").unlink()
    return d / "model-00002-of-00002.safetensors"


def _edit_index(d: Path, edit: Callable[[dict[str, str]], Any]) -> Path:
    doc = json.loads((d / INDEX).read_text())
    edit(doc["weight_map"])
    (d / INDEX).write_text(json.dumps(doc))
    return d / INDEX


@_index_case(
    "shard path escapes with ../", lora_rank.CheckpointIndexError, "escapes the checkpoint"
)
def _dotdot(d: Path) -> Path:
    return _edit_index(d, lambda m: m.update({"model.norm.weight": "../model.safetensors"}))


@_index_case("absolute shard path", lora_rank.CheckpointIndexError, "escapes the checkpoint")
def _absolute(d: Path) -> Path:
    return _edit_index(d, lambda m: m.update({"model.norm.weight": str(d / SHARD)}))


@_index_case("NUL byte in a shard path", lora_rank.CheckpointIndexError, "contains a NUL byte")
def _nul(d: Path) -> Path:
    return _edit_index(d, lambda m: m.update({"model.norm.weight": "a\x00.safetensors"}))


@_index_case("tensor listed but absent", lora_rank.CheckpointIndexError, "absent from shard")
def _ghost(d: Path) -> Path:
    return _edit_index(
        d, lambda m: m.update({"lm_head.weight": "model-00002-of-00002.safetensors"})
    )


@_index_case("tensor present in two shards", lora_rank.CheckpointIndexError, "two shards")
def _twice(d: Path) -> Path:
    t = tensors()
    write_valid(
        d / "model-00002-of-00002.safetensors",
        {k: t[k] for k in ("model.norm.weight", "model.layers.0.self_attn.q_proj.weight")},
    )
    return d / INDEX


@_index_case(
    "shard not listed in index", lora_rank.CheckpointIndexError, "not listed in weight_map"
)
def _unlisted(d: Path) -> Path:
    t = tensors()
    write_valid(
        d / "model-00002-of-00002.safetensors",
        {"model.norm.weight": t["model.norm.weight"], "extra.weight": t["model.norm.weight"]},
    )
    return d / INDEX


# -- discovery ---------------------------------------------------------------------------------


def _dir_case(name: str, error: type[BaseException], phrase: str) -> Callable[..., Any]:
    """Register a case whose builder lays out ``tmp`` itself and returns (path, culprit)."""

    def register(build: Callable[[Path], tuple[Path, Path]]) -> Callable[[Path], tuple[Path, Path]]:
        CASES.append(Case(name, build, error, phrase))
        return build

    return register


@_dir_case("directory with no safetensors", lora_rank.NotACheckpointError, "no *.safetensors")
def _empty_dir(tmp: Path) -> tuple[Path, Path]:
    (tmp / "README.md").write_text("not a model\n")
    return tmp, tmp


@_dir_case("pytorch_model.bin directory", lora_rank.UnsupportedFormatError, "never loaded")
def _bin_dir(tmp: Path) -> tuple[Path, Path]:
    (tmp / "config.json").write_text('{"model_type": "llama"}')
    return tmp, write_pickle(tmp / "pytorch_model.bin")


@_dir_case(".pt file passed directly", lora_rank.UnsupportedFormatError, "never loaded")
def _pt_file(tmp: Path) -> tuple[Path, Path]:
    p = write_pickle(tmp / "model.pt")
    return p, p


@_dir_case("FIFO named model.safetensors", lora_rank.NotACheckpointError, "not a regular file")
def _fifo(tmp: Path) -> tuple[Path, Path]:
    os.mkfifo(tmp / SHARD)  # opening it for reading would block forever
    return tmp, tmp / SHARD


@_dir_case("directory named model.safetensors", lora_rank.NotACheckpointError, "not a regular file")
def _dir_shard(tmp: Path) -> tuple[Path, Path]:
    (tmp / SHARD).mkdir()
    return tmp, tmp / SHARD


@_dir_case("config.json is a FIFO", lora_rank.NotACheckpointError, "not a regular file")
def _fifo_config(tmp: Path) -> tuple[Path, Path]:
    write_valid(tmp / SHARD)
    os.mkfifo(tmp / "config.json")
    return tmp, tmp / "config.json"


def _config_case(name: str, text: str, phrase: str) -> None:
    """Register a ConfigError case: a valid shard beside a ``config.json`` holding ``text``."""

    def build(tmp: Path) -> tuple[Path, Path]:
        write_valid(tmp / SHARD)
        (tmp / "config.json").write_text(text)
        return tmp, tmp / "config.json"

    CASES.append(Case(name, build, lora_rank.ConfigError, phrase))


_config_case("config.json not JSON", '{"model_type": "llama",', "not valid JSON")
_config_case("config.json nested 100,000 deep", "[" * 100_000 + "]" * 100_000, "not valid JSON")
_config_case("config.json not an object", '["llama"]', "not a JSON object")
_config_case("config.json model_type not a string", '{"model_type": ["llama"]}', "model_type")
_config_case(
    "config.json architectures not a list of str",
    '{"model_type": "llama", "architectures": "LlamaForCausalLM"}',
    "architectures has the wrong type",
)


@_dir_case("path does not exist", FileNotFoundError, "No such file")
def _missing(tmp: Path) -> tuple[Path, Path]:
    return tmp / "nope", tmp / "nope"


def hf_cache(tmp: Path) -> tuple[Path, Path]:
    """Lay out a two-shard checkpoint as the Hugging Face hub cache does (as the
    ``hf_cache_checkpoint`` fixture): ``models--org--name/{refs/main, blobs/<sha256>,
    snapshots/<rev>/<file> -> ../../blobs/<sha256>}``. Returns (entry, snapshot)."""
    src = write_sharded(tmp / "src")
    entry = tmp / "models--tiny--layer"
    rev = "0123456789abcdef0123456789abcdef01234567"
    snap = entry / "snapshots" / rev
    snap.mkdir(parents=True)
    (entry / "blobs").mkdir()
    for f in sorted(src.iterdir()):
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        f.rename(entry / "blobs" / digest)
        (snap / f.name).symlink_to(Path("../../blobs") / digest)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text(rev)
    return entry, snap


@_dir_case("symlink loop in HF snapshot", OSError, "Too many levels of symbolic links")
def _loop(tmp: Path) -> tuple[Path, Path]:
    entry, snap = hf_cache(tmp)
    shard = snap / "model-00001-of-00002.safetensors"
    shard.unlink()
    shard.symlink_to(shard.name)  # points at itself
    return entry, shard


@_dir_case("dangling symlink in HF snapshot", FileNotFoundError, "No such file")
def _dangling(tmp: Path) -> tuple[Path, Path]:
    entry, snap = hf_cache(tmp)
    shard = snap / "model-00002-of-00002.safetensors"
    (shard.parent / os.readlink(shard)).unlink()  # the blob is gone
    return entry, shard


def check(case: Case, tmp: Path, **kwargs: Any) -> BaseException:
    """Build ``case`` in ``tmp``, run ``analyze`` and check the exception; return it."""
    path, culprit = case.build(tmp)
    try:
        lora_rank.analyze(path, progress=False, **kwargs)
    except BaseException as e:
        assert type(e) is case.error or (
            isinstance(e, case.error) and not isinstance(e, lora_rank.LoraRankError)
        ), f"{case.name}: expected {case.error.__name__}, got {type(e).__name__}: {e}"
        named = str(culprit) in str(e) or getattr(e, "filename", None) == str(culprit)
        assert named, f"{case.name}: {culprit} not named in {e!r}"
        assert case.phrase in str(e), f"{case.name}: {case.phrase!r} not in {e}"
        assert not (tmp / MARKER_NAME).exists(), f"{case.name}: a pickle was loaded"
        return e
    raise AssertionError(f"{case.name}: analyze({path}) raised nothing")


def _table() -> None:
    """Print the markdown table of the closing note from the real messages."""
    import resource
    import tempfile
    import time

    print("| case | exception | message seen | time |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for i, case in enumerate(CASES):
            d = Path(tmp) / str(i)
            d.mkdir()
            t0 = time.perf_counter()
            e = check(case, d)
            dt = time.perf_counter() - t0
            msg = str(e).replace(str(d), "…").replace("|", "\\|")
            print(f"| {case.name} | {type(e).__name__} | {msg} | {dt * 1000:.1f} ms |")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS of the whole run: {rss:.0f} MB")


if __name__ == "__main__":
    _table()
