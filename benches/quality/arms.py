"""The arms of the quality benchmark: for a budget (all-linear's trainable count at rank r),
the module → rank map each strategy gives MiniLM.

Library arms come from ``lora_rank.recommend``: presets and the weighted strategies of
:mod:`lora_rank.recommend.weights` at ``rank_multiple=1``; ``auto`` is the rule ``auto`` followed before
this benchmark (now ``strategy="spectral"``, ``rank_multiple=4``). The weighted rules allocate
over all-linear's 37 modules with the library's water-filling
(:func:`lora_rank.recommend.allocation.allocate`, ranks ∝ weight):

- ``shuffled``: ``auto``'s scores permuted across its modules (seeded): the control for
  "the module-level spectral detail matters".
- ``kind-prior``: MLP projections weigh 2, attention and the pooler 1 (PEFT's
  method comparison: MLP-only r=10 beat q,v r=32 at equal size on Llama-3.2-3B GSM8K).
- ``depth``: depth profile, weight (L − layer) for layer 0..L−1 (the pilot's full fine-tune:
  ΔW's effective rank falls ~10× from layer 0 to 5); the pooler weighs L.
- ``snr``: Spectrum's selection (Hartford et al. 2024): per kind, the half of the modules with
  the highest signal-to-noise ratio of their singular values (σ above the Marchenko–Pastur edge
  over σ below, from a full SVD here: the library's top-32 spectra do not reach the edge),
  uniform rank on those.
- ``alpha``: AlphaLoRA (Qing et al. 2024): layer weight = mean power-law alpha of the layer's
  matrices (library Hill estimate); a higher alpha (less heavy-tailed, less trained) gets more
  rank; the pooler is its own layer.
- ``pooler``: task-aware (classification): the head is trained in full by PEFT SEQ_CLS's
  ``modules_to_save`` in every arm; the pooler (what moved most in the pilot's full fine-tune)
  weighs 8, every other linear 1.
- ``oracle`` (screen only): the allocation that keeps the most ΔW energy at the budget
  (greedy on σ²/cost of the full fine-tune's ΔW).
- ``delta-same`` / ``delta-transfer`` (issue 37, DECISION.md "Delta strategy"): the library's
  ``recommend("delta", delta=compare(base, ft))`` with ΔW from an independent full fine-tune of
  the same task (another seed) or from the other task's full fine-tune (``delta_source``).
"""

from __future__ import annotations

import random
from functools import cache
from pathlib import Path
from typing import Any, Callable, Optional

import lora_rank
import numpy as np
from lora_rank.recommend import allocation, scoring

R_BUDGETS = (2, 4, 8)
LIBRARY = ("all-linear", "attention-qv", "auto")
#: Weighted strategies of :mod:`lora_rank.recommend.weights`, run at ``rank_multiple=1``.
WEIGHTED = ("kind-prior", "depth", "alpha", "pooler")
RULES = ("shuffled", "snr", *WEIGHTED)
#: Arms whose ranks follow a full fine-tune's update (the library's ``strategy="delta"``).
DELTA = ("delta-same", "delta-transfer")
#: The full fine-tunes saved per task (``extract.py train``), seeds 0..n-1.
FT_SEEDS = {"bbc": 5, "rt": 3}
OTHER_TASK = {"bbc": "rt", "rt": "bbc"}
#: Where ``extract.py train`` saves each (task, seed)'s base and full fine-tune.
PAIRS = Path(__file__).resolve().parents[1] / "data" / "quality" / "extract"
ATTN = ("attn_q", "attn_k", "attn_v", "attn_o")
MLP = ("mlp_up", "mlp_down")


@cache
def report() -> Any:
    return lora_rank.analyze(lora_rank.demo_checkpoint(), spectral=True)


@cache
def modules() -> dict[str, Any]:
    """all-linear's modules (37: 6 layers x 6 + the pooler)."""
    rec = report().recommend("all-linear", r=1)
    return {t.module: report().module(t.module) for t in rec.targets}


def cost(name: str) -> int:
    m = modules()[name]
    return int(m.in_features + m.out_features)


def budget(r: int) -> int:
    return sum(cost(n) * r for n in modules())


def _weighted(weights: dict[str, float], b: int) -> dict[str, int]:
    items = [
        allocation.Item(n, cost(n), min(modules()[n].in_features, modules()[n].out_features), w)
        for n, w in weights.items()
        if w > 0
    ]
    return allocation.allocate(items, b, step=1, min_rank=1)


def _library(strategy: str, b: int) -> dict[str, int]:
    kw = {"rank_multiple": 1} if strategy != "auto" else {}
    return report().recommend(strategy, budget=b, **kw).module_ranks()


def _spectral_auto(b: int) -> dict[str, int]:
    """What ``auto`` did before this benchmark (``strategy="spectral"``, rank_multiple 4)."""
    return report().recommend("spectral", budget=b, rank_multiple=4).module_ranks()


