"""``analyze()`` from 8 Python threads at once gives what serial calls give (issue 7): on the
same checkpoint and on different ones, header-only and spectral, and for broken checkpoints the
same errors. The Rust work runs with the GIL released, so the threads really overlap.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lora_rank
import pytest
from hostile_cases import CASES

THREADS = 8
HAVE_SPECTRAL = importlib.util.find_spec("lora_rank.spectral") is not None
needs_spectral = pytest.mark.skipif(
    not HAVE_SPECTRAL, reason="lora_rank.spectral (spectral=True) not built yet"
)
DIFFERENT = ["llama", "mistral", "qwen2", "gpt2", "bert", "t5", "mixtral"]


def fingerprint(path: Path, **kwargs: Any) -> str:
    """Everything a report says, as JSON (spectra included when computed)."""
    return lora_rank.analyze(path, progress=False, **kwargs).to_json()


def run_parallel(calls: list[Callable[[], str]]) -> list[str]:
    """Start all calls together from ``THREADS`` Python threads; results in call order."""
    with ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(lambda f: f(), calls))


@pytest.fixture(scope="module")
def different(checkpoint: Callable[[str], Path], minilm: Path) -> list[Path]:
    return [checkpoint(name) for name in DIFFERENT] + [minilm]


@pytest.mark.timeout(300)
def test_same_checkpoint_from_8_threads(minilm: Path) -> None:
    serial = fingerprint(minilm)
    assert run_parallel([lambda: fingerprint(minilm)] * THREADS) == [serial] * THREADS


@pytest.mark.timeout(300)
def test_different_checkpoints_from_8_threads(different: list[Path]) -> None:
    serial = [fingerprint(p) for p in different]
    assert len(set(serial)) == len(different)
    parallel = run_parallel([lambda p=p: fingerprint(p) for p in different])  # type: ignore[misc]
    assert parallel == serial


@needs_spectral
@pytest.mark.timeout(600)
def test_same_checkpoint_spectral_from_8_threads(checkpoint: Callable[[str], Path]) -> None:
    path = checkpoint("llama")
    serial = fingerprint(path, spectral=True)
    assert '"spectrum": {' in serial
    assert run_parallel([lambda: fingerprint(path, spectral=True)] * THREADS) == [serial] * THREADS


@needs_spectral
@pytest.mark.timeout(600)
def test_different_checkpoints_spectral_from_8_threads(different: list[Path]) -> None:
    """Spectral scans of 8 checkpoints at once (the real MiniLM among them), each with the
    default thread pool, match the serial scans exactly (the engine is deterministic)."""
    serial = [fingerprint(p, spectral=True) for p in different]
    parallel = run_parallel([lambda p=p: fingerprint(p, spectral=True) for p in different])  # type: ignore[misc]
    assert parallel == serial


@pytest.mark.timeout(300)
def test_broken_checkpoints_from_8_threads(tmp_path: Path) -> None:
    """Every hostile case at once: the same exception type and message as serially."""
    built = []
    for i, case in enumerate(CASES):
        d = tmp_path / str(i)
        d.mkdir()
        built.append(case.build(d)[0])

    def outcome(path: Path) -> str:
        try:
            lora_rank.analyze(path, progress=False)
        except (lora_rank.LoraRankError, OSError) as e:
            return f"{type(e).__name__}: {e}"
        return "no error"

    serial = [outcome(p) for p in built]
    assert "no error" not in serial
    assert run_parallel([lambda p=p: outcome(p) for p in built]) == serial  # type: ignore[misc]
