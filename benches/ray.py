"""``executor="ray"`` against the local engine, on a two-node Ray cluster on loopback.

    unshare -n bash -c 'ip link set lo up && exec python benches/ray.py'          # all three
    unshare -n bash -c 'ip link set lo up && exec python benches/ray.py --only scan --rounds 3'

Ray binds the machine's outward address even for a local cluster and these machines allow
loopback traffic only: run it inside a network namespace with only loopback (the script
refuses to start otherwise). The cluster is ``ray.cluster_utils.Cluster``: a head node and one
more, one CPU each (``--cpus-per-node``), started once; every figure is a ratio of runs
interleaved round by round in this process (the machine is shared: absolute times move with
its load, recorded with each round).

- ``scan``: the 2-layer real-data Llama-3-8B-shaped bf16 checkpoint
  (``checkpoints.build_real_layers(2)``, 2.8 GB, as ``benches/scan.py``), page cache warm:
  ``analyze(spectral=True, threads=2)`` in this process against ``executor="ray"`` with one
  thread per task (two tasks at a time, one per node). Goal: Ray ≤ 1.15× local.
- ``overhead``: per-task cost: ``--tiny`` 64×64 f32 matrices (one shard), one Ray task per
  matrix (``bytes_per_task=1``) against the local engine with 1 thread; (Ray − local) / tasks.
- ``many``: ``analyze_many`` of 8 tiny random-init fixture checkpoints (``tests/checkpoints.py``:
  8 architectures, sharded by ``save_pretrained``) and of 8 copies of the real MiniLM:
  ``executor="ray"`` (threads 1) against the local loop (threads 2).
- ``costs``: one matrix of each shape of the 2-layer checkpoint, one thread, in this process:
  wall and CPU seconds, passes (the per-matrix costs of the on-paper scaling table).

Writes ``--out`` (JSON: every round, the CPU's model name / family / model / AVX-512 flags,
the load average before each run) and prints one line per figure.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
# This file is ray.py: its directory goes last on the path, after the installed ray package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.append(str(HERE))


def cpu() -> dict[str, Any]:
    """``lscpu``'s model name, family, model and AVX-512 flags."""
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    return {
        "model_name": fields.get("Model name", "").strip(),
        "family": fields.get("CPU family", "").strip(),
        "model": fields.get("Model", "").strip(),
        "cores": os.cpu_count(),
        "avx512": sorted(f for f in flags if f.startswith("avx512")),
    }


def _loopback_only() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
        except OSError:
            return
    sys.exit(
        "this machine has a route to other hosts: run inside a loopback-only network namespace\n"
        "  unshare -n bash -c 'ip link set lo up && exec python benches/ray.py'"
    )


def _timed(fn: Callable[[], Any]) -> tuple[float, float]:
    load = os.getloadavg()[0]
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t, load


