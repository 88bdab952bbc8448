"""Adapters and fine-tune deltas (issue 33), side by side in one run, interleaved, each measured
call in a fresh process (time and peak RSS):

- ``adapter``: the spectra of a Llama-3-8B-shaped r=64 LoRA adapter (the 7 linear modules of
  ``--layers`` layers, f32 factors) by ``lora_rank.analyze`` (QR of the factors, SVD of the
  r × r core) against forming B·A in torch and ``torch.linalg.svdvals`` (what WeightWatcher
  and PEFT's SVD merge do). Goal ≥ 50×.
- ``scan``: the ΔW spectra of the 14 layer matrices of the 2-layer real-data Llama-8B
  (``checkpoints.build_real_layers``) against a fine-tune of it (every layer matrix + a
  rank-16 update, stored bf16), by the engine's delta source, against the single-checkpoint
  scan of the same 14 matrices of the fine-tune. Goal ≤ 1.3×.
- ``extract``: a rank-16 adapter from the same pair (``--extract-layers`` layers), ``lora-rank extract --r 16`` as a whole
  process against mergekit-extract-lora's method reimplemented here (each module's two
  tensors loaded in fp32, ΔW, a full fp32 ``torch.linalg.svd``, truncated; mergekit does not
  install beside the pinned torch here). Goal ≥ 5× faster, bounded memory.

Usage: ``python benches/deltas.py [--rounds 2] [--only adapter|scan|extract]``; writes
``benches/results/deltas_<cpu>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import checkpoints

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SHAPES = {  # Llama-3-8B: (out, in)
    "self_attn.q_proj": (4096, 4096),
    "self_attn.k_proj": (1024, 4096),
    "self_attn.v_proj": (1024, 4096),
    "self_attn.o_proj": (4096, 4096),
    "mlp.gate_proj": (14336, 4096),
    "mlp.up_proj": (14336, 4096),
    "mlp.down_proj": (4096, 14336),
}
ENV = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")


def cpu() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def run(code: str) -> dict[str, Any]:
    """Run ``code`` (which sets ``seconds`` and ``result``) in a fresh process; its time,
    result and peak RSS (MiB)."""
    tail = (
        "\nimport json as _j\n"
        "_s = dict(l.split(':', 1) for l in open('/proc/self/status') if ':' in l)\n"
        "print('BENCH ' + _j.dumps({'seconds': seconds, 'result': result, "
        "'peak_mib': int(_s['VmHWM'].split()[0]) / 1024}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code + tail], capture_output=True, text=True, env=ENV, check=False
    )
    line = next((x for x in out.stdout.splitlines() if x.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(line[6:])


def build_adapter(out: Path, layers: int, r: int = 64) -> Path:
    import torch
    from safetensors.torch import save_file

    if (out / "adapter_model.safetensors").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for layer in range(layers):
        for name, (o, i) in SHAPES.items():
            key = f"base_model.model.model.layers.{layer}.{name}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(r, i, generator=g) / i**0.5
            tensors[f"{key}.lora_B.weight"] = torch.randn(o, r, generator=g) / 100
    save_file(tensors, str(out / "adapter_model.safetensors"))
    cfg = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": 2 * r,
        "target_modules": [n.split(".")[-1] for n in SHAPES],
    }
    (out / "adapter_config.json").write_text(json.dumps(cfg))
    return out


OURS_ADAPTER = """
import time, lora_rank
t = time.perf_counter()
rep = lora_rank.analyze({path!r}, threads={threads})
seconds = time.perf_counter() - t
result = {{"modules": len(rep.adapted), "sigma1": [m.spectrum.singular_values[0] for m in rep.adapted]}}
"""

TORCH_ADAPTER = """
import time, torch
from safetensors.torch import load_file
torch.set_num_threads({threads})
t = time.perf_counter()
w = load_file({file!r})
sig = []
for k in sorted(w):
    if k.endswith("lora_A.weight"):
        a, b = w[k], w[k.replace("lora_A", "lora_B")]
        sig.append(float(torch.linalg.svdvals((b @ a) * 2.0)[0]))
