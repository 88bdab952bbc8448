"""Hostile and broken checkpoints (issue 7): every case of ``hostile_cases.CASES`` raises the
expected ``LoraRankError`` subclass (or the OS's own OSError with its filename) naming the file
and the problem, from ``analyze()`` with and without ``spectral=True``, never loads a pickle,
and exits with status 2 from the CLI.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import lora_rank
import numpy as np
import pytest
from hostile_cases import (
    CASES,
    INDEX,
    MARKER_NAME,
    SHARD,
    Case,
    check,
    hf_cache,
    split,
    tensors,
    write_pickle,
    write_sharded,
    write_valid,
)

HAVE_SPECTRAL = importlib.util.find_spec("lora_rank.spectral") is not None
HAVE_CLI = importlib.util.find_spec("lora_rank.cli") is not None


def _ids(c: Case) -> str:
    return c.name


@pytest.mark.timeout(30)
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_case_raises_a_clear_error(case: Case, tmp_path: Path) -> None:
    check(case, tmp_path)


@pytest.mark.timeout(30)
@pytest.mark.skipif(not HAVE_SPECTRAL, reason="lora_rank.spectral (spectral=True) not built yet")
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_case_raises_the_same_error_in_spectral_mode(case: Case, tmp_path: Path) -> None:
    check(case, tmp_path, spectral=True)


# -- the bases of the cases are valid: every error above comes from the one corruption ---------


def test_base_single_file_matches_the_reference_reader(tmp_path: Path) -> None:
    from safetensors import safe_open

    path = write_valid(tmp_path / SHARD, metadata={"format": "pt"})
    report = lora_rank.analyze(tmp_path)
    header, _ = split(path)
    raw = path.read_bytes()
    with safe_open(str(path), "np") as f:
        assert sorted(t.name for t in report.tensors) == sorted(f.keys())
        for t in report.tensors:
            array = f.get_tensor(t.name)
            assert t.shape == array.shape
            assert raw[t.begin : t.end] == array.tobytes()
    assert report.total_params == sum(a.size for a in tensors().values())
    assert header["__metadata__"] == {"format": "pt"}


def test_base_sharded_and_hf_cache_layouts_are_valid(tmp_path: Path) -> None:
    plain = lora_rank.analyze(write_sharded(tmp_path / "plain"))
    entry, _ = hf_cache(tmp_path / "hub")
    cached = lora_rank.analyze(entry)
    expected = {k: v.shape for k, v in tensors().items()}
    for report in (plain, cached):
        assert {t.name: t.shape for t in report.tensors} == expected
        assert len(report.shards) == 2


def test_the_pickle_bomb_is_live(tmp_path: Path) -> None:
    """The never-unpickled assertion can fail: loading the test pickle creates the marker."""
    path = write_pickle(tmp_path / "pytorch_model.bin")
    assert not (tmp_path / MARKER_NAME).exists()
    pickle.loads(path.read_bytes())
    assert (tmp_path / MARKER_NAME).exists()


def test_a_pickle_beside_safetensors_is_ignored_not_loaded(tmp_path: Path) -> None:
    write_valid(tmp_path / SHARD)
    write_pickle(tmp_path / "pytorch_model.bin")
    report = lora_rank.analyze(tmp_path)
    assert len(report.tensors) == len(tensors())
    assert not (tmp_path / MARKER_NAME).exists()


def test_index_json_passed_directly_is_followed(tmp_path: Path) -> None:
    write_sharded(tmp_path)
    assert len(lora_rank.analyze(tmp_path / INDEX).tensors) == len(tensors())


def test_index_json_over_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    """A 200 MB (sparse) index is refused from its size, without reading it."""
    write_sharded(tmp_path)
    with (tmp_path / INDEX).open("r+b") as f:
        f.truncate(200_000_000)
    with pytest.raises(lora_rank.NotACheckpointError, match="larger than the 100000000-byte"):
        lora_rank.analyze(tmp_path)


def test_header_at_the_size_limit_costs_at_most_its_length(tmp_path: Path) -> None:
    """A header length just under the limit over a sparse file of zeros: read once (100 MB),
    rejected as JSON; the memory bound is the format's limit."""
    path = tmp_path / SHARD
    n = 99_999_992
    path.write_bytes(n.to_bytes(8, "little"))
    with path.open("r+b") as f:
        f.truncate(8 + n)
    with pytest.raises(lora_rank.HeaderError, match="not valid JSON"):
        lora_rank.analyze(path)


