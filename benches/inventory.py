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


def cpu() -> dict[str, Any]:
    """``lscpu``'s model name, family and model, and whether the CPU has AVX-512 (any
    ``avx512*`` flag) and AVX-512 BF16."""
    import subprocess

    fields = {}
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    flags = fields.get("Flags", "").split()
    return {
        "model_name": fields.get("Model name"),
        "family": fields.get("CPU family"),
        "model": fields.get("Model"),
        "avx512": any(f.startswith("avx512") for f in flags),
        "avx512_bf16": "avx512_bf16" in flags,
        "cpus": os.cpu_count(),
    }


def pair(path: Path, rounds: int, ours: str = "lora_rank", anchor: str = "safe_open_np") -> dict:
    """Whole processes of ``ours`` and ``anchor`` on ``path``, side by side: one untimed
    warm-up each, then ``rounds`` rounds, each timing one process of both (the order
    alternating between rounds, so drifting load hits both alike). Ratio = ours / anchor."""
    from measure import python_process

    codes = {name: METHODS[name].process_code() for name in (ours, anchor)}
    times: dict[str, list[float]] = {ours: [], anchor: []}
    results: dict[str, Any] = {}
    load = [os.getloadavg()[0]]
    for code in codes.values():  # warm-up: page cache, bytecode cache
        python_process(code, [str(path)], 1, warmup=0)
    for i in range(rounds):
        order = (ours, anchor) if i % 2 == 0 else (anchor, ours)
        for name in order:
            r = python_process(codes[name], [str(path)], 1, warmup=0)
            times[name].append(r["min"])
            results[name] = r["result"]
    load.append(os.getloadavg()[0])
    import statistics

    out: dict[str, Any] = {"checkpoint": str(path), "rounds": rounds, "cpu": cpu(), "load": load}
    for name in (ours, anchor):
        out[name] = {
            "min": min(times[name]),
            "median": statistics.median(times[name]),
            "runs": times[name],
            "result": results[name],
        }
    out["ratio_of_medians"] = out[ours]["median"] / out[anchor]["median"]
    out["ratio_of_mins"] = out[ours]["min"] / out[anchor]["min"]
    return out


_STAGES = """\
import gc, math, os, sys, time
t0 = time.perf_counter()
import lora_rank
from lora_rank import _core
from lora_rank.inventory import quantization
from lora_rank.inventory.modules import build_modules
from lora_rank.sources.checkpoint import Checkpoint
from lora_rank.gc_pause import gc_paused
t1 = time.perf_counter()
P, rounds = sys.argv[1], int(sys.argv[2])
best = {}
for _ in range(rounds):
    pause = gc_paused(); pause.__enter__()
    marks = [("start", time.perf_counter())]
    raw = _core.open_checkpoint(P, None); marks.append(("Rust headers + rows", time.perf_counter()))
    ck = Checkpoint.from_core(raw); marks.append(("Tensor objects", time.perf_counter()))
    lg = quantization.logical_tensors(ck.tensors, ck.config, os.path.join(ck.root, "config.json"), ck.shards)
    marks.append(("quantized formats", time.perf_counter()))
    mods, _, _ = build_modules(lg.tensors, ck.config); marks.append(("naming + grouping", time.perf_counter()))
    quantization.attach(mods, lg); marks.append(("attach", time.perf_counter()))
    sum(math.prod(t.shape) for t in lg.tensors); sum(t.end - t.begin for t in ck.tensors)
    quantization.stored_elements(ck.tensors); marks.append(("totals", time.perf_counter()))
    pause.__exit__(None, None, None); [[] for _ in range(1000)]
    marks.append(("GC back on + its first pass", time.perf_counter()))
    del raw, ck, lg, mods; marks.append(("freeing", time.perf_counter()))
    for (_, a), (label, b) in zip(marks, marks[1:]):
        best[label] = min(best.get(label, 1e9), b - a)
print("BENCH " + __import__("json").dumps({"import lora_rank": t1 - t0, **best}))
"""


def stages(path: Path, rounds: int) -> dict[str, float]:
    """Minimum seconds of each stage of ``analyze()`` over ``rounds`` in one process (the
    cyclic GC paused as ``analyze`` pauses it, ``gc_pause.gc_paused``), and of ``import
    lora_rank``."""
    import subprocess
    import sys

    from measure import ENV

    proc = subprocess.run(
        [sys.executable, "-c", _STAGES, str(path), str(rounds)],
        capture_output=True, text=True, env=ENV, check=True,
    )  # fmt: skip
    line = next(x for x in proc.stdout.splitlines() if x.startswith("BENCH "))
    import json

    return dict(json.loads(line[len("BENCH ") :]))


def main() -> None:
    """``python benches/inventory.py --pair [PATH] [--rounds N] [--stages]``: the whole
    ``analyze()`` process against the raw ``safe_open`` header loop (numpy framework) on one
    checkpoint (default: the DeepSeek-V3 671B FP8 one, built if missing), interleaved."""
    import argparse
    import json

    import checkpoints

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--pair", nargs="?", const="deepseek-v3-fp8", default="deepseek-v3-fp8")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--stages", action="store_true", help="also time analyze()'s stages")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    path = Path(args.pair)
    if not path.exists():
        path = checkpoints.build_sparse(checkpoints.SPARSE[args.pair])
    out = pair(path, args.rounds)
    c = out["cpu"]
    print(
        f"{c['model_name']} (family {c['family']} model {c['model']}, AVX-512 "
        f"{'yes' if c['avx512'] else 'no'}), {c['cpus']} CPUs; load {out['load'][0]:.2f} → "
        f"{out['load'][1]:.2f}"
    )
    for name in ("lora_rank", "safe_open_np"):
        r = out[name]
        print(
            f"  {name:13} min {r['min']:.3f} s  median {r['median']:.3f} s  "
            f"({METHODS[name].what}: {r['result']})"
        )
    print(
        f"  ratio lora_rank / safe_open_np: {out['ratio_of_medians']:.2f}× of medians, "
        f"{out['ratio_of_mins']:.2f}× of mins (goal ≤ 2×)"
    )
    if args.stages:
        out["stages"] = stages(path, 3)
        print("  stages (min of 3, ms): " + ", ".join(
            f"{k} {v * 1000:.0f}" for k, v in out["stages"].items()
        ))  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
