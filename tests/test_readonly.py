"""The checkpoint is never written (issue 7): after analyze (header-only and spectral),
recommend, plot and the CLI commands, every file of the checkpoint keeps its bytes, size, mode
and mtime, no file appears or disappears beside it, and no Python code opened any of its files
for writing (checked with an audit hook; the Rust core opens with ``File::open``, read-only).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lora_rank
import pytest

HAVE = {
    m: importlib.util.find_spec(f"lora_rank.{m}") is not None
    for m in ("spectral", "recommend", "render.plot", "cli")
}
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None

_writes: list[str] = []
_watched: list[Path] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event != "open" or not _watched or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    path, mode, flags = args[0], args[1], args[2]
    writing = (mode and any(c in str(mode) for c in "wax+")) or (
        isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    )
    if writing:
        resolved = Path(os.fsdecode(path)).resolve()
        if any(resolved.is_relative_to(w) for w in _watched):
            _writes.append(f"{resolved} ({mode or flags})")


sys.addaudithook(_audit)


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``root`` (symlinks listed and followed): content hash, size, mode,
    mtime; for a symlink, its target."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_file():
                st = p.stat()
                digest = hashlib.sha256(p.read_bytes()).hexdigest()
                out[rel] = (digest, st.st_size, st.st_mode, st.st_mtime_ns)
            else:
                out[rel] = ("dir", p.stat().st_mode)
    return out


@pytest.fixture
def watched() -> Iterator[Callable[[Path], None]]:
    def watch(root: Path) -> None:
        _watched.append(root.resolve())

    _writes.clear()
    yield watch
    _watched.clear()


def _skip_unless(*features: str) -> None:
    missing = [f"lora_rank.{f}" for f in features if not HAVE[f]]
    if missing:
        pytest.skip(f"{', '.join(missing)} not built yet")


def op_analyze(path: Path, out: Path) -> None:
    lora_rank.analyze(path, progress=False)


def op_analyze_spectral(path: Path, out: Path) -> None:
    _skip_unless("spectral")
    report = lora_rank.analyze(path, spectral=True, progress=False)
    assert report.has_spectra


def op_recommend(path: Path, out: Path) -> None:
    _skip_unless("spectral", "recommend")
    report = lora_rank.analyze(path, progress=False)
    report.recommend("auto").save(out / "adapter")
    assert (out / "adapter" / "adapter_config.json").is_file()


def op_plot(path: Path, out: Path) -> None:
    _skip_unless("spectral", "render.plot")
    if not HAVE_MATPLOTLIB:
        pytest.skip("matplotlib (the plot extra) not installed")
    from lora_rank.render import plot

    report = lora_rank.analyze(path, spectral=True, progress=False)
    assert plot.figure_bytes(plot.heatmap(report, "stable_rank"), "png").startswith(b"\x89PNG")


def op_cli(path: Path, out: Path) -> None:
    _skip_unless("spectral", "recommend", "render.plot", "cli")
    from lora_rank.cli import main

    p = str(path)
    assert (
        main(["analyze", p, "--spectral", "-q", "--format", "json", "-o", str(out / "r.json")]) == 0
    )
    assert main(["recommend", p, "-q", "--out", str(out / "cli-adapter")]) == 0
    assert main(["plot", p, "-q", "--out", str(out / "heatmap.png")]) == 0


OPERATIONS = [op_analyze, op_analyze_spectral, op_recommend, op_plot, op_cli]


@pytest.fixture(params=["sharded", "single-file", "hf-cache", "minilm"])
def checkpoint_path(
    request: pytest.FixtureRequest,
    checkpoint: Callable[[str], Path],
    single_file_checkpoint: Path,
    hf_cache_checkpoint: Path,
    minilm: Path,
) -> tuple[Path, Path]:
    """(path to analyze, directory tree to watch)."""
    return {
        "sharded": (checkpoint("llama"), checkpoint("llama")),
        "single-file": (single_file_checkpoint, single_file_checkpoint.parent),
        "hf-cache": (hf_cache_checkpoint, hf_cache_checkpoint),
        "minilm": (minilm, minilm),
    }[request.param]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda f: f.__name__[3:])
def test_checkpoint_is_never_written(
    operation: Callable[[Path, Path], None],
    checkpoint_path: tuple[Path, Path],
    watched: Callable[[Path], None],
    minilm: Path,
    tmp_path: Path,
) -> None:
    path, tree = checkpoint_path
    if path == minilm and operation not in (op_analyze, op_analyze_spectral):
        pytest.skip("MiniLM is checked with analyze; recommend, plot and CLI on the fixtures")
    before = snapshot(tree)
    watched(tree)
    operation(path, tmp_path)
    assert _writes == []
    assert snapshot(tree) == before


def test_the_checks_can_fail(tmp_path: Path, watched: Callable[[Path], None]) -> None:
    """The snapshot sees an mtime-only change and the audit hook sees a write open."""
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"x")
    before = snapshot(tmp_path)
    os.utime(f, ns=(1, 1))
    assert snapshot(tmp_path) != before
    watched(tmp_path)
    with open(f, "ab"):
        pass
    assert _writes and str(f.resolve()) in _writes[0]
