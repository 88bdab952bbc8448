"""Accuracy of the whole-spectrum statistics against float64 SVD (and WeightWatcher's alpha).

    python benches/bench_shape_accuracy.py              # MiniLM + synthetic 4096² / 4096×14336
    python benches/bench_shape_accuracy.py --no-synthetic

For every matrix: numpy float64 singular values of the stored values, the statistics computed
from them here in numpy (the oracle: energy ranks, σ quantiles, Spectrum's SNR with the formula
of spectrum.py, the Marchenko–Pastur median fit, WeightWatcher's own ``WWFit`` for the power
law), and lora_rank's ``method="randomized"`` (forced, also on MiniLM's small matrices) and
``method="exact"``. Prints median / worst relative error per statistic (absolute for alpha and
spike counts), and on MiniLM the alpha of WeightWatcher's own ``analyze()`` layer by layer.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

STATS = (
    "energy_rank_90",
    "energy_rank_95",
    "energy_rank_99",
    "sv_q25",
    "sv_median",
    "sv_q75",
    "mp_edge",
    "mp_spikes",
    "spectrum_snr",
    "pl_alpha",
)
ABSOLUTE = {"mp_spikes", "pl_alpha"}


def oracle(sv: np.ndarray, rows: int, cols: int) -> dict[str, float]:
    """The statistics from the exact σ (descending), float64, written independently."""
    from weightwatcher.WW_powerlaw import WWFit

    lam = sv**2
    total = lam.sum()
    cum = np.cumsum(lam)
    out: dict[str, float] = {}
    for share in (90, 95, 99):
        out[f"energy_rank_{share}"] = int(
            np.searchsorted(cum, share / 100 * total * (1 - 1e-12)) + 1
        )
    out["sv_q25"], out["sv_median"], out["sv_q75"] = np.quantile(sv, [0.25, 0.5, 0.75])
    # Spectrum (spectrum.py): sigma from the IQR, tau = sigma (1 + sqrt(beta)), snr / S[0].
    big, small = max(rows, cols), min(rows, cols)
    q25, q75 = np.quantile(sv, 0.25), np.quantile(sv, 0.75)

    def spectrum_snr(lo: float, hi: float) -> float:
        tau = (hi - lo) / 1.349 * (1 + math.sqrt(small / big))
        signal, noise = sv[sv > tau].sum(), sv[sv <= tau].sum()
        return float(signal / (noise if noise > 0 else 1.0) / sv[0])

    out["spectrum_snr"] = spectrum_snr(q25, q75)
    # Its conditioning: the relative change of the SNR when q25 or q75 moves by 1% (what any
    # estimate of the quartiles short of the exact spectrum is up against).
    moved = [spectrum_snr(q25 * f, q75) for f in (0.99, 1.01)]
    moved += [spectrum_snr(q25, q75 * f) for f in (0.99, 1.01)]
    out["snr_per_1pct_quartile"] = max(abs(v / out["spectrum_snr"] - 1) for v in moved)
    # MP fit by the bulk's mean eigenvalue s²·M, the k values above the edge removed from
    # ‖W‖_F² until k settles.
    spikes = 0
    while True:
        s2 = (total - lam[:spikes].sum()) / (big * (small - spikes))
        edge2 = s2 * (math.sqrt(big) + math.sqrt(small)) ** 2
        nxt = min(int((lam > edge2).sum()), small - 1)
        if nxt <= spikes:
            break
        spikes = nxt
    out["mp_edge"], out["mp_spikes"] = math.sqrt(edge2), spikes
    ev = lam[lam > 1e-5]
    out["pl_alpha"] = float(WWFit(ev).alpha) if len(ev) >= 20 else math.nan
    return out


def ours(d: dict[str, Any]) -> dict[str, float]:
    q = d["sv_quantiles"]
    return {
        **{k: d[k] for k in STATS if k in d},
        "sv_q25": q[0],
        "sv_median": q[1],
        "sv_q75": q[2],
    }


def errors(got: list[dict[str, float]], want: list[dict[str, float]]) -> dict[str, Any]:
    table = {}
    for k in STATS:
        e = []
        for g, w in zip(got, want):
            if not (math.isfinite(g[k]) and math.isfinite(w[k])):
                continue
            e.append(abs(g[k] - w[k]) if k in ABSOLUTE else abs(g[k] - w[k]) / abs(w[k]))
        table[k] = {"median": statistics.median(e), "worst": max(e), "n": len(e)} if e else None
    return table


def run_core(path: Path, jobs: list[tuple[str, int, int, int, str]], method: str) -> list[dict]:
    from lora_rank import _core
    from lora_rank.spectral.settings import SpectralSettings

    size = path.stat().st_size
    return _core.spectra(
        [(str(path), size)],
        [(name, [(0, off, m)], n, dt) for name, off, m, n, dt in jobs],
        SpectralSettings(method=method, threads=2),
    )


def safetensors_jobs(path: Path) -> tuple[list[tuple[str, int, int, int, str]], dict]:
    with open(path, "rb") as f:
        hlen = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(hlen))
    jobs = []
    for name, t in header.items():
        if name == "__metadata__" or len(t["shape"]) != 2 or min(t["shape"]) < 32:
            continue
        jobs.append(
            (name, 8 + hlen + t["data_offsets"][0], t["shape"][0], t["shape"][1], t["dtype"])
        )
    return jobs, header


def matrix(path: Path, name: str) -> np.ndarray:
    from safetensors.numpy import load_file

    return load_file(str(path))[name]


def exact_sv(path: Path, name: str, load: Any = None) -> np.ndarray:
    """float64 singular values of the stored values; cached next to large files (keyed by the
    file's size and mtime), since a 4096×14336 SVD takes minutes on 2 cores."""
    st = path.stat()
    cache = path.with_name(f"{path.stem}.{name}.{st.st_size}.{st.st_mtime_ns}.sv.npy")
    if st.st_size > 1 << 24 and cache.exists():
        return np.load(cache)
    a = (load or (lambda p, k: matrix(p, k)))(path, name).astype(np.float64)
    sv = np.linalg.svd(a, compute_uv=False)
    if st.st_size > 1 << 24:
        np.save(cache, sv)
    return sv


def evaluate(path: Path, label: str, load: Any = None) -> dict[str, Any]:
    jobs, _ = safetensors_jobs(path)
    rand = run_core(path, jobs, "randomized")
    exact = run_core(path, jobs, "exact")
    want, got_r, got_e, passes = [], [], [], []
    for (name, _, m, n, _), r, e in zip(jobs, rand, exact):
        sv = exact_sv(path, name, load)
        want.append(oracle(sv, m, n))
        got_r.append(ours(r))
        got_e.append(ours(e))
        passes.append(r["iterations"])
    return {
        "label": label,
        "matrices": len(jobs),
        "passes": passes,
        "randomized": errors(got_r, want),
        "exact": errors(got_e, want),
        "per_matrix": {j[0]: {"oracle": w, "randomized": r} for j, w, r in zip(jobs, want, got_r)},
    }


def weightwatcher_alpha(minilm: Path, per_matrix: dict[str, Any]) -> dict[str, Any]:
    import transformers
    import weightwatcher as ww

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    model = transformers.AutoModel.from_pretrained(str(minilm))
    details = ww.WeightWatcher(model=model).analyze()
    theirs = dict(zip(details["longname"], details["alpha"].astype(float)))
    diffs = {}
    for key, v in per_matrix.items():
        module = key.removesuffix(".weight")
        for cand in (module, module.removeprefix("bert."), "bert." + module):
            if cand in theirs:
                diffs[module] = (v["randomized"]["pl_alpha"], theirs[cand])
    d = [abs(a - b) for a, b in diffs.values() if math.isfinite(a + b)]
    return {
        "modules": len(d),
        "median_abs_diff": statistics.median(d) if d else math.nan,
        "worst_abs_diff": max(d) if d else math.nan,
        "per_module": diffs,
    }


def synthetic(m: int, n: int) -> Path:
    from bench_pass import write_matrix

    (HERE / "data").mkdir(exist_ok=True)
    return write_matrix(HERE / "data" / f"shape_acc_{m}x{n}.safetensors", m, n, "real", 5 * m + n)


def show(res: dict[str, Any]) -> None:
    print(f"\n{res['label']}: {res['matrices']} matrices, passes {sorted(set(res['passes']))}")
    print(
        f"{'statistic':16} {'randomized median':>18} {'worst':>8} {'exact median':>13} {'worst':>8}"
    )
    for k in STATS:
        r, e = res["randomized"][k], res["exact"][k]
        if r is None or e is None:
            continue
        print(f"{k:16} {r['median']:18.4f} {r['worst']:8.4f} {e['median']:13.2e} {e['worst']:8.2e}")
    cond = [w["oracle"]["snr_per_1pct_quartile"] for w in res["per_matrix"].values()]
    print(
        f"spectrum_snr moves by {statistics.median(cond):.1%} (median) / {max(cond):.1%} (worst) "
        "when one quartile of the exact spectrum moves by 1%"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-synthetic", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results" / "shape_accuracy.json"))
    args = ap.parse_args()
    import lora_rank

    minilm = Path(lora_rank.demo_checkpoint())
    shard = next(minilm.glob("*.safetensors")) if minilm.is_dir() else minilm
    results = [evaluate(shard, "MiniLM (real, F32)")]
    show(results[0])
    results[0]["weightwatcher"] = weightwatcher_alpha(minilm, results[0]["per_matrix"])
    w = results[0]["weightwatcher"]
    print(
        f"pl_alpha (randomized) vs WeightWatcher analyze(): {w['modules']} modules, "
        f"median |diff| {w['median_abs_diff']:.4f}, worst {w['worst_abs_diff']:.4f}"
    )
    if not args.no_synthetic:

        def load_bf16(p: Path, k: str) -> np.ndarray:
            from safetensors.torch import load_file

            return load_file(str(p))[k].double().numpy()

        for m, n in ((4096, 4096), (4096, 14336)):
            res = evaluate(synthetic(m, n), f"synthetic {m}x{n} bf16", load_bf16)
            show(res)
            results.append(res)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
