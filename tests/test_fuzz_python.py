"""Property-based fuzzing of the Python layer (hypothesis), issue 7.

- random bytes, and random bytes behind a valid length prefix, through
  ``lora_rank._core.open_checkpoint``: a result or a ``LoraRankError`` / ``OSError``, nothing else;
- random JSON values as headers, and random byte edits of valid files: whatever we accept, the
  reference reader (the ``safetensors`` package) accepts too, with the same tensors;
- random valid checkpoints written by the ``safetensors`` package: ``open_checkpoint`` and
  ``analyze`` return exactly the names, dtypes, shapes and byte ranges it wrote (checked against
  the header JSON and against the array bytes), including dtypes numpy lacks (BF16, F8, F4, F6).
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lora_rank
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lora_rank import _core

# Random tensor names are mostly of no known role: the inventory says so, as it should.
pytestmark = pytest.mark.filterwarnings("ignore:.*of no known role:UserWarning")

#: Examples per test; raise it for a longer run by hand: LORA_RANK_FUZZ_EXAMPLES=20000 pytest ...
SETTINGS = settings(
    max_examples=int(os.environ.get("LORA_RANK_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
BITS = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8,
    "F8_E4M3": 8, "F8_E8M0": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32,
    "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}  # fmt: skip
NUMPY_DTYPES = {
    "BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "I16": np.int16, "U16": np.uint16,
    "F16": np.float16, "I32": np.int32, "U32": np.uint32, "F32": np.float32,
    "F64": np.float64, "I64": np.int64, "U64": np.uint64,
}  # fmt: skip


@contextmanager
def shard_file(content: bytes) -> Iterator[Path]:
    """``content`` written as ``model.safetensors`` in a fresh directory."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        path.write_bytes(content)
        yield path


def open_or_error(path: Path) -> Any:
    """``open_checkpoint(path)``, or None if it raised one of the errors it may raise."""
    try:
        return _core.open_checkpoint(str(path))
    except (lora_rank.LoraRankError, OSError):
        return None


