"""Hub checkpoints read remotely (headers by HTTP range requests, spectra streamed) against the
local hub-like server of ``tests/hub_server.py`` on 127.0.0.1: results equal the local
analysis of the same files, every fault gives a one-line error, nothing leaves the machine."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lora_rank
import pytest
from hub_server import HubServer, Repo, point_hub_client_at
from lora_rank.sources import hub as hub_source

SHA = "1234567890abcdef1234567890abcdef12345678"
TOKEN = "hf_test_token"


def _single_file_with_big_header(out: Path) -> Path:
    """A real safetensors file (written by the format's own library) whose header is larger
    than the 100 kB first range: 1,500 tensors with long names."""
    import numpy as np
    from safetensors.numpy import save_file

    out.mkdir(parents=True, exist_ok=True)
    tensors = {
        f"model.layers.{i}.some_rather_long_module_name_to_grow_the_header.weight": np.full(
            (2, 3), i, dtype=np.float32
        )
        for i in range(1500)
    }
    save_file(tensors, str(out / "model.safetensors"))
    return out


def _huge_header_file(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    body = b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    (out / "model.safetensors").write_bytes(struct.pack("<Q", 200_000_000) + body + bytes(40_000))
    return out


#: A sparse shard's size: what a Range-ignoring server would send for each request.
SPARSE_SIZE = 4 * 2**30
#: Bytes the server may send for a request the client refuses (ISSUE 38: kilobytes, not GB).
REFUSED_MAX = 64 * 1024
_ITEM = {"F32": 4, "BF16": 2}


def _sparse_shard(path: Path, tensors: dict[str, tuple[str, list[int]]], filler_name: str) -> None:
    """A safetensors file of :data:`SPARSE_SIZE` bytes whose header lists ``tensors`` and a
    1-D ``filler_name`` (a norm weight: no scan reads it) up to that size, its data a hole
    (``truncate``: zeros that take no disk)."""
    header: dict[str, Any] = {}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        n = _ITEM[dtype] * shape[0] * (shape[1] if len(shape) > 1 else 1)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    room = SPARSE_SIZE - 8 - offset - len(raw) - 256
    filler = room // 4
    header[filler_name] = {
        "dtype": "F32",
        "shape": [filler],
        "data_offsets": [offset, offset + 4 * filler],
    }
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset + 4 * filler)


def _sparse_repos(root: Path) -> dict[str, Repo]:
    """``sparse/sharded``: two 4 GB shards with an index and a config (the header of each fits
    its first range); ``sparse/bigheader``: one 4 GB file, no index, whose header needs a
    second range (it is larger than the first range's 100 kB)."""
    sharded = root / "sharded"
    sharded.mkdir(parents=True)
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "vocab_size": 128,
    }
    (sharded / "config.json").write_text(json.dumps(config))
    weight_map = {}
    for i in range(2):
        name = f"model-0000{i + 1}-of-00002.safetensors"
        tensors = {
            f"model.layers.{i}.self_attn.{p}_proj.weight": ("F32", [64, 64])
            for p in ("q", "k", "v", "o")
        }
        filler = f"model.layers.{i}.input_layernorm.weight"
        _sparse_shard(sharded / name, tensors, filler)
        weight_map.update({t: name for t in [*tensors, filler]})
    index = {"metadata": {}, "weight_map": weight_map}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    big = root / "bigheader"
    big.mkdir()
    tensors = {
        f"model.layers.{i}.some_rather_long_module_name_to_grow_the_header.weight": (
            "BF16",
            [8, 8],
        )
        for i in range(1200)
    }
    _sparse_shard(big / "model.safetensors", tensors, "model.norm.weight")
    assert all(p.stat().st_blocks * 512 < 2**20 for p in root.rglob("*.safetensors"))
    return {"sparse/sharded": Repo(sharded, sha=SHA), "sparse/bigheader": Repo(big, sha=SHA)}


@pytest.fixture(scope="session")
def hub_repos(
    checkpoint: Callable[[str], Path], minilm: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Repo]:
    root = tmp_path_factory.mktemp("hub")
    pickle_only = root / "pickle"
    pickle_only.mkdir()
    (pickle_only / "config.json").write_text('{"model_type": "llama"}')
    (pickle_only / "pytorch_model.bin").write_bytes(b"\x80\x04" + bytes(20_000))
    nothing = root / "nothing"
    nothing.mkdir()
    (nothing / "README.md").write_text("no weights")
    sub = root / "sub"
    (sub / "ckpt").mkdir(parents=True)
    for f in checkpoint("qwen2").iterdir():
        (sub / "ckpt" / f.name).write_bytes(f.read_bytes())
    return {
        "tiny/llama": Repo(checkpoint("llama"), sha=SHA, branches={"v1": SHA}),
        "tiny/mixtral": Repo(checkpoint("mixtral"), sha=SHA),
        "tiny/minilm": Repo(minilm, sha=SHA),
        "tiny/sub": Repo(sub, sha=SHA),
        "tiny/gated": Repo(checkpoint("llama"), sha=SHA, gated=True, token=TOKEN),
        "tiny/private": Repo(checkpoint("llama"), sha=SHA, private=True, token=TOKEN),
        "tiny/pickle": Repo(pickle_only, sha=SHA),
        "tiny/nothing": Repo(nothing, sha=SHA),
        "tiny/bigheader": Repo(_single_file_with_big_header(root / "big"), sha=SHA),
        "tiny/hugeheader": Repo(_huge_header_file(root / "huge"), sha=SHA),
        **_sparse_repos(root / "sparse"),
    }


@pytest.fixture
def hub(
    hub_repos: dict[str, Repo], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[HubServer]:
    """The server, with huggingface_hub pointed at it (as HF_ENDPOINT does at import), online,
    an empty cache and no token."""
    with HubServer(hub_repos) as server:
        point_hub_client_at(server, monkeypatch, tmp_path)
        yield server


def _inventory(report: lora_rank.Report) -> Any:
    tensors = [(t.name, t.dtype, t.shape, t.shard, t.begin, t.end) for t in report.tensors]
    modules = [(m.name, m.kind, m.shape, m.params, m.is_lora_target) for m in report.modules]
    return tensors, modules, report.total_params, report.model_type


def _range_requests(hub: HubServer, path_part: str = "") -> list[Any]:
    return [r for r in hub.log if r.range and r.status == 206 and path_part in r.path]


@pytest.mark.parametrize("repo", ["tiny/llama", "tiny/mixtral", "tiny/minilm"])
def test_remote_inventory_equals_local(hub: HubServer, repo: str) -> None:
    remote = lora_rank.analyze(repo)
    local = lora_rank.analyze(hub.repos[repo].root)
    assert _inventory(remote) == _inventory(local)
    assert remote.path == f"hf://{repo}@{SHA}"
    shards = {s.rsplit("/", 1)[1] for s in remote.shards}
    # One range request per shard (the header fits the first range), after one 302 hop.
    ranged = _range_requests(hub)
    assert sorted(r.path.split("/")[-1].split("?")[0] for r in ranged) == sorted(shards)
    assert all(r.body_bytes <= 100_000 for r in ranged)
    assert not any(r.range is None and r.path.endswith(".safetensors") for r in hub.log)


def test_shards_in_parallel_one_get_each_at_the_commit(hub: HubServer) -> None:
    # 0.3 s per request: a shard read while another is in flight overlaps it for sure.
    hub.latency = 0.3
    remote = lora_rank.analyze("tiny/mixtral")
    shards = sorted(p.name for p in hub.repos["tiny/mixtral"].root.glob("*.safetensors"))
    assert len(remote.shards) == len(shards) == 9
    # Read one after another, at most 2 requests (index and config.json) would be in flight.
    assert hub.max_in_flight >= len(shards)
    # No HEAD, no revision lookup: the index at the branch, each shard by one ranged GET at the
    # commit the index came from (plus the hop of its 302).
    assert {r.method for r in hub.log} == {"GET"}
    assert not any(r.path.startswith("/api/models/") for r in hub.log)
    resolved = [r.path for r in hub.log if "/resolve/" in r.path and ".safetensors" in r.path]
    assert sorted(p.rsplit("/", 1)[1] for p in resolved if "index" not in p) == shards
    assert all(f"/resolve/{SHA}/" in p for p in resolved if "index" not in p)
    assert all(r.range for r in hub.log if "/cdn/" in r.path)


def test_the_garbage_collector_is_left_as_it_was(hub: HubServer) -> None:
    import gc

    assert gc.isenabled()
    lora_rank.analyze("tiny/llama")
    assert gc.isenabled()
    with pytest.raises(lora_rank.HubError):
        lora_rank.analyze("tiny/llama", revision="nope")
    assert gc.isenabled()
    gc.disable()
    try:
        lora_rank.analyze("tiny/mixtral")
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_revision_subfolder_and_urls(hub: HubServer) -> None:
    local = _inventory(lora_rank.analyze(hub.repos["tiny/sub"].root / "ckpt"))
    assert _inventory(lora_rank.analyze(f"hf://tiny/sub@{SHA}/ckpt")) == local
    url = f"{hub.url}/tiny/sub/resolve/main/ckpt/model.safetensors.index.json"
    assert _inventory(lora_rank.analyze(url)) == local
    llama = _inventory(lora_rank.analyze(hub.repos["tiny/llama"].root))
    assert _inventory(lora_rank.analyze("tiny/llama", revision="v1")) == llama
    assert _inventory(lora_rank.analyze("hf://tiny/llama@v1")) == llama


@pytest.mark.parametrize(
    ("name", "revision"),
    [
        ("model.safetensors.index.json", None),
        ("sub dir/model-00001-of-00002.safetensors", "main"),
        ("ckpt/ünïcode #1.safetensors", "refs/pr/1"),
        ("a?b&c.safetensors", "v1.0+local"),
    ],
)
def test_urls_are_the_ones_huggingface_hub_builds(
    hub: HubServer, name: str, revision: str | None
) -> None:
    from huggingface_hub import constants, hf_hub_url

    http = hub_source._Http(hub_source.HubSource("org/name"), headers={})
    want = hf_hub_url("org/name", name, revision=revision, endpoint=constants.ENDPOINT)
    assert http.url(name, revision) == want


def test_plain_url_on_another_server_gets_no_token(
    hub: HubServer, hub_repos: dict[str, Repo], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with HubServer(hub_repos) as other:
        url = f"{other.url}/tiny/llama/resolve/main/model.safetensors.index.json"
        remote = lora_rank.analyze(url)
        assert _inventory(remote) == _inventory(lora_rank.analyze(hub_repos["tiny/llama"].root))
        assert other.log and not hub.log


def test_header_larger_than_the_first_range_takes_a_second_request(hub: HubServer) -> None:
    remote = lora_rank.analyze("tiny/bigheader")
    local = lora_rank.analyze(hub.repos["tiny/bigheader"].root)
    assert _inventory(remote) == _inventory(local)
    ranged = _range_requests(hub, "model.safetensors")
    assert ranged[0].range == "bytes=0-99999"
    assert len(ranged) == 2


def test_cached_snapshot_needs_no_network(
    hub: HubServer, hf_cache_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_cache_checkpoint.parent))
    remote = lora_rank.analyze("tiny/llama")
    assert hub.log == []
    assert _inventory(remote) == _inventory(lora_rank.analyze(hf_cache_checkpoint))
    assert remote.remote_shards is None
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert _inventory(lora_rank.analyze("tiny/llama")) == _inventory(remote)


ERRORS = [
    ("nobody/nothing-here", {}, lora_rank.HubError, "nobody/nothing-here: repo not found"),
    ("tiny/llama", {"revision": "nope"}, lora_rank.HubError, "revision 'nope' not found"),
    ("tiny/gated", {}, lora_rank.HubError, "gated repo"),
    ("tiny/private", {}, lora_rank.HubError, "repo not found (or private: log in"),
    ("tiny/pickle", {}, lora_rank.UnsupportedFormatError, "only pickle-based weights"),
    ("tiny/nothing", {}, lora_rank.NotACheckpointError, "no *.safetensors files"),
    ("tiny/hugeheader", {}, lora_rank.HeaderError, "exceeds the safetensors limit"),
]


@pytest.mark.parametrize(("repo", "kw", "exc", "needle"), ERRORS, ids=[e[0] for e in ERRORS])
def test_errors_are_one_line_and_name_the_repo(
    hub: HubServer, repo: str, kw: dict[str, str], exc: type, needle: str
) -> None:
    with pytest.raises(exc) as info:
        lora_rank.analyze(repo, **kw)
    message = str(info.value)
    assert needle in message and repo.split("/")[1] in message, message
    assert "\n" not in message
    if repo == "tiny/gated":
        assert "HF_TOKEN" in message and "hf auth login" in message
    if repo == "tiny/pickle":
        assert not any(".bin" in r.path for r in hub.log)


def test_token_opens_gated_and_private_repos(
    hub: HubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    local = _inventory(lora_rank.analyze(hub.repos["tiny/llama"].root))
    assert _inventory(lora_rank.analyze("tiny/gated")) == local
    assert _inventory(lora_rank.analyze("tiny/private")) == local


def test_offline_and_not_cached(hub: HubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(lora_rank.HubError, match=r"tiny/llama: not in the local .*HF_HUB_OFFLINE"):
        lora_rank.analyze("tiny/llama")
    assert hub.log == []


FAULTS = [
    ("whole", {"match": "/cdn/", "times": None}, "answered a range request with status 200"),
    ("bad_range", {"match": "/cdn/", "times": None}, "wrong Content-Range"),
    ("truncate", {"match": "/cdn/", "times": None}, "truncated response body after 4 attempts"),
]


@pytest.mark.parametrize(("kind", "kw", "needle"), FAULTS, ids=[f[0] for f in FAULTS])
def test_server_faults_are_errors(
    hub: HubServer, kind: str, kw: dict[str, Any], needle: str
) -> None:
    hub.fault(kind, **kw)
    with pytest.raises(lora_rank.HubError) as info:
        lora_rank.analyze("tiny/llama")
    assert needle in str(info.value) and "tiny/llama" in str(info.value), str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("kind", "kw"),
    [
        ("status", {"status": 500, "times": 2}),
        ("status", {"status": 429, "times": 1}),
        ("status", {"status": 503, "times": 1, "match": "/cdn/"}),
        ("reset", {"times": 1, "match": "/cdn/"}),
        ("truncate", {"times": 1, "match": "/cdn/"}),
        ("slow", {"delay": 0.3, "times": 3}),
    ],
)
def test_transient_faults_are_retried(hub: HubServer, kind: str, kw: dict[str, Any]) -> None:
    fault = hub.fault(kind, **kw)
    remote = lora_rank.analyze("tiny/llama")
    assert _inventory(remote) == _inventory(lora_rank.analyze(hub.repos["tiny/llama"].root))
    assert fault.hits == fault.times


def test_retries_are_bounded(hub: HubServer) -> None:
    hub.fault("status", status=503, times=None, match="/cdn/")
    with pytest.raises(lora_rank.HubError) as info:
        lora_rank.analyze("tiny/llama")
    # The file, the status, that it was retried, the server's message and request id; not the
    # redirect's URL (on the Hub it carries a signature).
    assert re.fullmatch(
        r"tiny/llama: model-0000\d-of-00005\.safetensors: HTTP error 503 Service Unavailable "
        r"after 4 attempts: injected 503 \(request id local-503-\d+\)",
        str(info.value),
    ), str(info.value)
    attempts = [r for r in hub.log if "/cdn/" in r.path and r.status == 503]
    assert 1 < len(attempts) <= 4 * hub_source.RETRIES * len(hub.repos["tiny/llama"].files())


def test_repo_listing_is_retried_and_bounded(hub: HubServer) -> None:
    # tiny/minilm has no index: its files come from the repo's API listing (/api/models/).
    local = _inventory(lora_rank.analyze(hub.repos["tiny/minilm"].root))
    for kind, kw in [("status", {"status": 503}), ("reset", {})]:
        hub.reset()
        fault = hub.fault(kind, times=2, match="/api/models/", **kw)
        assert _inventory(lora_rank.analyze("tiny/minilm")) == local
        assert fault.hits == 2
    hub.reset()
    hub.fault("status", status=503, times=None, match="/api/models/")
    with pytest.raises(lora_rank.HubError) as info:
        lora_rank.analyze("tiny/minilm")
    assert re.fullmatch(
        r"hf://tiny/minilm: HTTP error 503 Service Unavailable after 4 attempts: injected 503 "
        r"\(request id local-503-\d+\)",
        str(info.value),
    ), str(info.value)
    listings = [r for r in hub.log if r.path.startswith("/api/models/")]
    assert [r.status for r in listings] == [503] * hub_source.RETRIES


@pytest.mark.parametrize("buffer", [2 * 2**20, 2 * 2**10])
@pytest.mark.parametrize("repo", ["tiny/minilm", "tiny/mixtral"])
def test_remote_spectra_equal_local_bit_for_bit(
    hub: HubServer, repo: str, buffer: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A small buffer: several batches, prefetching. A tiny one: matrices larger than half of
    # it go through a temporary file (read by the local engine), deleted once solved.
    monkeypatch.setattr(hub_source, "SPECTRAL_BUFFER", buffer)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    spilled: list[int] = []
    pwrite_all = hub_source._pwrite_all

    def spy(fd: int, at: int, http: Any, url: str, byte_range: tuple[int, int]) -> None:
        spilled.append(byte_range[1] - byte_range[0])
        pwrite_all(fd, at, http, url, byte_range)

    monkeypatch.setattr(hub_source, "_pwrite_all", spy)
    remote = lora_rank.analyze(repo, spectral=True, seed=3, progress=False, top_k=8)
    assert list(tmp_path.iterdir()) == []  # the temporary files and their directory are gone
    if buffer < 2**20:
        assert len(spilled) >= 10, spilled  # most matrices went through files
    local = lora_rank.analyze(hub.repos[repo].root, spectral=True, seed=3, progress=False, top_k=8)
    pairs = list(zip(remote.modules, local.modules))
    assert any(a.spectrum for a, _ in pairs)
    for a, b in pairs:
        assert a.spectrum == b.spectrum, a.name
        assert a.expert_spectra == b.expert_spectra, a.name
    data = sum(r.body_bytes for r in _range_requests(hub, "/cdn/")) - sum(
        r.body_bytes for r in _range_requests(hub, "/cdn/") if r.range.startswith("bytes=0-")
    )
    from lora_rank.spectral.jobs import Plan, job_bytes

    analysed = sum(job_bytes(j) for j in Plan(local).jobs)
    assert analysed <= data <= 1.05 * analysed
    assert not any(r.range is None and "/cdn/" in r.path for r in hub.log)


def test_remote_spectra_see_a_changed_etag(hub: HubServer) -> None:
    report = lora_rank.analyze("tiny/minilm")
    hub.fault("etag", match="/cdn/", times=None)
    from lora_rank.spectral.compute import compute_spectra

    with pytest.raises(
        lora_rank.FileChangedError, match=r"model.safetensors: file changed .* ETag"
    ):
        compute_spectra(report, progress=False)


def test_cli_analyze_hub_repo_through_hf_endpoint(hub: HubServer, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.url,
        "HF_HUB_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0",
        "HF_HOME": str(tmp_path / "home"),
    }
    env.pop("HF_HUB_CACHE", None)
    cmd = [sys.executable, "-m", "lora_rank", "analyze", "tiny/llama", "--format", "json"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    remote = json.loads(out.stdout)
    local = lora_rank.analyze(hub.repos["tiny/llama"].root)
    assert remote["total_params"] == local.total_params
    assert [m["name"] for m in remote["modules"]] == [m.name for m in local.modules]
    bad = [sys.executable, "-m", "lora_rank", "analyze", "nobody/nothing-here"]
    out = subprocess.run(bad, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "repo not found" in out.stderr


def _refusal(where: str) -> str:
    return (
        f"{where}: the server answered a range request with status 200 (the whole file) "
        "instead of 206; refusing to download it"
    )


def _whole_file_answers(hub: HubServer) -> list[Any]:
    """Requests for a range of a sparse shard that the server answered with the whole file."""
    hub.settle()
    return [r for r in hub.log if r.range and r.status == 200 and ".safetensors" in r.path]


SPARSE_FAULTS = [
    # A proxy that answers the first request itself, with the whole file instead of the 302.
    ("first request", "sparse/sharded", {"match": "/resolve/"}),
    # The resolve is right (302), its target (the CDN) ignores Range.
    ("redirect target", "sparse/sharded", {"match": "/cdn/"}),
    # The first range of the header is served; the second (the header is larger) is not.
    ("after a good range", "sparse/bigheader", {"match": "/cdn/", "after": 1}),
]


@pytest.mark.parametrize(
    ("case", "repo", "kw"), SPARSE_FAULTS, ids=[c for c, _, _ in SPARSE_FAULTS]
)
def test_a_server_ignoring_range_costs_kilobytes_not_the_shard(
    hub: HubServer, case: str, repo: str, kw: dict[str, Any]
) -> None:
    hub.fault("whole", times=None, **kw)
    with pytest.raises(lora_rank.HubError) as info:
        lora_rank.analyze(repo)
    message = str(info.value)
    shard = "model" if repo == "sparse/bigheader" else "model-0000[12]-of-00002"
    pattern = re.escape(f"{repo}: ") + shard + re.escape(".safetensors" + _refusal(""))
    assert re.fullmatch(pattern, message), message
    refused = _whole_file_answers(hub)
    # Refused at once, never retried: one whole-file answer per shard at most, each closed by
    # the client after one buffer (the server counts what it wrote to the socket).
    assert 1 <= len(refused) <= 2
    assert all(r.body_bytes <= REFUSED_MAX for r in refused), [r.body_bytes for r in refused]
    if case == "after a good range":
        ranged = [r for r in hub.log if "/cdn/" in r.path]
        assert ranged[0].status == 206 and ranged[0].range == "bytes=0-99999"
        assert ranged[1].status == 200 and ranged[1].range.startswith("bytes=100000-")


@pytest.mark.parametrize("match", ["/cdn/", "/resolve/"])
def test_a_spectral_read_ignoring_range_costs_kilobytes(hub: HubServer, match: str) -> None:
    from lora_rank.spectral.compute import compute_spectra

    report = lora_rank.analyze("sparse/sharded")
    hub.reset()
    hub.fault("whole", match=match, times=None)
    with pytest.raises(lora_rank.HubError) as info:
        compute_spectra(report, progress=False)
    url = f"{hub.url}/sparse/sharded/resolve/{SHA}/model-00001-of-00002.safetensors"
    assert str(info.value) == _refusal(url)
    refused = _whole_file_answers(hub)
    assert len(refused) == 1 and refused[0].body_bytes <= REFUSED_MAX, refused


def test_a_spectral_read_leaves_the_body_of_a_redirect_unread(hub: HubServer) -> None:
    from lora_rank.spectral.compute import compute_spectra

    report = lora_rank.analyze("sparse/sharded")
    hub.reset()
    hub.fault("fat_redirect", match="/resolve/", times=None)
    compute_spectra(report, progress=False)
    hub.settle()
    fat = [r for r in hub.log if r.status == 302]
    assert fat and all(r.body_bytes <= REFUSED_MAX for r in fat), fat
    assert all(m.spectrum for m in report.modules if m.kind.startswith("attn_"))


def test_the_body_of_a_redirect_is_not_read(hub: HubServer) -> None:
    # Each shard's 302 carries the whole 4 GB file as its body: the redirect is followed, the
    # body left unread (the connection closed), the analysis the same.
    hub.fault("fat_redirect", match="/resolve/", times=None)
    remote = lora_rank.analyze("sparse/sharded")
    hub.settle()
    fat = [r for r in hub.log if r.status == 302]
    assert len(fat) == 2 and all(r.body_bytes <= REFUSED_MAX for r in fat), fat
    hub.reset()
    assert _inventory(lora_rank.analyze("sparse/sharded")) == _inventory(remote)


def test_cli_without_network_prints_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "HF_ENDPOINT": f"http://127.0.0.1:{port}",
        "HF_HUB_OFFLINE": "0",
        "HF_HOME": str(tmp_path / "home"),
        "HF_HUB_CACHE": str(tmp_path / "cache"),
    }
    env.pop("HF_TOKEN", None)
    cmd = [sys.executable, "-m", "lora_rank", "analyze", "org/name"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == (
        f"lora-rank analyze: error: org/name: model.safetensors.index.json: could not connect "
        f"to 127.0.0.1:{port} after {hub_source.RETRIES} attempts: [Errno 111] Connection "
        "refused\n"
    ), out.stderr
    # The retries are logged, and shown with --debug (with the traceback).
    out = subprocess.run([*cmd, "--debug"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "retrying in" in out.stderr and "Traceback" in out.stderr, out.stderr


def test_a_body_longer_than_the_range_is_refused(hub: HubServer) -> None:
    # 206 with the right Content-Range, and the rest of the 4 GB file announced: refused from
    # the headers.
    hub.fault("long_body", match="/cdn/", times=None)
    with pytest.raises(lora_rank.HubError) as info:
        lora_rank.analyze("sparse/sharded")
    assert re.fullmatch(
        r"sparse/sharded: model-0000[12]-of-00002\.safetensors: the server announced \d{10} "
        r"bytes for a range of \d+ bytes; refusing to read them",
        str(info.value),
    ), str(info.value)
    hub.settle()
    long = [r for r in hub.log if "/cdn/" in r.path]
    assert 1 <= len(long) <= 2 and all(r.body_bytes <= REFUSED_MAX for r in long), long
    # The same without a Content-Length (chunked): what was asked for is read, then at most a
    # buffer more.
    hub.reset()
    hub.fault("chunked_extra", match="/cdn/", times=None)
    with pytest.raises(lora_rank.HubError) as info:
        lora_rank.analyze("sparse/sharded")
    m = re.fullmatch(
        r"sparse/sharded: model-0000[12]-of-00002\.safetensors: the server sent more than the "
        r"(\d+) bytes requested",
        str(info.value),
    )
    assert m, str(info.value)
    hub.settle()
    extra = [r for r in hub.log if "/cdn/" in r.path]
    assert all(r.body_bytes <= int(m[1]) + REFUSED_MAX for r in extra), extra


def test_a_whole_file_is_bounded(hub: HubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_source, "MAX_WHOLE", 1000)
    size = (hub.repos["tiny/llama"].root / "model.safetensors.index.json").stat().st_size
    with pytest.raises(lora_rank.HubError) as info:
        lora_rank.analyze("tiny/llama")
    assert str(info.value) == (
        f"tiny/llama: model.safetensors.index.json: {size} bytes is larger than the 1000-byte "
        "limit for this file"
    )


def test_the_token_stays_on_the_hub_when_a_redirect_leaves_it(
    hub: HubServer, hub_repos: dict[str, Repo], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Redirects are followed by hub.py itself (each hop checked): the token must go to the
    # Hub's host only, never to the CDN's (another origin), as httpx does.
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with HubServer(hub_repos) as cdn:
        hub.cdn = cdn.url
        remote = lora_rank.analyze("tiny/gated")
    assert _inventory(remote) == _inventory(lora_rank.analyze(hub_repos["tiny/gated"].root))
    assert cdn.log and all("/cdn/" in r.path and not r.authorized for r in cdn.log)
    assert all(r.authorized for r in hub.log if "/resolve/" in r.path)
