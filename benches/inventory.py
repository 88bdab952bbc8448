"""Inventory benchmark: ``lora_rank.analyze()`` vs the ways users list LoRA targets today.

Each method is timed twice with the same code (see ``measure.Method``):
- "call": in a worker process, after the imports and one warm-up call, ``runs`` timed calls;
- "process": ``python -c "<imports>; <call>"`` timed as a whole process (interpreter start,
  imports, the call, exit), ``runs`` times after one warm-up process.
Memory (``VmHWM`` peak RSS, ``RssAnon``, ``RssFile``) is read from ``/proc/self/status`` at the
end of each whole process.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from measure import REPORT, Method, python_process, time_call, time_process

_SAFE_OPEN = """\
result = 0
for f in sorted(glob.glob(os.path.join(P, "*.safetensors"))):
    with safe_open(f, framework="{fw}") as h:
        for k in h.keys():
            h.get_slice(k).get_shape()
            result += 1
"""

_META_MODEL = """\
cfg = transformers.AutoConfig.from_pretrained(P)
with torch.device("meta"):
    model = transformers.AutoModelForCausalLM.from_config(cfg)
"""

METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method(
            "lora_rank",
            "all-linear targets",
            "import lora_rank",
            "result = len(lora_rank.analyze(P).lora_targets)\n",
        ),
        Method(
            "safe_open",
            "tensors",
            "import glob, os\nfrom safetensors import safe_open",
            _SAFE_OPEN.format(fw="pt"),
        ),
        Method(
            "safe_open_np",
            "tensors",
            "import glob, os\nfrom safetensors import safe_open",
            _SAFE_OPEN.format(fw="numpy"),
        ),
        Method(
            "meta",
            "nn.Linear modules",
            "import torch, transformers",
            _META_MODEL + "result = len([n for n, m in model.named_modules() "
            "if isinstance(m, torch.nn.Linear)])\n",
        ),
        Method(
            "peft",
            "wrapped modules",
            "import torch, transformers\nfrom peft import LoraConfig, get_peft_model\n"
            "from peft.tuners.tuners_utils import BaseTunerLayer",
            _META_MODEL
            + """\
model = get_peft_model(model, LoraConfig(target_modules="all-linear"))
result = len([n for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)])
""",
        ),
        Method(
            "lora_rank_count",
            "trainable parameters (all-linear, r=8)",
            "import lora_rank\nfrom lora_rank.recommend.strategies import recommend",
            'result = recommend(lora_rank.analyze(P), "all-linear", r=8).trainable_params\n',
        ),
        Method(
            "peft_count",
            "trainable parameters (all-linear, r=8)",
            "import torch, transformers\nfrom peft import LoraConfig, get_peft_model",
            _META_MODEL
            + """\
model = get_peft_model(model, LoraConfig(target_modules="all-linear", r=8))
result = model.get_nb_trainable_parameters()[0]
""",
        ),
    ]
}

#: Pairs compared against the goals of issue 13: (ours, anchor, mode).
GOALS = (
    ("lora_rank", "safe_open", "call"),
    ("lora_rank_count", "peft_count", "process"),
)

DESCRIPTIONS = {
    "lora_rank": "`lora_rank.analyze(p)`: Rust header reads + shipped transformers name rules",
    "safe_open": '`safetensors.safe_open(f, framework="pt")` per shard, `keys()` + '
    "`get_slice(k).get_shape()` (imports torch)",
    "safe_open_np": 'the same loop with `framework="numpy"` (no torch import)',
    "meta": "`AutoConfig.from_pretrained` + `AutoModelForCausalLM.from_config` under "
    '`torch.device("meta")` + `named_modules()` filtered to `nn.Linear`',
    "peft": 'that meta model + `get_peft_model(model, LoraConfig(target_modules="all-linear"))`, '
    "count of `BaseTunerLayer`s",
    "lora_rank_count": '`recommend(lora_rank.analyze(p), "all-linear", r=8).trainable_params`: '
    "the exact count PEFT would train, header-only",
    "peft_count": 'the meta model + `get_peft_model(model, LoraConfig(target_modules="all-linear", '
    "r=8))` + `get_nb_trainable_parameters()[0]`",
}

# --quick (CI smoke run, < 1 min with the spectral smoke run): fewer torch imports; "peft"
# builds the meta-device model too.
QUICK = {"call": ["lora_rank", "safe_open_np", "peft"], "process": ["lora_rank", "lora_rank_count"]}


def run(
    checkpoints: dict[str, Path],
    runs: int,
    *,
    only: dict[str, list[str]] | None = None,
    log: Any = print,
) -> list[dict[str, Any]]:
    """Time every method (or ``only[mode]``) on every checkpoint in both modes; one record per
    (checkpoint, method, mode), with ``ratio`` = median / median of ``lora_rank`` in the same
    mode."""
    records = []
    for ckpt, path in checkpoints.items():
        for mode in ("call", "process"):
            base = None
            for name, m in METHODS.items():  # lora_rank first: the base of the ratios
                if only is not None and name not in only[mode]:
                    continue
                timer = time_call if mode == "call" else time_process
                r = timer(m, str(path), runs)
                base = base if base is not None else r["median"]
                rec = {"checkpoint": ckpt, "method": name, "mode": mode, **r}
                rec["loadavg_1min"] = os.getloadavg()[0]  # others' work on the machine
                rec["ratio"] = r["median"] / base
                log(
                    f"  {ckpt:14} {mode:8} {name:13} min {r['min']:8.4f} s  "
                    f"median {r['median']:8.4f} s  x{rec['ratio']:7.1f}  "
                    f"peak {r['memory']['VmHWM']:6.0f} MiB  {m.what}: {r['result']}"
                )
                records.append(rec)
    return records


def interpreter_start(runs: int) -> dict[str, Any]:
    """Whole-process time of ``python -c`` doing nothing (the floor of every process time)."""
    return python_process("result = None" + REPORT, [], runs)
