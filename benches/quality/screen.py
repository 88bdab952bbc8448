"""The weight-space screen: from one full fine-tune per task, ΔW = W_ft − W_base of each of
all-linear's 37 modules; for each arm's ranks (and the oracle allocation of ΔW at the same
budget) the share of Σ‖ΔW‖² the rank-r truncations keep, and the test accuracy / NLL of the
base model + truncated ΔW (fine-tuned classifier, base biases). Seed-free and cheap; full
fine-tuning's ΔW is not what LoRA learns, so this only filters which rules get trained."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import arms
import data
import finetune
import numpy as np
import train

RESULTS = Path(__file__).resolve().parents[1] / "results" / "quality"


def _deltas(task: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    import torch

    path = finetune.OUT / f"ft_{task}.pt"
    if not path.exists():
        finetune.finetune(task)
    ft = torch.load(path)
    base = train._model(len(data.load(task).labels), 0).state_dict()
    deltas = {
        n: (ft[f"{train.PREFIX}{n}.weight"] - base[f"{train.PREFIX}{n}.weight"]).double()
        for n in arms.modules()
    }
    return ft, base, deltas


def screen(task: str) -> dict[str, Any]:
    """Energy kept and truncated-ΔW accuracy of every arm at every budget (also saved as
    ``screen_{task}.json``)."""
    import torch

    torch.set_num_threads(1)
    t = data.load(task)
    ft, base, deltas = _deltas(task)
    svd = {n: torch.linalg.svd(d, full_matrices=False) for n, d in deltas.items()}
    total = sum(float((d**2).sum()) for d in deltas.values())
    model = train._model(len(t.labels), 0)
    model.load_state_dict({**base, **{k: v for k, v in ft.items() if k.startswith("classifier")}})
    params = dict(model.named_parameters())

    def apply(ranks: dict[str, int]) -> None:
        with torch.no_grad():
            for n in deltas:
                w = base[f"{train.PREFIX}{n}.weight"].double()
                k = ranks.get(n, 0)
                if k:
                    u, s, vh = svd[n]
                    w = w + (u[:, :k] * s[:k]) @ vh[:k]
                params[f"{train.PREFIX}{n}.weight"].copy_(w.float())

    def kept(ranks: dict[str, int]) -> float:
        return sum(float((svd[n][1][:k] ** 2).sum()) for n, k in ranks.items()) / total

    full = {n: min(d.shape) for n, d in deltas.items()}
    apply(full)
    rows: list[dict[str, Any]] = [
        {"arm": "full ΔW", "r": None, "kept": 1.0, **train.evaluate(model, t, "test")}
    ]
    apply({})
    rows.append(
        {"arm": "no ΔW (head only)", "r": None, "kept": 0.0, **train.evaluate(model, t, "test")}
    )
    sv = {n: s.numpy() for n, (_, s, _) in svd.items()}
    for r in arms.R_BUDGETS:
        for arm in (*arms.LIBRARY, *arms.RULES, "oracle"):
            ranks = arms.oracle(sv, arms.budget(r)) if arm == "oracle" else arms.ranks(arm, r)
            apply(ranks)
            rows.append(
                {
                    "arm": arm,
                    "r": r,
                    "kept": kept(ranks),
                    "modules": len(ranks),
                    **train.evaluate(model, t, "test"),
                    "ranks": ranks,
                }
            )
            print(task, r, arm, round(rows[-1]["kept"], 3), round(rows[-1]["acc"], 4), flush=True)
    # ΔW's own profile: relative size and energy rank 90% per module.
    profile = {}
    for n, (_, s, _) in svd.items():
        e = np.cumsum(s.numpy() ** 2) / float((s**2).sum())
        profile[n] = {
            "rel_norm": float(deltas[n].norm() / base[f"{train.PREFIX}{n}.weight"].double().norm()),
            "energy_rank_90": int(np.searchsorted(e, 0.9) + 1),
        }
    out = {
        "task": task,
        "ft": json.loads((finetune.OUT / f"ft_{task}.json").read_text()),
        "rows": rows,
        "profile": profile,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"screen_{task}.json").write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    import sys

    for name in sys.argv[1:]:
        screen(name)
