"""Remote checkpoints over a local hub-like server (``tests/hub_server.py``, 127.0.0.1).

1. Inventory of the 405B header-true checkpoint (191 shards) served with ``--latency``
   (default 50 ms) added to every request: ``lora_rank.analyze("org/name")`` vs
   ``HfApi().get_safetensors_metadata("org/name")`` on the same server, whole processes,
   interleaved after one untimed warm-up each; plus requests and bytes per shard of both (from
   the server's log) and the floor of a process that only imports.
2. Bytes fetched by a remote spectral scan vs the bytes of the matrices analysed, and its
   spectra against the local scan of the same files (bit-for-bit), on a real-data checkpoint
   (``--spectral-checkpoint``: ``minilm`` by default, or a directory).

Every timed process gets a fresh ``HF_HOME`` (nothing cached), except that it holds
huggingface_hub's registry of AI agent harnesses as a user's ``HF_HOME`` does (fetched from
``/api/agent-harnesses`` for its user agent at most once a day, by both tools alike);
``--fresh-home`` leaves it out, so each process fetches it first: one more serial round trip
in both tools, as on a first run of the day.

Usage: ``python benches/hub.py [--runs N] [--latency S] [--spectral-checkpoint minilm|DIR]
[--skip-inventory] [--skip-spectral] [--no-pycache] [--fresh-home]``. Prints one JSON
document; times are min and median of the runs (the machine is shared: compare the two tools
within one run, not across runs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from hub_server import HubServer, Repo  # noqa: E402

REPO = "meta-llama/Llama-3.1-405B"
OURS = f"import lora_rank; r = lora_rank.analyze({REPO!r}); print(len(r.tensors), len(r.shards))"
#: The fixed cost of our process without a request: interpreter, lora_rank, huggingface_hub's
#: HTTP stack.
FLOOR = "import lora_rank; import huggingface_hub.utils._http"
THEIRS = (
    "from huggingface_hub import HfApi; "
    f"m = HfApi().get_safetensors_metadata({REPO!r}); "
    "print(sum(len(f.tensors) for f in m.files_metadata.values()), len(m.files_metadata))"
)


#: Where the timed processes keep their bytecode (None: as the environment says). With
#: PYTHONDONTWRITEBYTECODE set (as on the machines here), a source checkout of lora_rank is
#: compiled again by every process while huggingface_hub loads the .pyc files of its install;
#: a bytecode cache for both, filled by an untimed warm-up process, makes the two alike (and
#: like an installed lora_rank).
PYCACHE: Optional[str] = None
#: ``--fresh-home``: do not copy the agent-harness registry (:data:`REGISTRY`).
FRESH_HOME = False


#: huggingface_hub's cached registry of agent harnesses (path inside HF_HOME, bytes), copied
#: into every fresh HF_HOME; None: not copied (``--fresh-home``).
REGISTRY: Optional[tuple[str, bytes]] = None


def _save_registry(home: str) -> None:
    """Keep the registry file the warm-up process left in ``home`` (if this huggingface_hub
    version has one)."""
    global REGISTRY
    from huggingface_hub import constants

    path = getattr(constants, "AGENT_HARNESSES_PATH", None)
    if path is None:
        return
    rel = os.path.relpath(path, constants.HF_HOME)
    cached = Path(home) / rel
    if cached.is_file():
        REGISTRY = (rel, cached.read_bytes())


def _env(url: str, home: str) -> dict[str, str]:
    if REGISTRY is not None:
        target = Path(home) / REGISTRY[0]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(REGISTRY[1])
    env = dict(os.environ, HF_ENDPOINT=url, HF_HOME=home, HF_HUB_OFFLINE="0")
    env.update(TRANSFORMERS_OFFLINE="0", HF_HUB_DISABLE_PROGRESS_BARS="1", PYTHONWARNINGS="ignore")
    env.pop("HF_HUB_CACHE", None)
    env.pop("HF_TOKEN", None)
    if PYCACHE is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = PYCACHE
    return env


def _timed(code: str, env: dict[str, str]) -> tuple[float, str]:
    t = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return time.perf_counter() - t, out.stdout.strip()


def _per_shard(log: list[Any], ckpt: Path) -> dict[str, Any]:
    """Requests and body bytes per shard (a 302 hop counts as a request), and in all."""
    shards = {p.name for p in ckpt.glob("*.safetensors")}
    reqs = [r for r in log if r.path.split("?")[0].rsplit("/", 1)[-1] in shards]
    n = len(shards)
    return {
        "shards": n,
        "requests_per_shard": len(reqs) / n,
        "range_requests_206_per_shard": sum(1 for r in reqs if r.status == 206) / n,
        "redirects_302_per_shard": sum(1 for r in reqs if r.status == 302) / n,
        "body_bytes_per_shard": sum(r.body_bytes for r in reqs) / n,
        "all_requests": len(log),
        "all_body_bytes": sum(r.body_bytes for r in log),
        "all_requests_by_method": {
            m: sum(1 for r in log if r.method == m) for m in sorted({r.method for r in log})
        },
    }


def _stats(times: list[float]) -> dict[str, Any]:
    return {"min": min(times), "median": statistics.median(times), "runs": times}


def inventory(runs: int, latency: float) -> dict[str, Any]:
    from checkpoints import SPARSE, build_sparse

    ckpt = build_sparse(SPARSE["llama3.1-405b"])
    with HubServer({REPO: Repo(ckpt, sha="4" * 40)}, latency=latency, threads=256) as hub:
        ours: list[float] = []
        theirs: list[float] = []
        floor: list[float] = []
        outputs = set()
        per_shard: dict[str, Any] = {}
        for code in (FLOOR, OURS, THEIRS):  # warm-up: page cache, bytecode cache
            with tempfile.TemporaryDirectory() as home:
                _timed(code, _env(hub.url, home))
                if code == OURS and not FRESH_HOME:
                    _save_registry(home)
        for i in range(runs):
            with tempfile.TemporaryDirectory() as home:
                floor.append(_timed(FLOOR, _env(hub.url, home))[0])
            for name, code, times in (("ours", OURS, ours), ("theirs", THEIRS, theirs)):
                with tempfile.TemporaryDirectory() as home:
                    hub.reset()
                    seconds, out = _timed(code, _env(hub.url, home))
                times.append(seconds)
                outputs.add((name, out))
                if i == 0:
                    per_shard[name] = _per_shard(hub.log, ckpt)
        return {
            "checkpoint": "llama3.1-405b header-true (191 shards)",
            "latency_s": latency,
            "hf_home": "fresh" if REGISTRY is None else "fresh + agent-harness registry",
            "ours_s": _stats(ours),
            "get_safetensors_metadata_s": _stats(theirs),
            "ratio_of_medians": statistics.median(theirs) / statistics.median(ours),
            "ratio_of_mins": min(theirs) / min(ours),
            "imports_only_s (no request)": _stats(floor),
            "outputs (tensors, shards)": sorted(outputs),
            "requests": per_shard,
        }


def spectral(which: str, latency: float) -> dict[str, Any]:
    import lora_rank
    from huggingface_hub import constants
    from lora_rank.spectral.jobs import Plan, job_bytes

    ckpt = lora_rank.demo_checkpoint() if which == "minilm" else Path(which)
    with HubServer({"org/real": Repo(ckpt, sha="5" * 40)}, latency=latency) as hub:
        constants.ENDPOINT = hub.url
        constants.HUGGINGFACE_CO_URL_TEMPLATE = hub.url + "/{repo_id}/resolve/{revision}/{filename}"
        constants.HF_HUB_OFFLINE = False
        with tempfile.TemporaryDirectory() as cache:
            constants.HF_HUB_CACHE = cache
            t = time.perf_counter()
            remote = lora_rank.analyze("org/real", spectral=True, progress=False, seed=1)
            remote_s = time.perf_counter() - t
        t = time.perf_counter()
        local = lora_rank.analyze(ckpt, spectral=True, progress=False, seed=1)
        local_s = time.perf_counter() - t
        data = [r for r in hub.log if "/cdn/" in r.path and r.status == 206]
        header_bytes = sum(r.body_bytes for r in data if (r.range or "").startswith("bytes=0-"))
        fetched = sum(r.body_bytes for r in data) - header_bytes
        analysed = sum(job_bytes(j) for j in Plan(local).jobs)
        same = all(
            a.spectrum == b.spectrum and a.expert_spectra == b.expert_spectra
            for a, b in zip(remote.modules, local.modules)
        )
        return {
            "checkpoint": str(ckpt),
            "matrices": len(Plan(local).jobs),
            "bytes_analysed": analysed,
            "bytes_fetched_for_data": fetched,
            "bytes_fetched_for_headers": header_bytes,
            "ratio_fetched_to_analysed": fetched / analysed,
            "data_requests": len(data)
            - sum(1 for r in data if (r.range or "").startswith("bytes=0-")),
            "spectra_equal_to_local": same,
            "remote_s": remote_s,
            "local_s": local_s,
        }


_SCAN = """\
import hashlib, sys, time
import lora_rank
t = time.perf_counter()
r = lora_rank.analyze(sys.argv[1], spectral=True, progress=False, seed=1)
took = time.perf_counter() - t
digest = hashlib.sha256(
    repr([(m.name, m.spectrum, m.expert_spectra) for m in r.modules]).encode()
).hexdigest()
status = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
kb = {k: int(status[k].split()[0]) for k in ("VmHWM", "RssAnon")}
print("BENCH", took, digest, kb["VmHWM"], kb["RssAnon"])
"""


def spectral_processes(which: str, latency: float, rounds: int) -> dict[str, Any]:
    """The remote and the local scan of the same checkpoint as whole processes, interleaved
    (remote, local, then local, remote, ...), the server in this process: the time of
    ``analyze(..., spectral=True)`` inside each process, its peak resident memory
    (``VmHWM``: the remote scan's buffers are anonymous memory; the page cache of files read
    with ``pread``, local shards or the remote scan's temporary files, is not in it) and a
    digest of its spectra (equal: bit-for-bit the same)."""
    import lora_rank

    ckpt = Path(lora_rank.demo_checkpoint()) if which == "minilm" else Path(which)
    runs: dict[str, list[tuple[float, str, int, int]]] = {"remote": [], "local": []}
    with HubServer({"org/real": Repo(ckpt, sha="5" * 40)}, latency=latency) as hub:
        env = dict(os.environ, HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0")
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        if PYCACHE is not None:
            env["PYTHONPYCACHEPREFIX"] = PYCACHE

        def run(kind: str) -> None:
            with tempfile.TemporaryDirectory() as home:
                e = dict(env, HF_HOME=home, HF_HUB_CACHE=os.path.join(home, "hub"))
                target = "org/real" if kind == "remote" else str(ckpt)
                out = subprocess.run(
                    [sys.executable, "-c", _SCAN, target],
                    env=e, capture_output=True, text=True, check=True,
                )  # fmt: skip
            line = next(x for x in out.stdout.splitlines() if x.startswith("BENCH "))
            took, digest, hwm, anon = line.split()[1:]
            runs[kind].append((float(took), digest, int(hwm), int(anon)))

        run("local")  # warm-up: page cache, bytecode
        for i in range(rounds):
            for kind in ("remote", "local") if i % 2 == 0 else ("local", "remote"):
                run(kind)
    out: dict[str, Any] = {"checkpoint": str(ckpt), "rounds": rounds, "latency_s": latency}
    for kind, rs in runs.items():
        rs = rs[1:] if kind == "local" else rs  # the warm-up
        times = [r[0] for r in rs]
        out[kind] = {
            "scan_s": _stats(times),
            "peak_rss_kb": max(r[2] for r in rs),
            "digests": sorted({r[1] for r in rs}),
        }
    out["ratio_of_medians"] = out["remote"]["scan_s"]["median"] / out["local"]["scan_s"]["median"]
    out["ratio_of_mins"] = out["remote"]["scan_s"]["min"] / out["local"]["scan_s"]["min"]
    out["peak_rss_over_local_mib"] = (
        out["remote"]["peak_rss_kb"] - out["local"]["peak_rss_kb"]
    ) / 1024
    out["spectra_equal_to_local"] = out["remote"]["digests"] == out["local"]["digests"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--spectral-checkpoint", default="minilm")
    ap.add_argument("--skip-inventory", action="store_true")
    ap.add_argument("--skip-spectral", action="store_true")
    ap.add_argument(
        "--spectral-rounds",
        type=int,
        default=0,
        help="also time the remote and the local scan as whole processes, interleaved",
    )
    ap.add_argument(
        "--no-pycache",
        action="store_true",
        help="leave bytecode as the environment says (see PYCACHE)",
    )
    ap.add_argument(
        "--fresh-home",
        action="store_true",
        help="no agent-harness registry in the fresh HF_HOME (see the module docs)",
    )
    args = ap.parse_args()
    global PYCACHE, FRESH_HOME
    FRESH_HOME = args.fresh_home
    pycache = tempfile.TemporaryDirectory()
    PYCACHE = None if args.no_pycache else pycache.name
    out: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    out["load_average_before"] = os.getloadavg()
    out["bytecode"] = (
        "as the environment says" if PYCACHE is None else "cached (PYTHONPYCACHEPREFIX), warm"
    )
    if not args.skip_inventory:
        out["inventory"] = inventory(args.runs, args.latency)
    if not args.skip_spectral:
        out["spectral"] = spectral(args.spectral_checkpoint, args.latency)
    if args.spectral_rounds:
        out["spectral_processes"] = spectral_processes(
            args.spectral_checkpoint, args.latency, args.spectral_rounds
        )
    out["load_average_after"] = os.getloadavg()
    pycache.cleanup()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
