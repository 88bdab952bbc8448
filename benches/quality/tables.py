"""Tables of the quality benchmark (markdown): training arms (test accuracy and NLL, mean ± sd
over seeds), paired differences against the best preset with 95% t-intervals, and the
weight-space screen."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any, Optional

PRESETS = ("all-linear", "attention-qv")
#: Arm names as the tables show them (``auto`` is the rule auto followed before this benchmark).
SHOWN = {"auto": "old auto (spectral)"}


def t95(df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def paired(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, float, int]:
    """Mean of a − b over common seeds and its 95% t-interval."""
    seeds = sorted(set(a) & set(b))
    d = [a[s] - b[s] for s in seeds]
    if len(d) < 2:
        return (d[0] if d else math.nan), math.nan, math.nan, len(d)
    m, sd = statistics.fmean(d), statistics.stdev(d)
    h = t95(len(d) - 1) * sd / math.sqrt(len(d))
    return m, m - h, m + h, len(d)


def _ms(xs: list[float], scale: float = 1.0, nd: int = 1) -> str:
    if not xs:
        return "–"
    sd = statistics.stdev(xs) * scale if len(xs) > 1 else math.nan
    return f"{statistics.fmean(xs) * scale:.{nd}f} ± {sd:.{nd}f}"


#: The learning-rate check's budget and seeds (DECISION.md amendment 6): all-linear at r=4,
#: seeds 0 and 1; its choice applies to every budget of a task.
LR_CHECK_R, LR_CHECK_SEEDS = 4, (0, 1)
#: Tasks whose check ran on other seeds (DECISION.md "Delta strategy": rt on seed 0 only).
LR_CHECK_SEEDS_BY_TASK = {"rt": (0,)}


def lr_check_seeds(task: str) -> tuple[int, ...]:
    """The seeds of ``task``'s learning-rate check."""
    return LR_CHECK_SEEDS_BY_TASK.get(task, LR_CHECK_SEEDS)


Cell = tuple[str, int, int, float]  # task, r, epochs, lr


def lowest_lr(
    rows: list[dict[str, Any]], task: str, r: int, epochs: int, seeds: int
) -> Optional[float]:
    """The lr of ``task``'s learning-rate check (all-linear at budget ``r``, ``epochs``) with
    the lowest validation NLL averaged over its ``seeds`` runs; None without a complete lr.

    Example:
        >>> row = dict(stage="lr", task="t", r=4, epochs=3)
        >>> rows = [dict(row, lr=1e-3, val_nll=0.5), dict(row, lr=2e-3, val_nll=0.4)]
        >>> lowest_lr(rows, "t", 4, 3, 1)
        0.002
    """
    got: dict[float, list[float]] = {}
    for v in rows:
        if (v["stage"], v["task"], v["r"], v["epochs"]) == ("lr", task, r, epochs):
            got.setdefault(v["lr"], []).append(v["val_nll"])
    mean = {lr: sum(n) / len(n) for lr, n in got.items() if len(n) == seeds}
    return min(mean, key=lambda x: mean[x]) if mean else None


def _cells(rows: list[dict[str, Any]]) -> list[Cell]:
    return sorted(
        {(x["task"], x["r"], x["epochs"], x["lr"]) for x in rows if x["stage"] == "train"}
    )


def _in_cell(x: dict[str, Any], cell: Cell) -> bool:
    return x["stage"] == "train" and (x["task"], x["r"], x["epochs"], x["lr"]) == cell


def _name(cell: Cell) -> str:
    return f"{cell[0]}/r{cell[1]}/lr{cell[3]:g}"


def design_cells(rows: list[dict[str, Any]], cells: list[Cell]) -> list[Cell]:
    """The cells the decision rule reads: each task's at the lr its check chose (amendment 10;
    BBC's cells at 2e-3, trained before its check, are tables for reading)."""
    chosen = {
        (t, ep): lowest_lr(rows, t, LR_CHECK_R, ep, len(lr_check_seeds(t))) for t, _, ep, _ in cells
    }
    return [c for c in cells if chosen[c[0], c[2]] == c[3]]