_MEMORY_SCRIPT = """
import resource, sys, tempfile
from pathlib import Path
sys.path.insert(0, {tests!r})
import lora_rank
from hostile_cases import CASES, check
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with tempfile.TemporaryDirectory() as tmp:
    for i, case in enumerate(CASES):
        d = Path(tmp) / str(i)
        d.mkdir()
        check(case, d)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)
"""


@pytest.mark.timeout(120)
def test_all_cases_run_in_bounded_memory() -> None:
    """The whole catalogue (including a sparse 200 MB file and a 200 MB sparse header length)
    raises its errors with little memory: nothing is read beyond the header bytes."""
    tests = str(Path(__file__).parent)
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT.format(tests=tests)],
        capture_output=True,
        text=True,
        check=True,
    )
    growth_mb = int(out.stdout.split()[-1])
    assert growth_mb < 64, f"peak RSS grew by {growth_mb} MB"


# -- CLI: exit status 2 and the message on stderr ----------------------------------------------

_CLI_CASES = [
    c
    for c in CASES
    if c.name
    in (
        "empty file",
        "duplicate tensor names",
        "index points to a missing shard",
        "shard path escapes with ../",
        "pytorch_model.bin directory",
        "symlink loop in HF snapshot",
    )
]


@pytest.mark.skipif(not HAVE_CLI, reason="lora_rank.cli (the lora-rank command) not built yet")
@pytest.mark.parametrize("spectral", [False, True], ids=["header", "spectral"])
@pytest.mark.parametrize("case", _CLI_CASES, ids=_ids)
def test_cli_exits_2_with_the_message(
    case: Case, spectral: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lora_rank.cli import main

    path, culprit = case.build(tmp_path)
    argv = ["analyze", str(path), "--quiet"] + (["--spectral"] if spectral else [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(culprit) in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / MARKER_NAME).exists()


@pytest.mark.skipif(not HAVE_CLI, reason="lora_rank.cli (the lora-rank command) not built yet")
def test_cli_process_exit_status(tmp_path: Path) -> None:
    """The real process: ``python -m lora_rank analyze BROKEN`` exits 2, one line on stderr."""
    path = write_valid(tmp_path / SHARD)
    with path.open("r+b") as f:
        f.write((1 << 40).to_bytes(8, "little"))
    proc = subprocess.run(
        [sys.executable, "-m", "lora_rank", "analyze", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert str(path) in proc.stderr and "exceeds the safetensors limit" in proc.stderr


# -- spectral-only cases: bad weights, files changing underneath a scan ------------------------


@pytest.mark.skipif(not HAVE_SPECTRAL, reason="lora_rank.spectral (spectral=True) not built yet")
def test_nonfinite_weights_are_reported_per_module_and_the_scan_goes_on(tmp_path: Path) -> None:
    t = tensors()
    q, up = "model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.up_proj.weight"
    t[q][3, 5], t[q][7, 1] = np.nan, np.inf
    t[up][0, 0] = np.inf  # F16
    k = np.random.default_rng(1).standard_normal((16, 16), np.float32)
    t["model.layers.0.self_attn.k_proj.weight"] = k
    write_valid(tmp_path / SHARD, t)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.warns(UserWarning) as caught:
        report = lora_rank.analyze(tmp_path, spectral=True, progress=False)
    messages = " | ".join(str(w.message) for w in caught)
    for name, count in ((q, 2), (up, 1)):
        spectrum = report.module(name.removesuffix(".weight")).spectrum
        assert spectrum is not None and spectrum.nonfinite == count
        assert np.isnan(spectrum.spectral_norm) and np.isnan(spectrum.stable_rank)
        assert name in messages
        assert any(name in w for w in report.warnings)
    clean = report.module("model.layers.0.self_attn.k_proj").spectrum
    assert clean is not None and clean.nonfinite == 0
    expected = np.linalg.svd(k.astype(np.float64), compute_uv=False)
    got = np.array(clean.singular_values)
    np.testing.assert_allclose(got, expected[: len(got)], rtol=1e-5)


def _many_matrices(directory: Path, count: int = 30, n: int = 512) -> Path:
    """A checkpoint big enough that a single-threaded spectral scan takes about a second."""
    rng = np.random.default_rng(0)
    data = {
        f"model.layers.{i}.mlp.up_proj.weight": rng.standard_normal((n, n), np.float32)
        for i in range(count)
    }
    write_valid(directory / SHARD, data)
    (directory / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return directory


@pytest.fixture(scope="module")
def many_matrices(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _many_matrices(tmp_path_factory.mktemp("many"))


# Runs in a child process so that a SIGBUS or a crash fails the test instead of killing pytest.
_CHANGE_SCRIPT = """
import os, sys, time
sys.path.insert(0, {tests!r})
from pathlib import Path
import lora_rank
root, mode = Path(sys.argv[1]), sys.argv[2]
shard = root / "model.safetensors"
size = shard.stat().st_size
seen = []

def change(done, total, name):
    if seen or mode == "mid-tensor":
        return
    seen.append(done)
    if mode == "truncate":
        os.truncate(shard, size // 2)
    elif mode == "rewrite":
        with shard.open("r+b") as f:
            f.seek(size // 2)
            f.write(os.urandom(size - size // 2))
    elif mode == "rewrite-keep-mtime":  # as rsync --times or touch -r leave it
        before = shard.stat()
        time.sleep(0.02)
        with shard.open("r+b") as f:
            f.seek(size // 2)
            f.write(os.urandom(size - size // 2))
        os.utime(shard, ns=(before.st_atime_ns, before.st_mtime_ns))
        after = shard.stat()
        assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    elif mode == "append":
        with shard.open("ab") as f:
            f.write(bytes(4096))
    elif mode == "replace":
        tmp = root / "new"
        tmp.write_bytes(os.urandom(size))
        os.replace(tmp, shard)

kwargs = {{}}
if mode == "mid-tensor":  # one big matrix: truncate while its solver passes read it
    import threading
    threading.Timer(0.5, lambda: (seen.append(1), os.truncate(shard, size // 2))).start()
    kwargs = dict(method="randomized", rtol=1e-12)
try:
    lora_rank.analyze(root, spectral=True, threads=1, progress=change, **kwargs)
except (lora_rank.LoraRankError, OSError) as e:
    print(type(e).__name__, "after", seen, "::", e)
else:
    print("no error after", seen)
"""


def _run_change_script(root: Path, mode: str) -> str:
    """Run the scan of ``root`` in a child that changes its shard (``mode``); its one line."""
    script = _CHANGE_SCRIPT.format(tests=str(Path(__file__).parent))
    proc = subprocess.run(
        [sys.executable, "-c", script, str(root), mode], capture_output=True, text=True, timeout=110
    )
    assert proc.returncode == 0, f"child died with {proc.returncode}: {proc.stderr[-2000:]}"
    return proc.stdout.strip()


@pytest.mark.timeout(120)
@pytest.mark.skipif(not HAVE_SPECTRAL, reason="lora_rank.spectral (spectral=True) not built yet")
@pytest.mark.parametrize("mode", ["truncate", "rewrite", "rewrite-keep-mtime", "append", "replace"])
def test_shard_changed_during_a_spectral_scan(
    many_matrices: Path, tmp_path: Path, mode: str
) -> None:
    """Truncating, rewriting (also with the modification time set back, same size), growing or
    replacing the shard while the scan reads it (right after the first tensor is reported)
    gives FileChangedError naming the shard, never SIGBUS nor statistics mixed from two
    versions."""
    root = tmp_path / "ckpt"
    shutil.copytree(many_matrices, root)
    out = _run_change_script(root, mode)
    assert out.startswith("FileChangedError after [1]"), out
    assert str(root / SHARD) in out, out


@pytest.mark.timeout(30)
@pytest.mark.parametrize("ref", ["fifo", "..", "missing-rev"])
def test_hf_cache_with_a_bad_refs_main_falls_back_to_its_only_snapshot(
    tmp_path: Path, ref: str
) -> None:
    """``refs/main`` as a FIFO (reading it would block), pointing outside ``snapshots/``, or
    naming a revision that is not there: the only snapshot is used; nothing hangs."""
    entry, snap = hf_cache(tmp_path)
    main = entry / "refs" / "main"
    main.unlink()
    if ref == "fifo":
        os.mkfifo(main)
    else:
        main.write_text(ref if ref == ".." else "f" * 40)
    report = lora_rank.analyze(entry)
    assert Path(report.path) == snap
    assert len(report.tensors) == len(tensors())


@pytest.mark.timeout(120)
@pytest.mark.skipif(not HAVE_SPECTRAL, reason="lora_rank.spectral (spectral=True) not built yet")
def test_shard_truncated_while_one_big_matrix_is_read(tmp_path: Path) -> None:
    """A 64 MB matrix whose file is cut in half 0.5 s into its solver passes (positioned reads,
    no mapping): FileChangedError naming the shard, never SIGBUS."""
    big = np.random.default_rng(0).standard_normal((4096, 4096), np.float32)
    write_valid(tmp_path / SHARD, {"model.layers.0.mlp.up_proj.weight": big})
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    out = _run_change_script(tmp_path, "mid-tensor")
    assert out.startswith("FileChangedError after [1]"), out
    assert str(tmp_path / SHARD) in out, out
