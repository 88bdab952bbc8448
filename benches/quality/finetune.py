"""The weight-space screen's full fine-tune: every linear weight (and bias) of MiniLM plus the
classifier, one seed; saves the fine-tuned state dict under ``benches/data/quality/``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import train

OUT = Path(__file__).resolve().parents[1] / "data" / "quality"
FT_LR = 1e-4
FT_EPOCHS = 4


def finetune(task: str, epochs: int = FT_EPOCHS) -> Path:
    import torch

    OUT.mkdir(parents=True, exist_ok=True)
    res = train.train(task, None, lr=FT_LR, seed=0, epochs=epochs, keep=True)
    model = res.pop("model")
    path = OUT / f"ft_{task}.pt"
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, path)
    (OUT / f"ft_{task}.json").write_text(json.dumps({**res, "lr": FT_LR, "epochs": epochs}))
    print(task, res, flush=True)
    return path


if __name__ == "__main__":
    for t in sys.argv[1:]:
        finetune(t)