def training_tables(rows: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    out, decision = [], {}
    cells = _cells(rows)
    for task, r, ep, lr in cells:
        cell = [x for x in rows if _in_cell(x, (task, r, ep, lr))]
        by_arm: dict[str, dict[int, dict[str, Any]]] = {}
        for x in cell:
            by_arm.setdefault(x["arm"], {})[x["seed"]] = x
        acc = {a: {s: v["test_acc"] for s, v in d.items()} for a, d in by_arm.items()}
        nll = {a: {s: v["test_nll"] for s, v in d.items()} for a, d in by_arm.items()}
        present = [p for p in PRESETS if p in acc]
        best = max(present, key=lambda p: statistics.fmean(acc[p].values())) if present else None
        out.append(
            f"\n**{task}, budget all-linear r={r} ({cell[0]['budget']:,} LoRA parameters), "
            f"{ep} epochs, lr {lr:g}; best preset: {best}** (majority class: "
            f"{100 * majority(task):.1f}% of test)\n"
        )
        out.append(
            "| arm | trainable | seeds | test acc % (mean ± sd) | test NLL (mean ± sd) | "
            f"Δacc vs {best} [95% CI] (points) | ΔNLL vs {best} [95% CI] |"
        )
        out.append("|---|---|---|---|---|---|---|")
        for a, d in sorted(by_arm.items(), key=lambda kv: -statistics.fmean(acc[kv[0]].values())):
            trainable = next(iter(d.values()))["trainable"]
            if best and a != best:
                m, lo, hi, n = paired(acc[a], acc[best])
                dn = paired(nll[a], nll[best])
                da = f"{100 * m:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] (n={n})"
                dnl = f"{dn[0]:+.3f} [{dn[1]:+.3f}, {dn[2]:+.3f}]"
                decision[f"{_name((task, r, ep, lr))}/{a}"] = {
                    "d_acc": m,
                    "lo": lo,
                    "hi": hi,
                    "n": n,
                    "d_nll": dn[0],
                    # Amendment 1: fewer than 3 paired seeds cannot beat the presets.
                    "beats": bool(n >= 3 and lo > 0 and dn[0] <= 0),
                }
            else:
                da = dnl = "–"
            out.append(
                f"| {SHOWN.get(a, a)} | {trainable:,} | {len(d)} | "
                f"{_ms(list(acc[a].values()), 100)} | "
                f"{_ms(list(nll[a].values()), 1, 3)} | {da} | {dnl} |"
            )
    out.append(versus_all_linear(rows, cells))
    out.append(verdict(design_cells(rows, cells), decision))
    out.append(delta_verdict(rows, design_cells(rows, cells), decision))
    lr_rows = [x for x in rows if x["stage"] == "lr"]
    if lr_rows:
        out.append(
            "\nLearning-rate check (all-linear, validation NLL and accuracy, mean over seeds; "
            "lowest: the lowest mean validation NLL of the task's check, with its seeds per lr: "
            "2, rt 1):\n"
        )
        out.append("| task | r | epochs | lr | seeds | val NLL | val acc % | lowest |")
        out.append("|---|---|---|---|---|---|---|---|")
        groups = sorted({(x["task"], x["r"], x["epochs"], x["lr"]) for x in lr_rows})
        mean = {}
        for key in groups:
            g = [x for x in lr_rows if (x["task"], x["r"], x["epochs"], x["lr"]) == key]
            mean[key] = (len(g), statistics.fmean(x["val_nll"] for x in g))
        for key in groups:
            g = [x for x in lr_rows if (x["task"], x["r"], x["epochs"], x["lr"]) == key]
            need = len(lr_check_seeds(key[0]))
            rivals = [v[1] for k, v in mean.items() if k[:3] == key[:3] and v[0] >= need]
            lowest = len(rivals) > 1 and mean[key][0] >= need and mean[key][1] == min(rivals)
            out.append(
                f"| {key[0]} | {key[1]} | {key[2]} | {key[3]:g} | {len(g)} | "
                f"{mean[key][1]:.3f} | "
                f"{100 * statistics.fmean(x['val_acc'] for x in g):.1f} | "
                f"{'←' if lowest else ''} |"
            )
    return "\n".join(out), decision


def majority(task: str) -> float:
    """Share of the most frequent label in ``task``'s test split (a constant classifier's
    accuracy)."""
    import collections

    import data

    test = data.load(task).test
    return max(collections.Counter(y for _, y in test).values()) / len(test)


def versus_all_linear(rows: list[dict[str, Any]], cells: list[Cell]) -> str:
    """Paired differences against all-linear in every cell (the decision uses the best preset,
    which is not always all-linear; this table is for reading, not for the rule)."""
    out = [
        "\nPaired differences against all-linear (same seed; mean [95% t-interval]):\n",
        "| cell | arm | seeds | Δacc (points) | ΔNLL |",
        "|---|---|---|---|---|",
    ]
    for c in cells:
        by_arm: dict[str, dict[int, dict[str, Any]]] = {}
        for x in rows:
            if _in_cell(x, c):
                by_arm.setdefault(x["arm"], {})[x["seed"]] = x
        base = by_arm.get("all-linear")
        if not base:
            continue
        for a, d in sorted(by_arm.items()):
            if a == "all-linear":
                continue

            def col(runs: dict[int, dict[str, Any]], k: str) -> dict[int, float]:
                return {s: v[k] for s, v in runs.items()}

            m, lo, hi, n = paired(col(d, "test_acc"), col(base, "test_acc"))
            dn = paired(col(d, "test_nll"), col(base, "test_nll"))
            out.append(
                f"| {c[0]} r={c[1]} lr {c[3]:g} | {SHOWN.get(a, a)} | {n} | "
                f"{100 * m:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] | "
                f"{dn[0]:+.3f} [{dn[1]:+.3f}, {dn[2]:+.3f}] |"
            )
    return "\n".join(out)


def verdict(cells: list[Cell], decision: dict[str, Any]) -> str:
    """DECISION.md's rule over the measured design cells: a rule (not a preset) beats the
    presets when it beats the best preset in every one."""
    if not decision or not cells:
        return ""
    names = [_name(c) for c in cells]
    arms = sorted({k.rsplit("/", 1)[1] for k in decision} - set(PRESETS))
    out = [
        "\nDecision rule over the measured cells at each task's checked lr (DECISION.md: 95% "
        "interval of Δacc above 0, mean ΔNLL ≤ 0, ≥ 3 paired seeds, in every cell):\n",
        "| arm | " + " | ".join(names) + " | beats the presets |",
        "|---|" + "---|" * (len(names) + 1),
    ]
    for a in arms:
        got = [decision.get(f"{c}/{a}") for c in names]
        marks = ["not run" if g is None else ("beats" if g["beats"] else "no") for g in got]
        every = all(g is not None and g["beats"] for g in got)
        row = [SHOWN.get(a, a), *marks, "yes" if every else "no"]
        out.append("| " + " | ".join(row) + " |")
    return "\n".join(out)


#: Issue 37's arms and tasks (DECISION.md "Delta strategy").
DELTA_ARMS = ("delta-same", "delta-transfer")
DELTA_TASKS = ("bbc", "rt")


def delta_verdict(rows: list[dict[str, Any]], cells: list[Cell], decision: dict[str, Any]) -> str:
    """DECISION.md "Delta strategy": each delta arm against the best preset in every measured
    cell of bbc and rt (≥ 3 paired seeds), and against all-linear (the issue's first question)."""
    cells = [c for c in cells if c[0] in DELTA_TASKS]
    measured = {
        a: [c for c in cells if decision.get(f"{_name(c)}/{a}", {}).get("n", 0) >= 3]
        for a in DELTA_ARMS
    }
    if not any(measured.values()):
        return ""
    out = [
        "\nDelta strategy (issue 37), over the measured cells of bbc and rt at their checked "
        "lr (≥ 3 paired seeds): Δacc vs the best preset [95% CI], and vs all-linear:\n",
        "| arm | cell | seeds | Δacc vs best preset | beats it | Δacc vs all-linear | beats it |",
        "|---|---|---|---|---|---|---|",
    ]
    for a in DELTA_ARMS:
        every_best = every_al = bool(measured[a])
        for c in measured[a]:
            d = decision[f"{_name(c)}/{a}"]
            arm = {x["seed"]: x for x in rows if _in_cell(x, c) and x["arm"] == a}
            al = {x["seed"]: x for x in rows if _in_cell(x, c) and x["arm"] == "all-linear"}
            m, lo, hi, n = paired(
                {s: v["test_acc"] for s, v in arm.items()},
                {s: v["test_acc"] for s, v in al.items()},
            )
            dn = paired(
                {s: v["test_nll"] for s, v in arm.items()},
                {s: v["test_nll"] for s, v in al.items()},
            )
            beats_al = n >= 3 and lo > 0 and dn[0] <= 0
            every_best &= d["beats"]
            every_al &= beats_al
            out.append(
                f"| {SHOWN.get(a, a)} | {_name(c)} | {d['n']} | "
                f"{100 * d['d_acc']:+.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}] | "
                f"{'yes' if d['beats'] else 'no'} | "
                f"{100 * m:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] | "
                f"{'yes' if beats_al else 'no'} |"
            )
        out.append(
            f"| **{SHOWN.get(a, a)}** | every measured cell ({len(measured[a])}) | | | "
            f"**{'yes' if every_best else 'no'}** | | **{'yes' if every_al else 'no'}** |"
        )
    return "\n".join(out)


def screen_tables(results: Path) -> str:
    out = []
    for f in sorted(results.glob("screen_*.json")):
        s = json.loads(f.read_text())
        ft = s["ft"]
        out.append(
            f"\n**Screen, {s['task']}** (full fine-tune: test acc {100 * ft['test_acc']:.1f}%, "
            f"NLL {ft['test_nll']:.3f}, lr {ft['lr']:g}, {ft['epochs']} epochs, seed 0)\n"
        )
        rs = sorted({x["r"] for x in s["rows"] if x["r"] is not None})
        arms = list(dict.fromkeys(x["arm"] for x in s["rows"] if x["r"] is not None))
        head = " | ".join(f"r={r}: ΔW kept / acc % / NLL" for r in rs)
        out.append(f"| arm | {head} |")
        out.append("|---|" + "---|" * len(rs))
        for x in s["rows"]:
            if x["r"] is None:
                out.append(
                    f"| {x['arm']} | "
                    + " | ".join(
                        f"{100 * x['kept']:.0f}% / {100 * x['acc']:.1f} / {x['nll']:.3f}"
                        for _ in rs
                    )
                    + " |"
                )
        for a in arms:
            cells = []
            for r in rs:
                x = next(y for y in s["rows"] if y["arm"] == a and y["r"] == r)
                cells.append(f"{100 * x['kept']:.0f}% / {100 * x['acc']:.1f} / {x['nll']:.3f}")
            out.append(f"| {SHOWN.get(a, a)} | " + " | ".join(cells) + " |")
        prof = s["profile"]
        layers: dict[str, list[int]] = {}
        for n, p in prof.items():
            lay = n.split(".")[2] if n.startswith("encoder.layer.") else "pooler"
            layers.setdefault(lay, []).append(p["energy_rank_90"])
        out.append(
            "\nΔW energy rank 90% by layer (min–max over modules): "
            + "; ".join(f"{k}: {min(v)}–{max(v)}" for k, v in layers.items())
        )
        rel = sorted(prof.items(), key=lambda kv: -kv[1]["rel_norm"])[:3]
        out[-1] += "; largest ‖ΔW‖/‖W‖: " + ", ".join(f"{n} {p['rel_norm']:.3f}" for n, p in rel)
    return "\n".join(out)


def write(results: Path) -> str:
    runs = results / "runs.jsonl"
    rows = (
        [json.loads(x) for x in runs.read_text().splitlines() if x.strip()] if runs.exists() else []
    )
    text, decision = training_tables(rows)
    md = "# Quality benchmark tables\n" + screen_tables(results) + "\n" + text + "\n"
    (results / "tables.md").write_text(md)
    (results / "decision.json").write_text(json.dumps(decision, indent=1))
    return md


if __name__ == "__main__":
    print(write(Path(__file__).resolve().parents[1] / "results" / "quality"))


# ---------------------------------------------------------------------------------------------
# Extraction benchmark (issue 33; DECISION.md "Extraction benchmark (issue 33)")

EXTRACT_ARMS = (
    "budgeted",
    "uniform",
    "kohya",
    "budgeted+bias",
    "uniform+bias",
    "full-rank",
    "full fine-tune",
)
#: The library and the reference agree on a cell when their ranks are equal and their energy
#: kept differs by at most this (share of Σ‖ΔW‖²).
AGREE_TOL = 1e-5


def _mci(xs: list[float], scale: float = 1.0, nd: int = 1) -> str:
    """Mean ± the 95% t-interval's half-width (df = n − 1); the mean alone for one value."""
    if not xs:
        return "–"
    m = statistics.fmean(xs) * scale
    if len(xs) < 2:
        return f"{m:.{nd}f}"
    h = t95(len(xs) - 1) * statistics.stdev(xs) * scale / math.sqrt(len(xs))
    return f"{m:.{nd}f} ± {h:.{nd}f}"


def extraction_rows(rows: list[dict[str, Any]], impl: str) -> dict[tuple[str, Any, str], dict]:
    """(task, r, arm) → {seed: row} for ``impl`` (``lib`` or ``ref``); the full fine-tune's own
    row (impl ``ft``) and the reference's full-rank ΔW are shown under every budget."""
    out: dict[tuple[str, Any, str], dict[int, dict[str, Any]]] = {}
    rs = sorted({x["r"] for x in rows if x["r"] is not None})
    for x in rows:
        if x["impl"] == "ft" or (x["arm"] == "full-rank" and x["impl"] == "ref"):
            for r in rs:
                out.setdefault((x["task"], r, x["arm"]), {})[x["seed"]] = x
        elif x["impl"] == impl:
            out.setdefault((x["task"], x["r"], x["arm"]), {})[x["seed"]] = x
    return out


def extraction_table(path: Path, impl: Optional[str] = None) -> str:
    """The extraction benchmark's markdown: per task × budget × arm, energy kept, LoRA
    parameters and test accuracy / NLL (mean ± 95% interval over the fine-tune seeds); per
    task × budget, the paired difference budgeted − uniform and DECISION.md's reading of it;
    with library rows, the library-vs-reference check."""
    if not path.exists():
        return "(no extraction results)"
    rows = json.loads(path.read_text())["rows"]
    if impl is None:
        impl = "lib" if any(x["impl"] == "lib" for x in rows) else "ref"
    cells = extraction_rows(rows, impl)
    who = "the library (`Comparison.extract`)" if impl == "lib" else "the bench's reference"
    out = [
        f"Extraction by {who}. Mean ± half-width of the 95% t-interval over the fine-tune "
        "seeds (n). Energy kept: share of Σ‖ΔW‖²_F over the 37 all-linear modules. "
        "`full-rank`: every module's whole ΔW as an adapter (the fine-tune without its "
        "bias changes); `full fine-tune`: the fine-tuned model itself.\n",
        "| task | budget | arm | n | energy kept % | LoRA params | test acc % | test NLL |",
        "|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(k[0], k[1]) for k in cells if k[1] is not None})
    diffs = [
        "\nPaired difference budgeted − uniform (same fine-tune seed; mean [95% t-interval]):\n",
        "| task | budget | n | Δacc (points) | reading | ΔNLL | Δenergy kept (points, min–max) |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, r in keys:
        got = {a: cells.get((task, r, a), {}) for a in EXTRACT_ARMS}
        budget = next((x["budget"] for x in got["budgeted"].values()), None)
        label = f"r={r}" + (f" ({budget:,})" if budget else "")
        for a in EXTRACT_ARMS:
            v = list(got[a].values())
            if not v:
                continue
            params = [x["lora_params"] for x in v if "lora_params" in x]
            shown = "–"
            if params:
                lo_p, hi_p = min(params), max(params)
                shown = f"{lo_p:,}" if lo_p == hi_p else f"{lo_p:,}–{hi_p:,}"
            out.append(
                f"| {task} | {label} | {a} | {len(v)} | "
                f"{_mci([x['energy_kept'] for x in v], 100, 1)} | {shown} | "
                f"{_mci([x['test_acc'] for x in v], 100)} | "
                f"{_mci([x['test_nll'] for x in v], 1, 3)} |"
            )
        b, u = got["budgeted"], got["uniform"]
        if b and u:
            m, lo, hi, n = paired(
                {s: x["test_acc"] for s, x in b.items()}, {s: x["test_acc"] for s, x in u.items()}
            )
            dn = paired(
                {s: x["test_nll"] for s, x in b.items()}, {s: x["test_nll"] for s, x in u.items()}
            )
            de = [b[s]["energy_kept"] - u[s]["energy_kept"] for s in sorted(set(b) & set(u))]
            reading = _verdict(lo, hi) if n >= 3 else "no claim (< 3 seeds)"
            acc = f"{100 * m:+.1f}" + ("" if n < 2 else f" [{100 * lo:+.1f}, {100 * hi:+.1f}]")
            nll = f"{dn[0]:+.3f}" + ("" if n < 2 else f" [{dn[1]:+.3f}, {dn[2]:+.3f}]")
            diffs.append(
                f"| {task} | {label} | {n} | {acc} | {reading} | {nll} | "
                f"{100 * min(de):+.1f} to {100 * max(de):+.1f}"
                f"{'' if min(de) >= 0 else ' (BELOW uniform)'} |"
            )
    out += diffs
    out.append(extraction_verdict(cells, keys))
    if impl == "lib":
        out.append(agreement_table(rows))
    return "\n".join(out)


def extraction_verdict(cells: dict[tuple[str, Any, str], dict], keys: list[tuple[str, Any]]) -> str:
    """DECISION.md's rule for the extraction benchmark over the measured cells."""
    energy_ok, worse, negative, measured = True, [], [], 0
    for task, r in keys:
        b, u = cells.get((task, r, "budgeted"), {}), cells.get((task, r, "uniform"), {})
        seeds = sorted(set(b) & set(u))
        energy_ok &= all(b[s]["energy_kept"] >= u[s]["energy_kept"] for s in seeds)
        if len(seeds) < 3:
            continue
        measured += 1
        m, _lo, hi, _ = paired(
            {s: b[s]["test_acc"] for s in seeds}, {s: u[s]["test_acc"] for s in seeds}
        )
        if hi < 0:
            worse.append(f"{task} r={r}")
        if m < 0:
            negative.append(f"{task} r={r} ({100 * m:+.2f})")
    met = energy_ok and not worse and not negative and measured == len(keys)
    return (
        f"\nDecision rule (DECISION.md) over {measured} cells with ≥ 3 paired seeds: energy "
        f"budgeted ≥ uniform in every cell and seed: {'yes' if energy_ok else 'NO'}; cells "
        f"where budgeted is worse (interval below 0): {', '.join(worse) or 'none'}; cells with "
        f"a negative mean Δacc (goal not shown there): {', '.join(negative) or 'none'}. Issue "
        f"33's goal (accuracy at least uniform's in every cell): {'met' if met else 'not met'}."
    )


def _verdict(lo: float, hi: float) -> str:
    if math.isnan(lo):
        return "no interval"
    if lo > 0:
        return "budgeted better"
    if hi < 0:
        return "budgeted WORSE"
    return "not distinguished"


def agreement_table(rows: list[dict[str, Any]]) -> str:
    """Library vs reference per task × budget × arm: same ranks, and the largest |energy kept
    (library) − energy kept (reference)| over seeds."""
    lib = [x for x in rows if x["impl"] == "lib"]
    out = [
        "\nLibrary vs the bench's reference (float64 SVD, same allocation rules): cells with "
        f"identical ranks, and max |Δ energy kept| (agree: same ranks and ≤ {AGREE_TOL:g}):\n",
        "| task | r | arm | seeds | same ranks | max abs Δenergy | agree |",
        "|---|---|---|---|---|---|---|",
    ]
    for key in sorted({(x["task"], x["r"], x["arm"]) for x in lib}):
        g = [x for x in lib if (x["task"], x["r"], x["arm"]) == key]
        same = sum(bool(x["same_ranks"]) for x in g)
        d = max(abs(x["d_energy_lib_minus_ref"]) for x in g)
        ok = same == len(g) and d <= AGREE_TOL
        out.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {len(g)} | {same}/{len(g)} | {d:.2e} | "
            f"{'yes' if ok else 'NO'} |"
        )
    return "\n".join(out)