def reference(path: Path) -> Any:
    """{name: (dtype, shape)} as the safetensors package reads ``path``, or None if it refuses."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "np") as f:
            return {
                k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape()))
                for k in f.keys()  # noqa: SIM118
            }
    except Exception:  # the reference refuses: any exception type
        return None


def assert_agrees_with_reference(path: Path) -> None:
    ours = open_or_error(path)
    if ours is None:
        return
    theirs = reference(path)
    assert theirs is not None, f"we accept what the reference rejects: {path.read_bytes()[:300]!r}"
    assert {name: (dtype, tuple(shape)) for name, dtype, shape, *_ in ours["tensors"]} == theirs


def with_prefix(header: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + data


# -- random bytes ------------------------------------------------------------------------------


@SETTINGS
@given(st.binary(max_size=600))
def test_random_bytes(content: bytes) -> None:
    with shard_file(content) as path:
        assert_agrees_with_reference(path)


@SETTINGS
@given(st.binary(max_size=400), st.binary(max_size=64))
def test_random_header_bytes_behind_a_valid_length(header: bytes, data: bytes) -> None:
    with shard_file(with_prefix(header, data)) as path:
        assert_agrees_with_reference(path)


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**65), 2**65) | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
_field = st.sampled_from(["dtype", "shape", "data_offsets", "__metadata__", "x"])
_entry = st.dictionaries(_field, _json | st.sampled_from(sorted(BITS)), max_size=4)


@SETTINGS
@given(
    st.dictionaries(st.text(max_size=6) | st.just("__metadata__"), _entry | _json, max_size=4),
    st.integers(0, 64),
)
def test_random_json_headers(header: dict[str, Any], data_len: int) -> None:
    text = json.dumps(header).encode()
    with shard_file(with_prefix(text, bytes(data_len))) as path:
        assert_agrees_with_reference(path)


# -- valid checkpoints -------------------------------------------------------------------------

_names = st.text(min_size=1, max_size=24).filter(lambda s: s != "__metadata__")
_shapes = st.lists(st.integers(0, 6), max_size=3)


@st.composite
def numpy_tensors(draw: st.DrawFn) -> dict[str, np.ndarray]:
    names = draw(st.lists(_names, min_size=0, max_size=6, unique=True))
    out = {}
    for name in names:
        dtype = NUMPY_DTYPES[draw(st.sampled_from(sorted(NUMPY_DTYPES)))]
        shape = tuple(draw(_shapes))
        seed = draw(st.integers(0, 2**32 - 1))
        out[name] = np.random.default_rng(seed).integers(0, 255, size=shape).astype(dtype)
    return out


@SETTINGS
@given(
    numpy_tensors(),
    st.none() | st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
)
def test_files_written_by_safetensors_round_trip(
    arrays: dict[str, np.ndarray], metadata: Any
) -> None:
    from safetensors.numpy import save_file

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        save_file(arrays, str(path), metadata=metadata)
        raw = path.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        try:
            written = json.loads(raw[8 : 8 + n])
        except json.JSONDecodeError:
            # safetensors 0.8 writes `{},"__metadata__":{...}}` for no tensors + metadata.
            with pytest.raises(lora_rank.HeaderError, match="not valid JSON"):
                _core.open_checkpoint(str(path))
            return
        ours = _core.open_checkpoint(str(path))
        assert ours["shards"][0]["metadata"] == written.get("__metadata__")
        seen = {}
        for name, dtype, shape, shard, begin, end in ours["tensors"]:
            entry = written[name]
            assert (dtype, list(shape), shard) == (entry["dtype"], entry["shape"], 0)
            assert (begin - 8 - n, end - 8 - n) == tuple(entry["data_offsets"])
            assert raw[begin:end] == arrays[name].tobytes()
            seen[name] = shape
        assert seen == {k: v.shape for k, v in arrays.items()}
        report = lora_rank.analyze(path)
        assert {t.name: (t.dtype, t.shape, t.begin, t.end) for t in report.tensors} == {
            name: (dtype, tuple(shape), b, e) for name, dtype, shape, _, b, e in ours["tensors"]
        }
        assert report.total_params == sum(a.size for a in arrays.values())


@st.composite
def headers(draw: st.DrawFn) -> tuple[bytes, dict[str, tuple[str, tuple[int, ...], int, int]]]:
    """A valid header of any dtype (by hand: numpy lacks BF16/F8/F4/F6), in random key order
    and padding → (file bytes, {name: (dtype, shape, begin, end)})."""
    names = draw(st.lists(_names, max_size=6, unique=True))
    entries: dict[str, Any] = {}
    expected = {}
    offset = 0
    for name in names:
        dtype = draw(st.sampled_from(sorted(BITS)))
        shape = draw(_shapes)
        numel = int(np.prod(shape, dtype=np.int64))
        while numel * BITS[dtype] % 8:
            shape, numel = [*shape, 2], numel * 2
        size = numel * BITS[dtype] // 8
        entries[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        expected[name] = (dtype, tuple(shape), offset, offset + size)
        offset += size
    if draw(st.booleans()):
        entries["__metadata__"] = draw(
            st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3)
        )
    order = draw(st.permutations(list(entries)))
    text = json.dumps({k: entries[k] for k in order}).encode() + b" " * draw(st.integers(0, 7))
    return with_prefix(text, draw(st.binary(min_size=offset, max_size=offset))), expected


@SETTINGS
@given(headers())
def test_hand_written_headers_of_every_dtype(case: tuple[bytes, dict[str, Any]]) -> None:
    content, expected = case
    n = struct.unpack("<Q", content[:8])[0]
    with shard_file(content) as path:
        ours = _core.open_checkpoint(str(path))
        got = {
            name: (dtype, tuple(shape), b - 8 - n, e - 8 - n)
            for name, dtype, shape, _, b, e in ours["tensors"]
        }
        assert got == expected
        assert reference(path) == {k: v[:2] for k, v in expected.items()}
        report = lora_rank.analyze(path)
        assert len(report.tensors) == len(expected)


@SETTINGS
@given(
    headers(),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
    st.integers(-3, 3),
)
def test_byte_edits_of_valid_files(
    case: tuple[bytes, dict[str, Any]], edits: list[tuple[int, int]], resize: int
) -> None:
    """Overwrite a few bytes of a valid file (mostly its header) and grow or shrink it."""
    content = bytearray(case[0])
    for pos, value in edits:
        content[pos % len(content)] = value
    if resize > 0:
        content += bytes(resize)
    elif resize < 0:
        del content[resize:]
    with shard_file(bytes(content)) as path:
        assert_agrees_with_reference(path)


@pytest.mark.parametrize("dtype", ["F8_E4M3FNUZ", "F8_E5M2FNUZ"])
def test_dtypes_we_do_not_know_are_refused_by_name(dtype: str) -> None:
    """The reference knows a few dtypes we do not decode: refused clearly, never misread."""
    header = json.dumps({"w": {"dtype": dtype, "shape": [2], "data_offsets": [0, 2]}}).encode()
    with shard_file(with_prefix(header, bytes(2))) as path:
        assert reference(path) == {"w": (dtype, (2,))}
        with pytest.raises(lora_rank.HeaderError, match=f'unknown dtype "{dtype}"'):
            lora_rank.analyze(path)


_config_keys = st.sampled_from(
    ["model_type", "architectures", "vocab_size", "tie_word_embeddings", "text_config",
     "num_hidden_layers", "hidden_size", "num_local_experts", "x"]
)  # fmt: skip
_config_values = (
    _json
    | st.sampled_from(["llama", "bert", "gpt2", "mixtral", "t5"])
    | st.just(["LlamaForCausalLM"])
)


@SETTINGS
@given(st.dictionaries(_config_keys, _config_values, max_size=5) | _json)
def test_random_config_json(config: Any) -> None:
    """Whatever config.json holds, analyze() returns a report or raises a LoraRankError."""
    from hostile_cases import write_valid

    with tempfile.TemporaryDirectory() as tmp:
        write_valid(Path(tmp) / "model.safetensors")
        (Path(tmp) / "config.json").write_text(json.dumps(config))
        try:
            report = lora_rank.analyze(tmp)
        except lora_rank.LoraRankError as e:
            assert "config.json" in str(e)
        else:
            assert len(report.tensors) == 3