seconds = time.perf_counter() - t
result = {{"modules": len(sig), "sigma1": sig}}
"""


def bench_adapter(rounds: int, layers: int, threads: int) -> dict[str, Any]:
    path = build_adapter(checkpoints.DATA / f"adapter-llama3-8b-{layers}l-r64", layers)
    ours, torch_ = [], []
    for _ in range(rounds):
        ours.append(run(OURS_ADAPTER.format(path=str(path), threads=threads)))
        torch_.append(
            run(TORCH_ADAPTER.format(file=str(path / "adapter_model.safetensors"), threads=threads))
        )
    s_ours = ours[0]["result"]["sigma1"]
    s_torch = torch_[0]["result"]["sigma1"]
    err = max(abs(a - b) / b for a, b in zip(sorted(s_ours), sorted(s_torch)))
    t_o = min(x["seconds"] for x in ours)
    t_t = min(x["seconds"] for x in torch_)
    return {
        "modules": ours[0]["result"]["modules"],
        "threads": threads,
        "ours_s": [x["seconds"] for x in ours],
        "torch_s": [x["seconds"] for x in torch_],
        "ratio_of_mins": t_t / t_o,
        "max_rel_diff_sigma1": err,
        "peak_mib": {"ours": ours[0]["peak_mib"], "torch": torch_[0]["peak_mib"]},
    }


def build_finetune(base: Path, rank: int = 16) -> Path:
    """``base`` with every layer matrix + a rank-``rank`` update (σ 0.5 → 0.05), bf16."""
    import torch
    from safetensors.torch import load_file, save_file

    out = base.parent / (base.name + f"-ft-r{rank}")
    if (out / "stamp").exists():
        return out
    out.mkdir(exist_ok=True)
    for f in base.iterdir():
        if f.suffix != ".safetensors":
            if f.is_file():
                (out / f.name).write_bytes(f.read_bytes())
            continue
        w = load_file(str(f))
        for k, v in w.items():
            if ".layers." in k and v.ndim == 2:
                g = torch.Generator().manual_seed(len(k))
                u, _ = torch.linalg.qr(torch.randn(v.shape[0], rank, generator=g))
                vv, _ = torch.linalg.qr(torch.randn(v.shape[1], rank, generator=g))
                s = torch.linspace(0.5, 0.05, rank)
                w[k] = (v.float() + (u * s) @ vv.T).to(torch.bfloat16)
        save_file(w, str(out / f.name), metadata={"format": "pt"})
        del w
    (out / "stamp").write_text("ok")
    return out


SCAN = """
import time, lora_rank
from lora_rank import _core
from lora_rank.spectral.jobs import Plan, shard_files
from lora_rank.spectral.settings import SpectralSettings
from lora_rank.deltas.compare import _shift
b, f = lora_rank.analyze({base!r}), lora_rank.analyze({ft!r})
pb, pf = Plan(b), Plan(f)
sel = [i for i, (m, e) in enumerate(pf.targets) if m.layer is not None]
jobs = [pf.jobs[i] for i in sel]
settings = SpectralSettings(top_k=32)
delta = {delta}
t = time.perf_counter()
if delta:
    off = len(f.shards)
    bi = {{m.name: i for i, (m, e) in enumerate(pb.targets)}}
    minus = [(_shift(pb.jobs[bi[pf.targets[i][0].name]], off), None) for i in sel]
    res = _core.spectra(shard_files(f) + shard_files(b), jobs, settings, minus=minus)
else:
    res = _core.spectra(shard_files(f), jobs, settings)
seconds = time.perf_counter() - t
result = {{"matrices": len(res), "passes": sum(d["iterations"] for d in res),
           "sigma1": [d["singular_values"][0] for d in res]}}
