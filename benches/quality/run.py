"""Recommendation-quality benchmark: does a strategy's allocation fine-tune better at equal
budget? (benches/README.md "Recommendation quality"; design and decision rule in DECISION.md.)

    python benches/quality/run.py                       # the committed (reduced) grid + tables
    python benches/quality/run.py --quick               # smoke run, a few minutes (no screen)
    python benches/quality/run.py --stage lr|train|screen|tables [--shard i/n] ...

Runs append to ``benches/results/quality/runs.jsonl`` (one JSON line per run; a run already
there is skipped, so an interrupted grid resumes); ``tables`` writes
``benches/results/quality/tables.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import arms
import train

RESULTS = Path(__file__).resolve().parents[1] / "results" / "quality"
RUNS = RESULTS / "runs.jsonl"
#: DECISION.md amendment 2: only the pilot's 2e-3 (5e-3 was cut for compute).
LRS = (2e-3,)
EPOCHS = 3
SEEDS = (0, 1, 2, 3, 4)
LR_SEEDS = (0, 1)


def done() -> dict[str, dict[str, Any]]:
    if not RUNS.exists():
        return {}
    rows = [json.loads(line) for line in RUNS.read_text().splitlines() if line.strip()]
    return {r["key"]: r for r in rows}


def key(stage: str, task: str, arm: str, r: int, lr: float, seed: int, epochs: int) -> str:
    return f"{stage}/{task}/{arm}/r{r}/lr{lr:g}/s{seed}/e{epochs}"


def run_one(stage: str, task: str, arm: str, r: int, lr: float, seed: int, epochs: int) -> None:
    k = key(stage, task, arm, r, lr, seed, epochs)
    runs = done()
    if k in runs:
        return
    twin = key("lr", task, arm, r, lr, seed, epochs)
    if stage == "train" and twin in runs:
        # The learning-rate run of all-linear at this lr and seed is this very run.
        row = {**runs[twin], "key": k, "stage": "train", "reused": twin}
        with RUNS.open("a") as f:
            f.write(json.dumps(row) + "\n")
        return
    ranks = arms.ranks(arm, r)
    res = train.train(task, ranks, lr=lr, seed=seed, epochs=epochs)
    row = {
        "key": k,
        "stage": stage,
        "task": task,
        "arm": arm,
        "r": r,
        "lr": lr,
        "seed": seed,
        "epochs": epochs,
        "budget": arms.budget(r),
        **res,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    with RUNS.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(
        k,
        {x: row[x] for x in ("trainable", "seconds", "val_nll", "test_acc", "test_nll")},
        flush=True,
    )


def chosen_lr(task: str, r: int, epochs: int, seeds: tuple[int, ...] = LR_SEEDS) -> float:
    if len(LRS) == 1:
        # Nothing to choose (DECISION.md amendment 2 fixed the rate): every budget uses it,
        # including those with no learning-rate runs (r=8, amendment 3).
        return LRS[0]
    rows = [
        v
        for v in done().values()
        if v["stage"] == "lr" and v["task"] == task and v["r"] == r and v["epochs"] == epochs
    ]
    mean = {}
    for lr in {v["lr"] for v in rows}:
        got = [v["val_nll"] for v in rows if v["lr"] == lr]
        if len(got) == len(seeds):
            mean[lr] = sum(got) / len(got)
    if not mean:
        raise SystemExit(f"no complete learning-rate runs for {task} r={r}: run --stage lr")
    return min(mean, key=lambda x: mean[x])


def _past(hhmm: str) -> bool:
    import datetime as dt

    now = dt.datetime.now(dt.timezone.utc)
    h, m = (int(x) for x in hhmm.split(":"))
    return now >= now.replace(hour=h, minute=m, second=0, microsecond=0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stage", choices=("all", "screen", "lr", "train", "tables"), default="all")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--tasks", default="bbc")
    p.add_argument("--r", type=int, nargs="+", default=[2])
    p.add_argument("--arms", nargs="+", default=["all-linear", "auto", "snr"])
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    p.add_argument("--epochs", type=int, default=EPOCHS)
    p.add_argument("--shard", default="0/1", help="i/n: run every n-th job from the i-th")
    p.add_argument(
        "--until",
        default=None,
        help="HH:MM (UTC, today): start no training run at or after this time",
    )
    a = p.parse_args()
    if a.quick:
        global RESULTS, RUNS
        import tempfile

        RESULTS = Path(tempfile.mkdtemp(prefix="lora-rank-quality-"))
        RUNS = RESULTS / "runs.jsonl"
        a.epochs, a.seeds, a.arms, a.r = 1, [0], ["all-linear", "auto"], [2]
    i, n = (int(x) for x in a.shard.split("/"))
    tasks = a.tasks.split(",")
    if a.stage in ("all", "screen") and not a.quick:
        import screen

        for t in tasks:
            screen.screen(t)
    if a.stage in ("all", "lr"):
        jobs = [(t, r, lr, s) for t in tasks for r in a.r for lr in LRS for s in LR_SEEDS]
        if a.quick:
            jobs = [(tasks[0], 2, LRS[0], 0)]
        for t, r, lr, s in jobs[i::n]:
            run_one("lr", t, "all-linear", r, lr, s, a.epochs)
    if a.stage in ("all", "train"):
        jobs = [(t, r, arm, s) for t in tasks for r in a.r for s in a.seeds for arm in a.arms]
        for t, r, arm, s in jobs[i::n]:
            if a.until and _past(a.until):
                print(f"--until {a.until} UTC: not starting {t}/{arm}/r{r}/s{s}", flush=True)
                break
            lr = chosen_lr(t, r, a.epochs, (0,) if a.quick else LR_SEEDS)
            run_one("train", t, arm, r, lr, s, a.epochs)
    if a.stage in ("all", "tables"):
        import tables

        print(tables.write(RESULTS))
    if a.quick:
        import shutil

        shutil.rmtree(RESULTS)


if __name__ == "__main__":
    main()
