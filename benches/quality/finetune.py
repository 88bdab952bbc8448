"""The weight-space screen's full fine-tune: every linear weight (and bias) of MiniLM plus the
classifier, one seed; saves the fine-tuned state dict under ``benches/data/quality/``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import train

OUT = Path(__file__).resolve().parents[1] / "data" / "quality"
#: (lr, epochs) of each task's full fine-tune. Drug (DECISION.md amendment 6): at BBC's 1e-4 for
#: 4 epochs it predicted only the majority class; 2e-4 for 8 epochs was the first setting tried
#: that learned beyond it. rt (DECISION.md, "Delta strategy"): BBC's schedule, fixed before any run.
FT = {"bbc": (1e-4, 4), "drug": (2e-4, 8), "rt": (1e-4, 4)}


def finetune(task: str) -> Path:
    import torch

    lr, epochs = FT[task]
    OUT.mkdir(parents=True, exist_ok=True)
    res = train.train(task, None, lr=lr, seed=0, epochs=epochs, keep=True)
    model = res.pop("model")
    path = OUT / f"ft_{task}.pt"
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, path)
    (OUT / f"ft_{task}.json").write_text(json.dumps({**res, "lr": lr, "epochs": epochs}))
    print(task, res, flush=True)
    return path


if __name__ == "__main__":
    for t in sys.argv[1:]:
        finetune(t)
