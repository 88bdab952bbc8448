"""One solver pass side by side, passes per Llama-8B matrix shape, whole-model extrapolation.

    python benches/bench_pass.py                 # all sections (~5 min on 2 idle cores)
    python benches/bench_pass.py --only pass     # pass throughput only
    python benches/bench_pass.py --quick         # smoke run: small shapes, temp files

Sections (every timing is min over ``--runs`` interleaved runs, both sides in this process):

- ``pass``: 14336×4096 bf16 (``--pass-shapes``: others, e.g. every Llama-8B shape), block 40,
  2 threads, the sides interleaved run by run (ours with each kernel, torch). Ours: one fused
  pass ``acc += Pᵀ(P·X)`` as (time of ``max_iter=7`` − time of ``max_iter=1``) / 6 with
  ``rtol=1e-12`` (no early stop), with each kernel (``LORA_RANK_KERNEL`` = ``bf16``: the AVX-512
  BF16 kernels; ``f32``: decode to f32 + the AVX-512F kernels; ``faer``: decode + faer's
  matmul; a kernel the CPU lacks falls back, so its row then times the next). torch: ``Aᵀ(A·X)`` in f32 and in bf16 on the matrix in memory, and a 4096³ f32 GEMM
  (the machine's practical peak). GFLOP/s counts 4·m·n·b per pass.
- ``accuracy``: top-32 max relative error vs the float64 Gram-eigenvalue reference, each
  kernel, 4096×4096 real-like bf16.
- ``solve`` (issue 36 goal 2): the *whole* default top-32 solve of each LLM matrix shape
  (``--solve-shapes``: Llama-3-8B, Qwen3, Mixtral and DeepSeek-V3 experts, the 128256×4096
  embedding), with each kernel, each in a fresh process, against
  torch bf16 doing only the products of the same number of passes (p × one ``Aᵀ(A·X)``, block
  40, 2 threads, the matrix in memory). Ratio = torch's products / our whole solve (goal ≥ 1).
  Interleaved: each run times ours (every kernel) and then torch; min over ``--runs``.
- ``shapes``: every Llama-3-8B matrix shape, real-like (MP bulk + power-law top) and pure
  Gaussian noise, default settings: passes, time, stop reason; extrapolated to 32 layers +
  embed_tokens + lm_head (128256×4096). ``--max-iter N`` caps the passes (the time at a
  fixed pass count).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

LLAMA_SHAPES = {  # name: (rows, cols, count per layer)
    "q_proj/o_proj": (4096, 4096, 2),
    "k_proj/v_proj": (1024, 4096, 2),
    "gate_proj/up_proj": (14336, 4096, 2),
    "down_proj": (4096, 14336, 1),
}
EMBED = (128256, 4096)
#: ``--pass-shapes`` for every matrix shape of Llama-3-8B.
PASS_SHAPES = [f"{m}x{n}" for m, n, _ in LLAMA_SHAPES.values()] + [f"{EMBED[0]}x{EMBED[1]}"]
#: The sides of every section: label and ``LORA_RANK_KERNEL`` value.
KERNELS = {"bf16 kernels": "bf16", "f32 kernels": "f32", "faer": "faer"}


def write_matrix(path: Path, m: int, n: int, kind: str, seed: int) -> Path:
    import torch
    from safetensors.torch import save_file

    if not path.exists():
        if kind == "noise":
            g = torch.Generator().manual_seed(seed)
            w = (0.02 * torch.randn(m, n, generator=g)).to(torch.bfloat16)
        else:
            from checkpoints import _spectral_matrix

            w = _spectral_matrix((m, n), seed=seed)
        tmp = path.with_suffix(".tmp")
        save_file({"w": w}, str(tmp))
        os.replace(tmp, path)
    return path


def spectra(path: Path, m: int, n: int, **kw: Any) -> tuple[float, dict[str, Any]]:
    from lora_rank import _core
    from lora_rank.spectral.settings import SpectralSettings

    with open(path, "rb") as f:
        begin = 8 + int.from_bytes(f.read(8), "little")
    size = path.stat().st_size
    t = time.perf_counter()
    settings = SpectralSettings(method="randomized", **kw)
    out = _core.spectra([(str(path), size)], [("w", [(0, begin, m)], n, "BF16")], settings)
    return time.perf_counter() - t, out[0]


def child_spectra(path: Path, m: int, n: int, env: dict[str, str], **kw: Any) -> float:
    """Per-pass time of our solver in a fresh process (the kernel switch is read once): the
    least of ``runs`` differences."""
    p, runs = str(path), kw["runs"]
    code = (
        "r = []\n"
        f"for _ in range({runs}):\n"
        f"    t1, _ = b.spectra(Path({p!r}), {m}, {n}, max_iter=1, rtol=1e-12, threads=2)\n"
        f"    t7, _ = b.spectra(Path({p!r}), {m}, {n}, max_iter=7, rtol=1e-12, threads=2)\n"
        "    r.append((t7 - t1) / 6)\n"
        "print(json.dumps(r))"
    )
    return float(min(in_child(code, env)))


def in_child(code: str, env: dict[str, str]) -> Any:
    """Runs ``code`` in a fresh Python process (``bench_pass`` imported as ``b``, ``Path`` and
    ``json`` too) with ``env`` added to the environment; the JSON of its last line."""
    prelude = (
        f"import sys, json; sys.path.insert(0, {str(HERE)!r}); import bench_pass as b\n"
        "from pathlib import Path\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", prelude + code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def torch_times(path: Path, runs: int, b: int = 40) -> dict[str, float]:
    import torch
    from safetensors.torch import load_file

    torch.set_num_threads(2)
    a16 = load_file(str(path))["w"]
    a32 = a16.float()
    x32 = torch.randn(a32.shape[1], b)
    x16 = x32.to(torch.bfloat16)
    g = torch.randn(4096, 4096)
    res: dict[str, list[float]] = {"torch f32 AT(AX)": [], "torch bf16 AT(AX)": [], "gemm": []}
    a16.T @ (a16 @ x16)  # warm-up (first-call dispatch and allocation)
    for _ in range(runs):
        t = time.perf_counter()
        a32.T @ (a32 @ x32)
        res["torch f32 AT(AX)"].append(time.perf_counter() - t)
        t = time.perf_counter()
        a16.T @ (a16 @ x16)
        res["torch bf16 AT(AX)"].append(time.perf_counter() - t)
        t = time.perf_counter()
        g @ g
        res["gemm"].append(time.perf_counter() - t)
    return {k: min(v) for k, v in res.items()}


def section_pass(root: Path, runs: int, m: int, n: int) -> dict[str, Any]:
    path = write_matrix(root / f"pass_{m}x{n}.safetensors", m, n, "real", m + n)
    flops = 4 * m * n * 40
    # Interleaved: each run times ours (every kernel, child processes) and then torch.
    runs_ours: dict[str, list[float]] = {label: [] for label in KERNELS}
    runs_torch = []
    for _ in range(runs):
        for label, kernel in KERNELS.items():
            runs_ours[label].append(child_spectra(path, m, n, {"LORA_RANK_KERNEL": kernel}, runs=1))
        runs_torch.append(torch_times(path, 1))
    tt = {k: min(r[k] for r in runs_torch) for k in runs_torch[0]}
    rows = {f"lora_rank {label}": min(times) for label, times in runs_ours.items()}
    rows["torch f32 AT(AX)"] = tt["torch f32 AT(AX)"]
    rows["torch bf16 AT(AX)"] = tt["torch bf16 AT(AX)"]
    out: dict[str, Any] = {k: {"s": v, "gflops": flops / v / 1e9} for k, v in rows.items()}
    out["torch f32 GEMM 4096^3"] = {"s": tt["gemm"], "gflops": 2 * 4096**3 / tt["gemm"] / 1e9}
    # A kernel the CPU lacks falls back (bf16 -> f32 -> faer): its row then times the next.
    from lora_rank import _core

    out["bf16_kernels_available"] = _core.bf16_kernels_available()
    out["f32_kernels_available"] = _core.f32_kernels_available()
    out["runs"] = {**runs_ours, "torch": runs_torch}
    return out


#: ``--solve-shapes`` default: every LLM matrix shape of issue 36 goal 2.
SOLVE_SHAPES = [
    "1024x4096",
    "4096x4096",
    "14336x4096",
    "4096x14336",
    "768x2048",
    "2048x7168",
    "128256x4096",
]


def child_solve(path: Path, m: int, n: int, env: dict[str, str]) -> dict[str, Any]:
    """Our whole default solve of ``path`` in a fresh process (the kernel is chosen once per
    process): its wall time, passes, error estimate and singular values."""
    code = (
        f"t, d = b.spectra(Path({str(path)!r}), {m}, {n}, threads=2)\n"
        "print(json.dumps({'s': t, 'passes': d['iterations'], 'sv_error': d['sv_error'], "
        "'singular_values': d['singular_values']}))"
    )
    result: dict[str, Any] = in_child(code, env)
    return result


def torch_pass_bf16(path: Path, runs: int, b: int = 40) -> float:
    """Least time of one torch bf16 ``Aᵀ(A·X)`` (block ``b``, 2 threads, matrix in memory)."""
    import torch
    from safetensors.torch import load_file

    torch.set_num_threads(2)
    a16 = load_file(str(path))["w"]
    x16 = torch.randn(a16.shape[1], b).to(torch.bfloat16)
    a16.T @ (a16 @ x16)  # warm-up
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        a16.T @ (a16 @ x16)
        best = min(best, time.perf_counter() - t)
    return best


def section_solve(root: Path, runs: int, shapes: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for shape in shapes:
        m, n = (int(d) for d in shape.split("x"))
        kind = "noise" if m > 100_000 else "real"  # the real-data embeddings are Gaussian too
        path = write_matrix(root / f"solve_{kind}_{m}x{n}.safetensors", m, n, kind, 7 * m + n)
        solves: dict[str, list[dict[str, Any]]] = {label: [] for label in KERNELS}
        torch_pass = []
        for _ in range(runs):
            for label, kernel in KERNELS.items():
                solves[label].append(child_solve(path, m, n, {"LORA_RANK_KERNEL": kernel}))
            torch_pass.append(torch_pass_bf16(path, 3))
        tp = min(torch_pass)
        row: dict[str, Any] = {"torch_bf16_pass_s": tp}
        for label, r in solves.items():
            best = min(r, key=lambda d: d["s"])
            row[label] = {
                "s": best["s"],
                "passes": best["passes"],
                "sv_error": best["sv_error"],
                "torch_products_s": tp * best["passes"],
                "ratio": tp * best["passes"] / best["s"],
                "runs_s": [d["s"] for d in r],
            }
        out[shape] = row
        print(shape, json.dumps(row), flush=True)
    return out


def section_accuracy(root: Path, m: int, n: int) -> dict[str, Any]:
    import numpy as np
    import torch
    from safetensors.torch import load_file

    path = write_matrix(root / f"acc_{m}x{n}.safetensors", m, n, "real", 3 * m + n)
    a = load_file(str(path))["w"].double()
    gram = a.T @ a if n <= m else a @ a.T
    ref = np.sqrt(np.clip(torch.linalg.eigvalsh(gram).numpy()[::-1][:32], 0, None))
    out = {}
    for label, kernel in KERNELS.items():
        d = child_solve(path, m, n, {"LORA_RANK_KERNEL": kernel})
        sv = np.array(d["singular_values"])
        out[label] = {
            "top32_max_rel_err": float(np.max(np.abs(sv - ref) / ref)),
            "iterations": int(d["passes"]),
        }
    return out


def section_shapes(root: Path, quick: bool, max_iter: int | None = None) -> dict[str, Any]:
    shapes = dict(LLAMA_SHAPES)
    if not quick:
        shapes["embed_tokens/lm_head"] = (*EMBED, 0)
    out: dict[str, Any] = {}
    for kind in ("real", "noise"):
        rows = {}
        for name, (m, n, count) in shapes.items():
            if quick:
                m, n = m // 8, n // 8
            # The real-data checkpoint's embeddings are Gaussian too (checkpoints._real_tensor).
            k = "noise" if count == 0 else kind
            path = write_matrix(root / f"shape_{k}_{m}x{n}.safetensors", m, n, k, m ^ n)
            kw: dict[str, Any] = {"threads": 2}
            if max_iter:
                kw["max_iter"] = max_iter
            t, d = spectra(path, m, n, **kw)
            rows[name] = {
                "shape": [m, n],
                "count_per_layer": count,
                "seconds": t,
                "passes": d["iterations"],
                "converged": d["converged"],
                "sv_error": d["sv_error"],
                "energy_rank_90": d["energy_rank_90"],
            }
            print(kind, name, rows[name], flush=True)
        layer = sum(r["seconds"] * r["count_per_layer"] for r in rows.values())
        embed = rows.get("embed_tokens/lm_head", {"seconds": 0.0})["seconds"]
        out[kind] = {
            "matrices": rows,
            "layer_s": layer,
            "embed_s": embed,
            "llama8b_extrapolated_s": 32 * layer + 2 * embed,
        }
    return out


def cpu_model() -> str:
    """``lscpu``'s model name with its family/model numbers and whether AVX-512 BF16 is here."""
    fields: dict[str, str] = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
        if not line.strip():
            break
    flags = fields.get("flags", "").split()
    return (
        f"{fields.get('model name', '?')} (family {fields.get('cpu family', '?')} model "
        f"{fields.get('model', '?')}, {os.cpu_count()} CPUs, AVX-512 BF16 "
        f"{'yes' if 'avx512_bf16' in flags else 'no'}, AMX {'yes' if 'amx_bf16' in flags else 'no'})"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="pass,accuracy,shapes")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--max-iter", type=int, default=None, help="shapes: cap the passes")
    ap.add_argument(
        "--pass-shapes",
        default="14336x4096",
        help="pass: comma-separated MxN (every Llama-8B shape: " + ",".join(PASS_SHAPES) + ")",
    )
    ap.add_argument(
        "--solve-shapes", default=",".join(SOLVE_SHAPES), help="solve: comma-separated MxN"
    )
    ap.add_argument("--out", default=str(HERE / "results" / "pass.json"))
    args = ap.parse_args()
    only = set(args.only.split(","))
    tmp = tempfile.TemporaryDirectory() if args.quick else None
    root = Path(tmp.name) if tmp else HERE / "data"
    root.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"uptime_before": os.getloadavg(), "cpu": cpu_model()}
    # The kernel the engine picks by itself in a fresh process (``pass_kernel``, measured).
    picked = subprocess.run(
        [sys.executable, "-c", "from lora_rank import _core; print(_core.pass_kernel())"],
        capture_output=True,
        text=True,
        check=True,
    )
    res["default_kernel"] = picked.stdout.strip()
    print("cpu:", res["cpu"], "| default pass kernel:", res["default_kernel"], flush=True)
    if "pass" in only:
        shapes = ["1792x512"] if args.quick else args.pass_shapes.split(",")
        for i, shape in enumerate(shapes):
            m, n = (int(d) for d in shape.split("x"))
            out = section_pass(root, 1 if args.quick else args.runs, m, n)
            if i == 0:
                res["pass"] = out
            res.setdefault("pass_shapes", {})[shape] = out
            print(shape, json.dumps(out, indent=1), flush=True)
    if "solve" in only:
        shapes = ["1792x512"] if args.quick else args.solve_shapes.split(",")
        res["solve"] = section_solve(root, 1 if args.quick else args.runs, shapes)
    if "accuracy" in only:
        m, n = (512, 512) if args.quick else (4096, 4096)
        res["accuracy"] = section_accuracy(root, m, n)
        print(json.dumps(res["accuracy"], indent=1), flush=True)
    if "shapes" in only:
        res["shapes"] = section_shapes(root, args.quick, args.max_iter)
        res["shapes_max_iter"] = args.max_iter
        print(json.dumps({k: v["llama8b_extrapolated_s"] for k, v in res["shapes"].items()}))
    res["uptime_after"] = os.getloadavg()
    if not args.quick:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1))
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