def _shuffled(b: int) -> dict[str, int]:
    rec = report().recommend("auto", budget=b)
    scored = [n for n in modules() if scoring.score(modules()[n], None)]
    scores = [scoring.score(modules()[n], None) for n in scored]
    random.Random(0).shuffle(scores)
    items = [
        allocation.Item(n, cost(n), min(128, modules()[n].in_features // 4 * 4), s)
        for n, s in zip(scored, scores)
    ]
    del rec
    return allocation.allocate(items, b, step=4, min_rank=4)


@cache
def snr(name: str) -> float:
    """Spectrum's SNR of one weight: Σσ above the MP edge / Σσ below (σ_noise from the IQR)."""
    from safetensors.numpy import load_file

    w = load_file(str(lora_rank.demo_checkpoint() / "model.safetensors"))[name + ".weight"]
    s = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    n, m = max(w.shape), min(w.shape)
    # Spectrum's estimate_sigma_with_full_iqr (IQR of the singular values / 1.349) and its
    # marchenko_pastur_threshold sigma * (1 + sqrt(min/max)), as in its spectrum.py.
    q75, q25 = np.percentile(s, [75, 25])
    sigma = (q75 - q25) / 1.349
    edge = sigma * (1 + np.sqrt(m / n))
    signal, noise = s[s > edge].sum(), s[s <= edge].sum()
    return float(signal / noise / s[0]) if noise > 0 else float("inf")


def _snr(b: int) -> dict[str, int]:
    by_kind: dict[str, list[str]] = {}
    for n, m in modules().items():
        by_kind.setdefault(str(m.kind), []).append(n)
    chosen = []
    for names in by_kind.values():
        names = sorted(names, key=snr, reverse=True)
        chosen += names[: max(1, len(names) // 2)]
    return _weighted(dict.fromkeys(chosen, 1.0), b)


_RULES: dict[str, Callable[[int], dict[str, int]]] = {"shuffled": _shuffled, "snr": _snr}


def delta_source(arm: str, task: str, seed: int) -> tuple[str, int]:
    """(task, seed) of the full fine-tune whose ΔW a delta arm follows for LoRA ``seed``:
    ``delta-same`` another seed of the same task, ``delta-transfer`` the other task."""
    if arm == "delta-same":
        return task, (seed + 1) % FT_SEEDS[task]
    other = OTHER_TASK[task]
    return other, seed % FT_SEEDS[other]


@cache
def comparison(task: str, seed: int) -> Any:
    """``lora_rank.compare`` of a saved base and its full fine-tune."""
    d = PAIRS / f"{task}_s{seed}"
    return lora_rank.compare(d / "base", d / "ft", progress=False)


def _delta(arm: str, b: int, task: str, seed: int) -> dict[str, int]:
    c = comparison(*delta_source(arm, task, seed))
    rec = c.base.recommend("delta", delta=c, budget=b, rank_multiple=1)
    prefix = "bert."  # the seq-cls checkpoint's names: BertModel's under ``bert.``
    out = {n[len(prefix) :]: k for n, k in rec.module_ranks().items()}
    unknown = set(out) - set(modules())
    if unknown:
        raise AssertionError(f"{arm} targets modules outside all-linear: {sorted(unknown)}")
    return out


def ranks(
    arm: str, r: int, *, task: Optional[str] = None, seed: Optional[int] = None
) -> dict[str, int]:
    """Module → rank of ``arm`` at the budget of all-linear rank ``r`` (delta arms also need
    the ``task`` and LoRA ``seed`` they train)."""
    b = budget(r)
    if arm in DELTA:
        if task is None or seed is None:
            raise ValueError(f"{arm} needs the task and seed")
        out = _delta(arm, b, task, seed)
    elif arm == "auto":
        out = _spectral_auto(b)
    elif arm in LIBRARY or arm in WEIGHTED:
        out = _library(arm, b)
    else:
        out = _RULES[arm](b)
    used = sum(cost(n) * k for n, k in out.items())
    if used > b:
        raise AssertionError(f"{arm} at r={r} uses {used} > {b}")
    return dict(sorted(out.items()))


def oracle(delta_sv: dict[str, np.ndarray], b: int) -> dict[str, int]:
    """Ranks keeping the most ΔW energy within ``b``: greedy on σ²/cost (exact up to the last
    step, since each module's σ² is non-increasing)."""
    gains = sorted(
        ((float(s[j] ** 2) / cost(n), n, j) for n, s in delta_sv.items() for j in range(len(s))),
        reverse=True,
    )
    out: dict[str, int] = {}
    room = b
    for _, n, _j in gains:
        if cost(n) <= room:
            out[n] = out.get(n, 0) + 1
            room -= cost(n)
    return out


if __name__ == "__main__":
    for r in R_BUDGETS:
        for arm in LIBRARY + RULES:
            rk = ranks(arm, r)
            used = sum(cost(n) * k for n, k in rk.items())
            print(r, arm, used, len(rk), sorted(set(rk.values())))
