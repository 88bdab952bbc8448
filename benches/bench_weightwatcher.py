"""WeightWatcher vs ``lora_rank`` on the real MiniLM checkpoint: power-law ``alpha`` per matrix,
time and memory.

``lora_rank`` reports two exponents of the tail of the eigenvalues σᵢ² of WᵀW: ``pl_alpha``,
WeightWatcher's own estimator (power-law maximum likelihood with its ``xmin`` search) on the
spectrum the solver estimates, which should equal WeightWatcher's ``alpha`` (issue 14: within
0.1), and ``alpha``, a Hill estimator on the top-k values. Both are compared (Spearman rank
correlation, median and worst difference) with WeightWatcher's ``alpha``.

WeightWatcher needs the model loaded (``AutoModel.from_pretrained``); that load is its
untimed setup in "call" mode and part of the whole process.
"""

from __future__ import annotations

import importlib.util
import math
import statistics
import tempfile
from pathlib import Path
from typing import Any

from measure import Method, time_call, time_process

WEIGHTWATCHER = Method(
    "weightwatcher",
    "alpha per matrix",
    "import logging, transformers, weightwatcher as ww\n"
    "logging.getLogger('weightwatcher').setLevel(logging.ERROR)",
    "details = ww.WeightWatcher(model=model).analyze()\n"
    "result = dict(zip(details['longname'], details['alpha'].astype(float)))\n",
    setup="model = transformers.AutoModel.from_pretrained(P)\n",
)

LORA_RANK = Method(
    "lora_rank",
    "alpha per matrix",
    "import lora_rank",
    "report = lora_rank.analyze(P, spectral=True, progress=False)\n"
    "result = {m.name: [m.spectrum.pl_alpha, m.spectrum.alpha]\n"
    "          for m in report.modules if m.spectrum is not None}\n",
)


def _ranks(xs: list[float]) -> list[float]:
    order = sorted(range(len(xs)), key=xs.__getitem__)
    ranks = [0.0] * len(xs)
    for r, i in enumerate(order):
        ranks[i] = float(r)
    return ranks


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation (no ties expected among real-valued alphas)."""
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    var = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    return cov / var if var else math.nan


def compare(ours: dict[str, float], theirs: dict[str, float]) -> dict[str, Any]:
    """Per-matrix alphas on the modules both report, with summary agreement numbers."""
    common = sorted(k for k in ours if k in theirs and math.isfinite(ours[k] + theirs[k]))
    a, b = [ours[k] for k in common], [theirs[k] for k in common]
    return {
        "modules": len(common),
        "spearman": spearman(a, b) if len(common) > 2 else math.nan,
        "median_abs_diff": statistics.median(abs(x - y) for x, y in zip(a, b))
        if common
        else math.nan,
        "worst_abs_diff": max(abs(x - y) for x, y in zip(a, b)) if common else math.nan,
        "per_module": {k: (ours[k], theirs[k]) for k in common},
    }


def run(minilm: Path, runs: int, log: Any = print) -> dict[str, Any]:
    """Time both on MiniLM ("call" and "process" modes) and compare their alphas."""
    if importlib.util.find_spec("weightwatcher") is None:
        return {"skipped": "weightwatcher is not installed (pip install weightwatcher)"}
    out: dict[str, Any] = {}
    # WeightWatcher may write plots or logs to the working directory: keep them out of ours.
    with tempfile.TemporaryDirectory() as cwd:
        for m in (LORA_RANK, WEIGHTWATCHER):
            try:
                out[m.name] = {
                    "call": time_call(m, str(minilm), runs, cwd=cwd),
                    "process": time_process(m, str(minilm), runs, cwd=cwd),
                }
            except RuntimeError as e:  # e.g. our spectral engine not built yet
                out[m.name] = {"error": str(e).splitlines()[-1]}
            for mode, r in out[m.name].items():
                if mode in ("call", "process"):
                    log(
                        f"  minilm {mode:8} {m.name:13} min {r['min']:8.3f} s  "
                        f"median {r['median']:8.3f} s  peak {r['memory']['VmHWM']:6.0f} MiB"
                    )
                else:
                    log(f"  minilm {m.name}: {r}")
    if "call" in out.get("lora_rank", {}) and "call" in out["weightwatcher"]:
        ours = out["lora_rank"]["call"]["result"]
        theirs = out["weightwatcher"]["call"]["result"]
        for field, column in (("pl_alpha", 0), ("alpha", 1)):
            out[field] = compare({k: v[column] for k, v in ours.items()}, theirs)
            log(
                f"  {field} vs WeightWatcher's alpha on {out[field]['modules']} matrices: "
                f"Spearman {out[field]['spearman']:.2f}, median |diff| "
                f"{out[field]['median_abs_diff']:.3f}, worst {out[field]['worst_abs_diff']:.2f}"
            )
    return out
