"""Spectral speed and accuracy of quantized weights next to bf16, on the same matrix.

    python benches/bench_quant.py                   # 4096×14336 (Llama-3-8B down_proj shape)
    python benches/bench_quant.py --size 1024x2048 --runs 1   # smoke run

One real-data matrix (``checkpoints._spectral_matrix``: Marchenko–Pastur bulk plus a power-law
top) is stored four ways under ``benches/data/``: bf16; FP8 E4M3 with 128×128
``weight_scale_inv`` blocks (DeepSeek-V3 layout); GPTQ 4-bit, group 128, act-order ``g_idx``
(v1 zero points); compressed-tensors ``pack-quantized`` int4, group 128 (``ct-int4``). The packers are the tests' (``tests/quant_packers.py``). Each is scanned by
``_core.spectra`` (randomized, top_k=32, default rtol) with the same seed and threads, timed
min/median over ``--runs`` after a warm-up; the ratio is against bf16 in the same run. The
error is the max relative error of the top-32 σ against float64 eigenvalues of the Gram matrix
of that format's reference-dequantized matrix (numpy packers' dequantization).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.append(str(HERE.parent / "tests"))  # after benches/: its checkpoints.py wins

from checkpoints import DATA, _spectral_matrix  # noqa: E402
from measure import stats  # noqa: E402

TOP_K = 32


def _write(path: Path, tensors: dict[str, Any]) -> None:
    import torch
    from safetensors.torch import save_file

    tmp = path.with_suffix(".tmp")
    save_file(
        {k: v if isinstance(v, torch.Tensor) else torch.from_numpy(v) for k, v in tensors.items()},
        str(tmp),
    )
    os.replace(tmp, path)


def build(m: int, n: int, root: Path) -> dict[str, tuple[Path, np.ndarray]]:
    """The four files of one m × n matrix and each format's reference-dequantized matrix."""
    import quant_packers as qp

    root.mkdir(parents=True, exist_ok=True)
    w16 = _spectral_matrix((m, n), seed=m * 7 + n)
    w = w16.float().numpy()
    out: dict[str, tuple[Path, np.ndarray]] = {}
    paths = {f: root / f"quant_{m}x{n}_{f}.safetensors" for f in ("bf16", "fp8", "gptq", "ct-int4")}
    refs = {f: p.with_suffix(".ref.npy") for f, p in paths.items()}
    if not paths["bf16"].exists():
        _write(paths["bf16"], {"w": w16})
    out["bf16"] = (paths["bf16"], w)
    if not paths["fp8"].exists() or not refs["fp8"].exists():
        q, scale = qp.fp8_block(w, (128, 128))
        _write(paths["fp8"], {"w": q, "w_scale_inv": scale})
        np.save(refs["fp8"], qp.fp8_reference(q, scale, (128, 128)))
    out["fp8"] = (paths["fp8"], np.load(refs["fp8"]))
    if not paths["gptq"].exists() or not refs["gptq"].exists():
        t = qp.gptq(w, 4, 128, act_order=True)
        _write(paths["gptq"], {f"w.{k}": v for k, v in t.items()})
        np.save(refs["gptq"], qp.gptq_reference(t, 4))
    out["gptq"] = (paths["gptq"], np.load(refs["gptq"]))
    if not paths["ct-int4"].exists() or not refs["ct-int4"].exists():
        t = qp.ct_pack(w, 4, 128)
        _write(paths["ct-int4"], {f"w.{k}": v for k, v in t.items()})
        np.save(refs["ct-int4"], qp.ct_pack_reference(t, 4))
    out["ct-int4"] = (paths["ct-int4"], np.load(refs["ct-int4"]))
    return out


def job(fmt: str, path: Path, m: int, n: int) -> tuple[Any, Any]:
    """Engine job (and quantization tuple) of the stored matrix."""
    from lora_rank import _core

    raw = _core.open_checkpoint(str(path))
    t = {name: (dtype, list(shape), begin) for name, dtype, shape, _, begin, _ in raw["tensors"]}

    def aux(name: str) -> tuple[str, int, int, list[int], str]:
        return (name, 0, t[name][2], t[name][1], t[name][0])

    if fmt == "bf16":
        return ("w", [(0, t["w"][2], m)], n, "BF16"), None
    if fmt == "fp8":
        spec = ("fp8_block", "w", 8, (128, 128), 0, aux("w_scale_inv"), None, None, [], 0.0)
        return ("w", [(0, t["w"][2], m)], n, "F8_E4M3"), [spec]
    if fmt == "ct-int4":
        s = aux("w.weight_scale")
        spec = ("ct_packed", "w.weight_packed", 4, (128, 0), 0, s, None, None, [], 0.0)
        return ("w.weight_packed", [(0, t["w.weight_packed"][2], m)], n, "I32"), [spec]
    spec = (
        "gptq",
        "w.qweight",
        4,
        (128, 0),
        1,
        aux("w.scales"),
        aux("w.qzeros"),
        aux("w.g_idx"),
        [],
        0.0,
    )
    return ("w.qweight", [(0, t["w.qweight"][2], n)], m, "I32"), [spec]


def reference_sv(a: np.ndarray) -> np.ndarray:
    import torch

    x = torch.from_numpy(a).double()
    gram = x @ x.T if x.shape[0] <= x.shape[1] else x.T @ x
    lam = torch.linalg.eigvalsh(gram).flip(0)[:TOP_K]
    return lam.clamp(min=0).sqrt().numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="4096x14336")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args()
    from lora_rank import _core
    from lora_rank.spectral.settings import SpectralSettings

    m, n = (int(x) for x in args.size.split("x"))
    files = build(m, n, DATA)
    results: dict[str, Any] = {"size": [m, n], "threads": args.threads, "runs": args.runs}
    for fmt, (path, ref) in files.items():
        j, quant = job(fmt, path, m, n)
        shards = [(str(path), path.stat().st_size)]

        def run(j: Any = j, quant: Any = quant, shards: Any = shards) -> Any:
            return _core.spectra(
                shards,
                [j],
                SpectralSettings(top_k=TOP_K, method="randomized", threads=args.threads),
                quant=[quant],
            )[0]

        run()
        times, out = [], None
        for _ in range(args.runs):
            t0 = time.perf_counter()
            out = run()
            times.append(time.perf_counter() - t0)
        assert out is not None
        sv = np.asarray(out["singular_values"][:TOP_K])
        exact = reference_sv(ref)
        results[fmt] = {
            "time": stats(times),
            "iterations": out["iterations"],
            "max_rel_err_top32": float(np.max(np.abs(sv / exact - 1))),
            "stored_bytes": path.stat().st_size,
        }
    base = results["bf16"]["time"]["min"]
    for fmt in ("fp8", "gptq", "ct-int4"):
        results[fmt]["ratio_vs_bf16_min"] = results[fmt]["time"]["min"] / base
    text = json.dumps(results, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
