"""Passes per matrix: each statistic's error after t passes, and where the rules stop (issue 14).

    python benches/study_passes.py              # real-data 2-layer Llama-8B + synthetic (~15 min)
    python benches/study_passes.py --no-real    # the synthetic matrices only (~6 min)
    python benches/study_passes.py --quick      # smoke run: small synthetic shapes, temp files

Not a timing (no quiet machine needed). For every matrix: the exact statistics
(``method="exact"``: float64 Gram + eigensolver), the default randomized solve (its passes), and
randomized solves cut at t passes (``rtol=1e-9, max_iter=t``: no rule can stop them, and with the
same seed they are the first t passes of one longer solve). Matrices: the real-data 2-layer
Llama-8B bench checkpoint (``checkpoints.build_real_layers(2)``: 14 layer matrices +
embed_tokens + lm_head) and the ``bench_pass.py`` synthetic files (every Llama-8B shape,
real-like and pure noise, and the 128256×4096 noise matrix). Per t and for the default stop: the
median and worst error over the matrices of each statistic (relative: energy ranks, MP edge,
Spectrum's SNR, top-k σ; absolute: spike count, ``pl_alpha``). Writes ``results/passes.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_pass  # noqa: E402

CUTS = (3, 4, 5, 6, 7, 8, 10, 12)
RELATIVE = ("energy_rank_90", "energy_rank_95", "energy_rank_99", "mp_edge", "spectrum_snr")
ABSOLUTE = ("mp_spikes", "pl_alpha")
SYNTHETIC = [(4096, 4096), (1024, 4096), (14336, 4096), (4096, 14336)]


def fields(d: dict[str, Any]) -> dict[str, Any]:
    """The statistics compared, from a ``_core.spectra`` result or a ``Spectrum``."""
    out = {k: d[k] for k in (*RELATIVE, *ABSOLUTE, "iterations")}
    out["sv"] = list(d["singular_values"])
    return out


def errors(got: dict[str, Any], exact: dict[str, Any]) -> dict[str, float]:
    e: dict[str, float] = {}
    for k in RELATIVE:
        e[k] = abs(got[k] - exact[k]) / abs(exact[k]) if exact[k] else 0.0
    for k in ABSOLUTE:
        both_nan = math.isnan(got[k]) and math.isnan(exact[k])
        e[k] = 0.0 if both_nan else abs(got[k] - exact[k])
    e["sv"] = max(abs(a - b) / b for a, b in zip(got["sv"], exact["sv"]))
    return e


def checkpoint_runs(path: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """{module: {run: statistics}} for every matrix of one checkpoint, through ``analyze``."""
    import lora_rank
    from lora_rank.spectral.settings import SpectralSettings

    def grab(**kw: Any) -> dict[str, dict[str, Any]]:
        rep = lora_rank.analyze(path, spectral=True, settings=SpectralSettings(**kw))
        return {
            m.name: fields(dataclasses.asdict(m.spectrum))
            for m in rep.modules
            if m.spectrum is not None
        }

    runs = {"exact": grab(method="exact"), "default": grab(method="randomized")}
    for t in CUTS:
        runs[str(t)] = grab(method="randomized", rtol=1e-9, max_iter=t)
    return {name: {run: got[name] for run, got in runs.items()} for name in runs["exact"]}


def matrix_runs(path: Path, m: int, n: int) -> dict[str, dict[str, Any]]:
    """{run: statistics} for one single-tensor bf16 file, through ``_core.spectra``."""
    from lora_rank import _core
    from lora_rank.spectral.settings import SpectralSettings

    with open(path, "rb") as f:
        begin = 8 + int.from_bytes(f.read(8), "little")
    source = [(str(path), path.stat().st_size)]
    job = [("w", [(0, begin, m)], n, "BF16")]

    def run(**kw: Any) -> dict[str, Any]:
        return fields(_core.spectra(source, job, SpectralSettings(threads=2, **kw))[0])

    runs = {"exact": run(method="exact"), "default": run(method="randomized")}
    for t in CUTS:
        runs[str(t)] = run(method="randomized", rtol=1e-9, max_iter=t)
    return runs


def summarize(matrices: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Per run (default, each cut): median and worst error of each statistic over the matrices."""
    out: dict[str, Any] = {}
    for run in ("default", *map(str, CUTS)):
        errs = [errors(runs[run], runs["exact"]) for runs in matrices.values()]
        out[run] = {
            k: {"median": statistics.median(e[k] for e in errs), "worst": max(e[k] for e in errs)}
            for k in errs[0]
        }
    out["default_passes"] = {name: runs["default"]["iterations"] for name, runs in matrices.items()}
    return out


def show(label: str, summary: dict[str, Any]) -> None:
    print(f"\n{label}: default passes {summary['default_passes']}")
    keys = list(summary["default"])
    print("passes  " + " ".join(f"{k[-14:]:>15}" for k in keys))
    for run in ("default", *map(str, CUTS)):
        row = summary[run]
        cells = " ".join(f"{row[k]['median']:7.3f}/{row[k]['worst']:<7.3f}" for k in keys)
        print(f"{run:>7} {cells}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-real", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results" / "passes.json"))
    args = ap.parse_args()
    warnings.simplefilter("ignore")  # every cut solve warns that it did not converge
    tmp = tempfile.TemporaryDirectory() if args.quick else None
    root = Path(tmp.name) if tmp else HERE / "data"
    root.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    groups: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    if not (args.no_real or args.quick):
        import checkpoints

        groups["real-data Llama-8B, 2 layers"] = checkpoint_runs(checkpoints.build_real_layers(2))
    shapes = [(m // 8, n // 8) for m, n in SYNTHETIC] if args.quick else list(SYNTHETIC)
    for kind in ("real", "noise"):
        group = {}
        for m, n in shapes + ([] if args.quick or kind == "real" else [bench_pass.EMBED]):
            path = bench_pass.write_matrix(
                root / f"shape_{kind}_{m}x{n}.safetensors", m, n, kind, m ^ n
            )
            group[f"{m}x{n}"] = matrix_runs(path, m, n)
        groups[f"synthetic {kind}-like" if kind == "real" else "synthetic noise"] = group
    Path(args.out).write_text(json.dumps(result | groups, indent=1, default=float))
    for label, matrices in groups.items():
        summary = summarize(matrices)
        show(label, summary)
        result[label] = {"summary": summary, "matrices": matrices}
    Path(args.out).write_text(json.dumps(result, indent=1, default=float))


if __name__ == "__main__":
    main()
