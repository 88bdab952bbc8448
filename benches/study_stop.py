"""The solver's error estimate vs the actual error, pass by pass (issue 14).

    python benches/study_stop.py            # 8 Llama-8B-shaped bf16 matrices (~4 min, 2 cores)
    python benches/study_stop.py --quick    # small shapes, temp files

For each matrix (real-like and noise: 4096², 1024×4096, 14336×4096, 4096×14336, the files of
``bench_pass.py``): the exact spectrum (``method="exact"``: float64 Gram + eigensolver, equal to
numpy's SVD to 2e-6), then one randomized solve with ``rtol=1e-12, max_iter=18`` (no early stop)
and ``LORA_RANK_SOLVER_TRACE`` set, which prints every pass's top-k values and error estimates
(``err``: the stopping rule's estimate; ``bound``: the residual bound alone; ``tail``: the
extrapolated tail alone). Per pass: the actual largest relative error of the top 32 against
the exact values, the largest estimate, and how many values (of those whose actual error is
above the bf16 floor, 2e-4) have an estimate below their actual error, and by what factor at
worst. Then the pass at which the default rule (``rtol`` 3e-3, at least 3 passes) stops, the
actual error there, and the first pass whose actual error meets 3e-3 (an oracle's stop). Not a
timing: no ``/tmp/quiet.sh`` needed. Writes ``results/stop_estimate.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_pass  # noqa: E402

SHAPES = [(4096, 4096), (1024, 4096), (14336, 4096), (4096, 14336)]
FLOOR = 2e-4
RTOL = 3e-3
MIN_STOP = 3


def exact_sv(path: Path, m: int, n: int) -> np.ndarray:
    cache = Path(str(path) + ".exact.npy")
    if cache.exists():
        return np.load(cache)
    from lora_rank import _core
    from lora_rank.spectral.settings import SpectralSettings

    with open(path, "rb") as f:
        begin = 8 + int.from_bytes(f.read(8), "little")
    settings = SpectralSettings(method="exact", threads=2)
    out = _core.spectra(
        [(str(path), path.stat().st_size)], [("w", [(0, begin, m)], n, "BF16")], settings
    )
    sv = np.array(out[0]["singular_values"][:64])
    np.save(cache, sv)
    return sv


def traced(path: Path, m: int, n: int) -> list[dict[str, Any]]:
    code = (
        f"import sys; sys.path.insert(0, {str(HERE)!r}); import bench_pass as b\n"
        "from pathlib import Path\n"
        f"b.spectra(Path({str(path)!r}), {m}, {n}, threads=2, max_iter=18, rtol=1e-12)\n"
    )
    env = {**os.environ, "LORA_RANK_SOLVER_TRACE": "1"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(r.stderr)
    return [
        json.loads(line.split(" ", 1)[1])
        for line in r.stderr.splitlines()
        if line.startswith("LRTRACE")
    ]


def summarize(rows: list[dict[str, Any]], ref: np.ndarray) -> dict[str, Any]:
    passes = []
    stop = oracle = None
    for r in rows:
        sv = np.array(r["sv"])
        k = len(sv)
        act = np.abs(ref[:k] - sv) / ref[:k]
        est = np.array(r["err"]) / sv
        above = act > FLOOR
        ratio = est[above] / act[above]
        row = {
            "pass": r["it"],
            "actual_max": float(act.max()),
            "estimate_max": float(est.max()),
            "bound_max": float((np.array(r["bound"]) / sv).max()),
            "tail_max": float((np.array(r["tail"]) / sv).max()) if r["tail"] else None,
            "values_above_floor": int(above.sum()),
            "values_underestimated": int((ratio < 1).sum()),
            "worst_ratio": float(ratio.min()) if above.any() else None,
        }
        passes.append(row)
        if stop is None and r["it"] >= MIN_STOP and est.max() <= RTOL:
            stop = (r["it"], float(act.max()))
        if oracle is None and act.max() <= RTOL:
            oracle = r["it"]
    return {"passes": passes, "stop": stop, "oracle_pass": oracle}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results" / "stop_estimate.json"))
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory() if args.quick else None
    root = Path(tmp.name) if tmp else HERE / "data"
    root.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {}
    for kind in ("real", "noise"):
        for m, n in SHAPES:
            if args.quick:
                m, n = m // 8, n // 8
            path = bench_pass.write_matrix(
                root / f"shape_{kind}_{m}x{n}.safetensors", m, n, kind, m ^ n
            )
            ref = exact_sv(path, m, n)
            res = summarize(traced(path, m, n), ref)
            out[f"{kind} {m}x{n}"] = res
            late = [p for p in res["passes"] if p["pass"] >= 4]
            under = sum(p["values_underestimated"] for p in late)
            total = sum(p["values_above_floor"] for p in late)
            worst = min(
                (p["worst_ratio"] for p in late if p["worst_ratio"] is not None), default=None
            )
            max_ratio = min(
                p["estimate_max"] / p["actual_max"] for p in late if p["actual_max"] > FLOOR
            )
            print(
                f"{kind} {m}x{n}: stop {res['stop']}, oracle pass {res['oracle_pass']}; passes ≥ 4: "
                f"{under}/{total} values underestimated (worst ×{worst}), "
                f"largest estimate / largest actual ≥ {max_ratio:.2f}",
                flush=True,
            )
            for p in res["passes"]:
                print(
                    f"  pass {p['pass']:2d}: actual {p['actual_max']:.1e} estimate {p['estimate_max']:.1e} "
                    f"(bound {p['bound_max']:.1e}, tail {p['tail_max'] or 0:.1e}) "
                    f"under {p['values_underestimated']}/{p['values_above_floor']}"
                )
    if not args.quick:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1))
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