def _rounds(
    name: str, runs: dict[str, Callable[[], Any]], rounds: int, results: dict[str, Any]
) -> None:
    """Interleaved rounds of every run; the ratio of each round's ray / local time."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    loads: list[list[float]] = []
    for r in range(rounds):
        order = list(runs) if r % 2 == 0 else list(reversed(runs))
        row = []
        for k in order:
            seconds, load = _timed(runs[k])
            times[k].append(seconds)
            row.append(load)
        loads.append(row)
        print(f"  {name} round {r + 1}: " + ", ".join(f"{k} {times[k][-1]:.2f} s" for k in runs))
    ratios = [a / b for a, b in zip(times["ray"], times["local"])]
    results[name] = {"seconds": times, "ratios": ratios, "load_before": loads}
    print(
        f"{name}: ray/local median {statistics.median(ratios):.3f} "
        f"(rounds: {', '.join(f'{x:.3f}' for x in ratios)}; local median "
        f"{statistics.median(times['local']):.2f} s, ray {statistics.median(times['ray']):.2f} s; "
        f"load {min(min(x) for x in loads):.1f}–{max(max(x) for x in loads):.1f})"
    )


def bench_scan(rounds: int, results: dict[str, Any]) -> None:
    import lora_rank
    from checkpoints import build_real_layers
    from lora_rank.executors import ray as ray_executor

    path = build_real_layers(2)
    for shard in path.glob("*.safetensors"):  # warm: every run reads from the page cache
        with open(shard, "rb") as f:
            while f.read(1 << 24):
                pass
    tasks: list[int] = []

    def on_ray() -> None:
        lora_rank.analyze(path, spectral=True, threads=1, executor="ray", progress=False)
        tasks.append(ray_executor.last_run.tasks)

    _rounds(
        "scan",
        {
            "local": lambda: lora_rank.analyze(path, spectral=True, threads=2, progress=False),
            "ray": on_ray,
        },
        rounds,
        results,
    )
    results["scan"]["tasks"] = tasks
    results["scan"]["bytes"] = sum(p.stat().st_size for p in path.glob("*.safetensors"))


def bench_costs(results: dict[str, Any]) -> None:
    """Core-seconds of one matrix of each shape of the 2-layer checkpoint, one thread, warm
    (the inputs of the on-paper scaling table in benches/README.md)."""
    import lora_rank
    from checkpoints import build_real_layers
    from lora_rank import _core
    from lora_rank.executors.scan import Scan
    from lora_rank.spectral.settings import SpectralSettings

    scan = Scan.of_report(lora_rank.analyze(build_real_layers(2)))
    seen: dict[tuple[int, int], int] = {}
    for i, job in enumerate(scan.jobs):
        shape = (sum(r for *_, r in job[1]), job[2])
        if ".layers.1." not in job[0] and shape not in seen:
            seen[shape] = i
    costs = []
    for shape, i in seen.items():
        load = os.getloadavg()[0]
        t = time.perf_counter()
        cpu0 = time.process_time()
        out = _core.spectra(scan.shards, [scan.jobs[i]], SpectralSettings(threads=1))
        row = {
            "name": scan.jobs[i][0],
            "shape": list(shape),
            "elements": shape[0] * shape[1],
            "seconds": time.perf_counter() - t,
            "cpu_seconds": time.process_time() - cpu0,
            "passes": out[0]["iterations"],
            "load_before": load,
        }
        costs.append(row)
        print(
            f"  {row['name']} {shape[0]}×{shape[1]}: {row['seconds']:.2f} s wall, "
            f"{row['cpu_seconds']:.2f} s CPU, {row['passes']} passes, "
            f"{1e9 * row['cpu_seconds'] / row['elements']:.2f} ns/element (load {load:.1f})"
        )
    results["costs"] = costs


#: The on-paper models: ``(matrices, rows, cols, stored bytes per element)`` per matrix class.
#: DeepSeek-V3 (config.json of deepseek-ai/DeepSeek-V3: hidden 7168, 61 layers of which 3
#: dense (intermediate 18432) and 58 MoE (256 routed experts + 1 shared, intermediate 2048),
#: MLA attention, vocabulary 129280; FP8 weights, bf16 embeddings and lm_head) and Llama-3-70B
#: (hidden 8192, intermediate 28672, 80 layers, 8 KV heads, vocabulary 128256; bf16).
DEEPSEEK_V3 = [
    ("routed experts", 58 * 256 * 3, 2048, 7168, 1),
    ("shared experts", 58 * 3, 2048, 7168, 1),
    ("dense MLP (layers 0-2)", 3 * 3, 18432, 7168, 1),
    ("attention q_a", 61, 1536, 7168, 1),
    ("attention q_b", 61, 24576, 1536, 1),
    ("attention kv_a", 61, 576, 7168, 1),
    ("attention kv_b", 61, 32768, 512, 1),
    ("attention o", 61, 7168, 16384, 1),
    ("embed_tokens, lm_head", 2, 129280, 7168, 2),
]
LLAMA3_70B = [
    ("q, o", 80 * 2, 8192, 8192, 2),
    ("k, v", 80 * 2, 1024, 8192, 2),
    ("gate, up, down", 80 * 3, 28672, 8192, 2),
    ("embed_tokens, lm_head", 2, 128256, 8192, 2),
]


def paper(results: dict[str, Any]) -> dict[str, Any]:
    """The on-paper scaling table from the measured per-matrix costs (``costs``) and the
    per-task overhead (``overhead``); assumptions in benches/README.md ("Ray executor")."""
    from lora_rank.executors.ray import task_bytes

    costs = results["costs"]
    layer = [c for c in costs if "embed" not in c["name"] and "lm_head" not in c["name"]]
    big = [c for c in costs if "embed" in c["name"] or "lm_head" in c["name"]]
    # CPU ns per stored element for one whole solve (all its passes), one thread.
    ns_layer = statistics.median(1e9 * c["cpu_seconds"] / c["elements"] for c in layer)
    ns_big = statistics.median(1e9 * c["cpu_seconds"] / c["elements"] for c in big)
    task_ms = statistics.median(results["overhead"]["ms_per_task"])
    fp8 = 1.2  # FP8 block-scaled vs bf16 per element (benches/README.md, issue 17)
    delta = 1.59  # a ΔW solve vs a single-checkpoint solve (benches/README.md, issue 33)
    node_cores, node_gbps, nfs_gbps = 16, 1.25, 2.0
    out: dict[str, Any] = {
        "ns_per_element_layers": ns_layer,
        "ns_per_element_embeddings": ns_big,
        "ms_per_task": task_ms,
        "rows": [],
    }

    def model(
        name: str, classes: list[Any], factor_fp8: bool, factor: float, shards: int, reads: int
    ) -> None:
        core_s = 0.0
        total_bytes = 0
        largest = 0.0
        matrices = 0
        for label, n, rows, cols, size in classes:
            ns = ns_big if "embed" in label else ns_layer
            f = (fp8 if factor_fp8 and size == 1 else 1.0) * factor
            one = rows * cols * ns * 1e-9 * f
            core_s += n * one
            largest = max(largest, one)
            total_bytes += n * rows * cols * size * reads
            matrices += n
        for nodes in (1, 8, 64):
            slots = nodes * node_cores
            # The executor's own sizing (one thread per task), plus one split per shard.
            tasks = math.ceil(total_bytes / task_bytes(total_bytes, slots)) + shards
            compute = core_s / slots + tasks * task_ms / 1000 / slots
            read_node = total_bytes / 1e9 / (nodes * node_gbps)
            read_nfs = total_bytes / 1e9 / nfs_gbps
            out["rows"].append(
                {
                    "model": name,
                    "nodes": nodes,
                    "core_seconds": core_s,
                    "compute_s": compute,
                    "largest_matrix_s": largest,
                    "read_per_node_s": read_node,
                    "read_shared_nfs_s": read_nfs,
                    "wall_bucket_s": max(compute, largest, read_node),
                    "wall_nfs_s": max(compute, largest, read_nfs),
                    "bytes": total_bytes,
                    "matrices": matrices,
                    "tasks": tasks,
                }
            )

    model("DeepSeek-V3 671B spectral scan (FP8)", DEEPSEEK_V3, True, 1.0, 163, 1)
    model("Llama-3-70B ΔW spectra (compare, bf16)", LLAMA3_70B, False, delta, 2 * 30, 2)
    for r in out["rows"]:
        print(
            f"| {r['model']} | {r['nodes']} | {r['compute_s']:.0f} s | {r['largest_matrix_s']:.0f} s "
            f"| {r['read_per_node_s']:.0f} s | {r['wall_bucket_s']:.0f} s | {r['wall_nfs_s']:.0f} s |"
        )
    return out


def _tiny_checkpoint(out: Path, n: int) -> Path:
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {
        f"model.layers.{i}.mlp.down_proj.weight": rng.standard_normal((64, 64)).astype("float32")
        for i in range(n)
    }
    save_file(tensors, str(out / "model.safetensors"))
    return out


def bench_overhead(rounds: int, tiny: int, work: Path, results: dict[str, Any]) -> None:
    import lora_rank
    from lora_rank import _core
    from lora_rank.executors import ray as ray_executor
    from lora_rank.executors.scan import Scan
    from lora_rank.spectral.settings import SpectralSettings

    path = _tiny_checkpoint(work / "tiny", tiny)
    scan = Scan.of_report(lora_rank.analyze(path))
    settings = SpectralSettings(threads=1)
    _rounds(
        "overhead",
        {
            "local": lambda: _core.spectra(scan.shards, scan.jobs, settings),
            "ray": lambda: ray_executor.run([scan], settings, progress=False, bytes_per_task=1),
        },
        rounds,
        results,
    )
    per = [
        (a - b) / len(scan.jobs)
        for a, b in zip(
            results["overhead"]["seconds"]["ray"], results["overhead"]["seconds"]["local"]
        )
    ]
    results["overhead"]["tasks"] = len(scan.jobs)
    results["overhead"]["ms_per_task"] = [1000 * x for x in per]
    print(
        f"overhead: {1000 * statistics.median(per):.1f} ms per task (median; {len(scan.jobs)} tasks)"
    )


def bench_many(rounds: int, work: Path, results: dict[str, Any]) -> None:
    import importlib.util

    import lora_rank

    # tests/checkpoints.py (the fixtures), not benches/checkpoints.py.
    spec = importlib.util.spec_from_file_location(
        "test_checkpoints", HERE.parent / "tests" / "checkpoints.py"
    )
    assert spec is not None and spec.loader is not None
    fixtures = importlib.util.module_from_spec(spec)
    sys.modules["test_checkpoints"] = fixtures
    spec.loader.exec_module(fixtures)

    archs = ["llama", "mistral", "qwen2", "gemma", "phi3", "gpt2", "bert", "mixtral"]
    tiny = []
    for a in archs:
        out = work / "fixtures" / a
        if not (out / "config.json").exists():
            fixtures.save_checkpoint(fixtures.ARCHS[a], out)
        tiny.append(out)
    minilm = [lora_rank.demo_checkpoint()] * 8
    for name, paths in (("many_fixtures", tiny), ("many_minilm", minilm)):
        _rounds(
            name,
            {
                "local": lambda p=paths: [
                    lora_rank.analyze(x, spectral=True, threads=2, progress=False) for x in p
                ],
                "ray": lambda p=paths: lora_rank.analyze_many(
                    p, spectral=True, threads=1, executor="ray", progress=False
                ),
            },
            rounds,
            results,
        )
        results[name]["checkpoints"] = [str(p) for p in paths]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", choices=("scan", "overhead", "many", "costs"), action="append")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--tiny", type=int, default=200, help="tiny matrices of the overhead run")
    p.add_argument("--cpus-per-node", type=int, default=1)
    p.add_argument("--out", type=Path, default=HERE / "results" / "ray.json")
    p.add_argument(
        "--paper",
        action="store_true",
        help="only the on-paper scaling table, from the costs and overhead in --out",
    )
    args = p.parse_args()
    if args.paper:
        results = json.loads(args.out.read_text())
        results["paper"] = paper(results)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        return
    _loopback_only()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore", message="no architecture table")
    import ray
    from ray.cluster_utils import Cluster

    which = args.only or ["scan", "overhead", "many", "costs"]
    # --only: the other sections of an earlier run of --out are kept.
    earlier = json.loads(args.out.read_text()) if args.only and args.out.exists() else {}
    results: dict[str, Any] = {
        **earlier,
        "date": datetime.date.today().isoformat(),
        "cpu": cpu(),
        "python": platform.python_version(),
        "ray": ray.__version__,
        "nodes": 2,
        "cpus_per_node": args.cpus_per_node,
        "command": " ".join(sys.argv),
    }
    print(json.dumps(results["cpu"]))
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": args.cpus_per_node})
    work = Path(tempfile.mkdtemp(prefix="lora-rank-ray-bench-"))
    try:
        c.add_node(num_cpus=args.cpus_per_node)
        c.wait_for_nodes()
        ray.init(address=c.address, log_to_driver=False)
        assert {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]} == {"127.0.0.1"}
        # Warm-up: the workers' processes and their import of lora_rank, once per node.
        import lora_rank

        lora_rank.analyze(lora_rank.demo_checkpoint(), spectral=True, threads=1, executor="ray")
        for name, bench in (
            ("overhead", lambda: bench_overhead(args.rounds, args.tiny, work, results)),
            ("many", lambda: bench_many(args.rounds, work, results)),
            ("scan", lambda: bench_scan(args.rounds, results)),
            ("costs", lambda: bench_costs(results)),
        ):
            if name in which:
                bench()
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(results, indent=1) + "\n")
    finally:
        ray.shutdown()
        c.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
