"""A whole spectral scan of a Llama-3-8B-shaped checkpoint, cold, extrapolated to 32 layers.

    python benches/scan.py                          # 6 layers, 3 rounds, the installed build
    python benches/scan.py --layers 2 --rounds 1    # smaller (2.9 GB instead of 4.7 GB)
    python benches/scan.py --build old=/path/a --build new=/path/b   # builds interleaved
    python benches/scan.py --noise                  # every matrix Gaussian noise
    python benches/scan.py --kernels bf16,f32       # both pass kernels, interleaved

The checkpoint is ``checkpoints.build_real_layers(layers)`` (real-data-like bf16 layers: MP bulk
+ power-law top per matrix; Gaussian embed_tokens and lm_head; the true 8B vocabulary, hidden
and intermediate sizes; ``--noise``: every matrix 0.02·N(0, 1)) under ``benches/data/``. Each run is a fresh process that drops the
shards' pages (``POSIX_FADV_DONTNEED``), then times ``lora_rank.analyze(dir, spectral=True)``
with the default settings, noting when each tensor finishes (progress callback).

Extrapolation: layer ``i`` is done when its last matrix is; one layer costs
(done[L−2] − done[1]) / (L − 3) (the layers in the middle of the scan, away from its start and
its end), and 32 layers + embed_tokens + lm_head = the whole scan + (32 − L) × that. Also per
run: CPU time (user + sys), the sum of passes over all matrices, peak anonymous memory over
the process's baseline (sampled every 5 ms). ``--build label=dir`` runs with ``dir`` first on
``PYTHONPATH`` (a ``python/`` directory holding a built ``lora_rank``), builds interleaved
round by round. Writes ``--out`` (JSON) and prints one line per run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

LAYER = re.compile(r"\.layers\.(\d+)\.")
TARGET_LAYERS = 32


def _drop_pages(path: Path) -> None:
    for shard in sorted(path.glob("*.safetensors")):
        fd = os.open(shard, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def child(path: Path, threads: Optional[int]) -> None:
    """One cold scan in this process; prints a ``BENCH`` JSON line."""
    import lora_rank
    from bench_spectra import RssSampler, _status

    _drop_pages(path)
    done_at: dict[str, float] = {}
    base = _status()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    with RssSampler() as sampler:
        t0 = time.perf_counter()
        report = lora_rank.analyze(
            str(path),
            spectral=True,
            threads=threads,
            progress=lambda d, t, name: done_at.__setitem__(name, time.perf_counter() - t0),
        )
        total = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    spectra = [m.spectrum for m in report.modules if m.spectrum is not None]
    print(
        "BENCH "
        + json.dumps(
            {
                "total_s": total,
                "cpu_s": (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime),
                "done_at_s": done_at,
                "matrices": len(spectra),
                "passes": sum(s.iterations for s in spectra),
                "not_converged": sum(1 for s in spectra if not s.converged),
                "peak_rss_anon_delta_mib": sampler.peak - base["RssAnon"],
                "lora_rank": lora_rank.__file__,
            }
        )
    )


def extrapolate(done_at: dict[str, float], total: float, layers: int) -> dict[str, float]:
    """Per-layer time from the middle layers and the 32-layer extrapolation (module docs)."""
    done: dict[int, float] = {}
    for name, t in done_at.items():
        m = LAYER.search(name)
        if m:
            i = int(m.group(1))
            done[i] = max(done.get(i, 0.0), t)
    if layers < 4:  # no middle layers: every layer's share of the time between layers
        per_layer = (max(done.values()) - min(done.values())) / max(layers - 1, 1)
    else:
        per_layer = (done[layers - 2] - done[1]) / (layers - 3)
    return {
        "per_layer_s": per_layer,
        "extrapolated_s": total + (TARGET_LAYERS - layers) * per_layer,
    }


def run(
    path: Path,
    layers: int,
    threads: Optional[int],
    pythonpath: Optional[str],
    kernel: Optional[str] = None,
) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if kernel:
        env["LORA_RANK_KERNEL"] = kernel
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, env.get("PYTHONPATH")]))
    args = [sys.executable, __file__, "--child", str(path)]
    if threads:
        args += ["--threads", str(threads)]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
    line = next(ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("BENCH "))
    out: dict[str, Any] = json.loads(line[6:])
    out.update(extrapolate(out["done_at_s"], out["total_s"], layers))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--noise", action="store_true", help="Gaussian-noise layers")
    ap.add_argument("--build", action="append", default=[], help="label=python dir")
    ap.add_argument(
        "--kernels",
        default="",
        help="comma-separated LORA_RANK_KERNEL values run side by side (bf16,f32,faer); default: "
        "the engine's own choice",
    )
    ap.add_argument("--out", type=Path, default=HERE / "results" / "scan.json")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.threads)
        return
    from bench_pass import cpu_model
    from checkpoints import build_real_layers

    path = build_real_layers(args.layers, noise=args.noise)
    builds = [tuple(b.split("=", 1)) for b in args.build] or [("installed", "")]
    runs: list[dict[str, Any]] = []
    kernels = args.kernels.split(",") if args.kernels else [""]
    for r in range(args.rounds):
        for (build, pythonpath), kernel in [(b, k) for b in builds for k in kernels]:
            label = f"{build}/{kernel}" if kernel else build
            out = run(path, args.layers, args.threads, pythonpath or None, kernel or None)
            out.update(build=label, round=r, load_1min=os.getloadavg()[0])
            runs.append(out)
            print(
                f"{label} round {r}: scan {out['total_s']:.1f} s, {out['per_layer_s']:.2f} s/layer"
                f" → 32 layers {out['extrapolated_s']:.0f} s; CPU {out['cpu_s']:.0f} s; passes "
                f"{out['passes']}; peak RssAnon +{out['peak_rss_anon_delta_mib']:.0f} MiB",
                flush=True,
            )
    doc = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "checkpoint": str(path),
        "layers": args.layers,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(args.out)


if __name__ == "__main__":
    main()
