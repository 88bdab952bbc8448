"""Recommendation-quality benchmark: does a strategy's allocation fine-tune better at equal
budget? (benches/README.md "Recommendation quality"; design and decision rule in DECISION.md.)

    python benches/quality/run.py                       # the committed (reduced) grid + tables
    python benches/quality/run.py --quick               # smoke run, a few minutes (no screen)
    python benches/quality/run.py --stage lr|train|screen|tables [--shard i/n] ...

The learning-rate check (``--stage lr``) trains all-linear at the budget of r=4 for every lr in
``LRS`` and seeds 0 and 1; a task's training lr is the one with the lowest validation NLL
averaged over the two seeds (DECISION.md amendment 10: BBC too, whose cells were first trained
at 2e-3 before its check ran).

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
import tables
import train

RESULTS = Path(__file__).resolve().parents[1] / "results" / "quality"
RUNS = RESULTS / "runs.jsonl"
#: The learning-rate check's grid (DECISION.md amendment 6; amendment 2 had cut it to 2e-3).
LRS = (1e-3, 2e-3, 5e-3)
#: The check's budget and seeds (defined in tables.py, which reads the check the same way).
LR_R, LR_SEEDS = tables.LR_CHECK_R, tables.LR_CHECK_SEEDS
EPOCHS = 3
SEEDS = (0, 1, 2, 3, 4)


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
    # The learning-rate run of all-linear at an lr and seed and its training run are the same
    # function with the same arguments: whichever ran first is recorded for the other too.
    twin = key("train" if stage == "lr" else "lr", task, arm, r, lr, seed, epochs)
    if stage in ("lr", "train") and twin in runs:
        row = {**runs[twin], "key": k, "stage": stage, "reused": twin}
        with RUNS.open("a") as f:
            f.write(json.dumps(row) + "\n")
        return
    ranks = arms.ranks(arm, r, task=task, seed=seed)
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
        **(
            {"delta_source": "{}_s{}".format(*arms.delta_source(arm, task, seed))}
            if arm in arms.DELTA
            else {}
        ),
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
    """The training lr of ``task``: the lr of the check (all-linear at budget ``r``) with the
    lowest validation NLL averaged over ``seeds`` (``tables.lowest_lr``)."""
    lr = tables.lowest_lr(list(done().values()), task, r, epochs, len(seeds))
    if lr is None:
        raise SystemExit(f"no complete learning-rate runs for {task} r={r}: run --stage lr")
    return lr


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
    lr_r = a.r[0] if a.quick else LR_R
    if a.stage in ("all", "lr"):
        # Seed-major: every lr at seed 0, then every lr at seed 1.
        jobs = [(t, lr, s) for t in tasks for s in tables.lr_check_seeds(t) for lr in LRS]
        if a.quick:
            jobs = [(tasks[0], LRS[0], 0)]
        for t, lr, s in jobs[i::n]:
            if a.until and _past(a.until):
                print(f"--until {a.until} UTC: not starting lr {t}/lr{lr:g}/s{s}", flush=True)
                break
            run_one("lr", t, "all-linear", lr_r, lr, s, a.epochs)
    if a.stage in ("all", "train"):
        jobs = [(t, r, arm, s) for t in tasks for r in a.r for s in a.seeds for arm in a.arms]
        for t, r, arm, s in jobs[i::n]:
            if a.until and _past(a.until):
                print(f"--until {a.until} UTC: not starting {t}/{arm}/r{r}/s{s}", flush=True)
                break
            lr = chosen_lr(t, lr_r, a.epochs, (0,) if a.quick else tables.lr_check_seeds(t))
            run_one("train", t, arm, r, lr, s, a.epochs)
    if a.stage in ("all", "tables"):
        print(tables.write(RESULTS))
    if a.quick:
        import shutil

        shutil.rmtree(RESULTS)


if __name__ == "__main__":
    main()