"""


def bench_scan(rounds: int) -> dict[str, Any]:
    base = checkpoints.build_real_layers(2)
    ft = build_finetune(base)
    single, delta = [], []
    for _ in range(rounds):
        single.append(run(SCAN.format(base=str(base), ft=str(ft), delta=False)))
        delta.append(run(SCAN.format(base=str(base), ft=str(ft), delta=True)))
    planted = 0.5
    err = max(abs(s - planted) / planted for s in delta[0]["result"]["sigma1"])
    t_s = min(x["seconds"] for x in single)
    t_d = min(x["seconds"] for x in delta)
    return {
        "single_s": [x["seconds"] for x in single],
        "delta_s": [x["seconds"] for x in delta],
        "ratio_of_mins": t_d / t_s,
        "passes": {"single": single[0]["result"]["passes"], "delta": delta[0]["result"]["passes"]},
        "max_rel_err_planted_sigma1": err,
        "peak_mib": {"single": single[0]["peak_mib"], "delta": delta[0]["peak_mib"]},
    }


OURS_EXTRACT = """
import time, lora_rank
t = time.perf_counter()
c = lora_rank.compare({base!r}, {ft!r}, progress=False)
a = c.extract({out!r}, r={r})
seconds = time.perf_counter() - t
result = {{"modules": len(a.ranks), "energy_kept": a.energy_kept}}
"""

MERGEKIT_METHOD = """
import time, json, torch
from safetensors import safe_open
from safetensors.torch import save_file
torch.set_num_threads({threads})
t = time.perf_counter()
idx = json.load(open({base!r} + "/model.safetensors.index.json"))["weight_map"]
out, kept, total = {{}}, 0.0, 0.0
for name, shard in sorted(idx.items()):
    if ".layers." not in name or not name.endswith("proj.weight"):
        continue
    with safe_open({base!r} + "/" + shard, "pt") as fb, safe_open({ft!r} + "/" + shard, "pt") as ff:
        d = ff.get_tensor(name).float() - fb.get_tensor(name).float()
    u, s, vh = torch.linalg.svd(d, full_matrices=False)
    k = {r}
    total += float((s.double() ** 2).sum()); kept += float((s[:k].double() ** 2).sum())
    out[name[:-7] + ".lora_A.weight"] = (torch.diag(s[:k].sqrt()) @ vh[:k]).contiguous()
    out[name[:-7] + ".lora_B.weight"] = (u[:, :k] @ torch.diag(s[:k].sqrt())).contiguous()
save_file(out, {out!r})
seconds = time.perf_counter() - t
result = {{"modules": len(out) // 2, "energy_kept": kept / total}}
"""


def bench_extract(rounds: int, layers: int, r: int = 16) -> dict[str, Any]:
    base = checkpoints.build_real_layers(layers)
    ft = build_finetune(base)
    ours, theirs = [], []
    threads = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(rounds):
            ours.append(
                run(OURS_EXTRACT.format(base=str(base), ft=str(ft), out=f"{tmp}/o{i}", r=r))
            )
            theirs.append(
                run(
                    MERGEKIT_METHOD.format(
                        base=str(base),
                        ft=str(ft),
                        out=f"{tmp}/m{i}.safetensors",
                        r=r,
                        threads=threads,
                    )
                )
            )
    t_o = min(x["seconds"] for x in ours)
    t_m = min(x["seconds"] for x in theirs)
    return {
        "layers": layers,
        "ours_s": [x["seconds"] for x in ours],
        "mergekit_method_s": [x["seconds"] for x in theirs],
        "ratio_of_mins": t_m / t_o,
        "energy_kept": {
            "ours": ours[0]["result"]["energy_kept"],
            "mergekit_method": theirs[0]["result"]["energy_kept"],
        },
        "peak_mib": {"ours": ours[0]["peak_mib"], "mergekit_method": theirs[0]["peak_mib"]},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--layers", type=int, default=1, help="adapter bench: layers of modules")
    p.add_argument(
        "--extract-layers",
        type=int,
        default=2,
        help="extract bench: layers of the real-data Llama-8B pair (its full SVDs take minutes "
        "per matrix on a busy 2-core machine)",
    )
    p.add_argument("--only", choices=("adapter", "scan", "extract"), action="append")
    p.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="adapter bench: threads of both sides (1 on a busy machine: torch's OpenMP "
        "threads waiting on busy cores distort its time)",
    )
    args = p.parse_args()
    parts = args.only or ["adapter", "scan", "extract"]
    machine = {
        "cpu": cpu(),
        "cores": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    slug = re.sub(r"[^a-z0-9]+", "-", machine["cpu"].lower()).strip("-")
    path = RESULTS / f"deltas_{slug}.json"
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    for part in parts:
        print(f"== {part}", flush=True)
        if part == "adapter":
            r = bench_adapter(args.rounds, args.layers, args.threads)
        elif part == "scan":
            r = bench_scan(args.rounds)
        else:
            r = bench_extract(args.rounds, args.extract_layers)
        results[part] = {"machine": machine, **r}
        print(json.dumps(r, indent=1), flush=True)
        path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
