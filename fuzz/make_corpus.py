"""Seed the cargo-fuzz corpora with real safetensors headers and index files.

Sources: the tiny sharded test checkpoints of ``tests/checkpoints.py`` (built into a temporary
directory with transformers) and the real MiniLM checkpoint of the ``demo`` extra. Nothing
large is committed: run this before fuzzing.

- ``corpus/header``: whole file images. A shard of a tiny checkpoint is kept byte for byte
  (data zeroed); every file also yields a *shrunk* image with the same JSON header layout,
  tensor names, dtypes and metadata, but every dimension capped at 2 and the offsets recomputed,
  so that even MiniLM's header fits in a few kilobytes of input.
- ``corpus/index``: the ``model.safetensors.index.json`` files, as written.
- ``corpus/checkpoint``: ``index + b"\\n--\\n" + shard + b"\\n--\\n" + shard ...`` with shrunk
  shards (the input format of ``fuzz_targets/checkpoint.rs``).

Usage (from the repository root, in the project's virtualenv):
    python fuzz/make_corpus.py [--archs llama,bert,mixtral] [--out fuzz/corpus]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEP = b"\n--\n"
BITS = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8,
    "F8_E4M3": 8, "F8_E8M0": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32,
    "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}  # fmt: skip


def read_header(path: Path) -> tuple[bytes, int]:
    """The raw JSON bytes of a safetensors file's header and the length of its data."""
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        raw = f.read(n)
    return raw, path.stat().st_size - 8 - n


def zeroed_image(raw: bytes, data_len: int) -> bytes:
    """The file with its header byte for byte and its data zeroed."""
    return struct.pack("<Q", len(raw)) + raw + bytes(data_len)


def shrunk_image(raw: bytes) -> bytes:
    """Same names, dtypes, metadata and key order; dims capped at 2, offsets recomputed."""
    header = json.loads(raw)
    entries = [(k, v) for k, v in header.items() if k != "__metadata__"]
    entries.sort(key=lambda kv: kv[1]["data_offsets"][0])
    offset = 0
    for _, info in entries:
        info["shape"] = [min(d, 2) for d in info["shape"]]
        numel = 1
        for d in info["shape"]:
            numel *= d
        nbytes = -(-numel * BITS[info["dtype"]] // 8)
        info["data_offsets"] = [offset, offset + nbytes]
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # writers pad the header to 8 bytes
    return struct.pack("<Q", len(text)) + text + bytes(offset)


def save(out: Path, data: bytes) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / hashlib.sha1(data).hexdigest()).write_bytes(data)


def add_checkpoint(directory: Path, out: Path, max_exact: int = 64 * 1024) -> int:
    """Add every shard (and the index) of ``directory``; returns the number of seeds."""
    count = 0
    shrunk: dict[str, bytes] = {}
    for shard in sorted(directory.glob("*.safetensors")):
        raw, data_len = read_header(shard)
        if 8 + len(raw) + data_len <= max_exact:
            save(out / "header", zeroed_image(raw, data_len))
            count += 1
        shrunk[shard.name] = shrunk_image(raw)
        save(out / "header", shrunk[shard.name])
        count += 1
    for index in sorted(directory.glob("*.safetensors.index.json")):
        text = index.read_bytes()
        save(out / "index", text)
        names = sorted(set(json.loads(text)["weight_map"].values()))
        save(out / "checkpoint", SEP.join([text, *(shrunk[n] for n in names[:3])]))
        count += 2
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", default="llama,bert,gpt2,t5,mixtral,qwen2_moe")
    parser.add_argument("--out", type=Path, default=ROOT / "fuzz" / "corpus")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    import lora_rank
    from checkpoints import ARCHS, save_checkpoint

    total = add_checkpoint(lora_rank.demo_checkpoint(), args.out)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.archs.split(","):
            total += add_checkpoint(save_checkpoint(ARCHS[name], Path(tmp) / name), args.out)
    print(f"{total} seeds written under {args.out}")


if __name__ == "__main__":
    main()
