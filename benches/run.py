"""The benchmark command: build the checkpoints, then time lora_rank next to the alternatives.

    python benches/run.py                 # everything (~30 min), results in benches/results/
    python benches/run.py --quick         # CI smoke run (< 1 min, temp files only)
    python benches/run.py --only inventory --checkpoints llama3-70b --runs 7

Sections: ``inventory`` (benches/inventory.py), ``spectra`` (benches/bench_spectra.py, run as
its own script), ``weightwatcher`` (benches/bench_weightwatcher.py). Each number is min and
median of ``--runs`` runs (after a warm-up) and a ratio to lora_rank's median.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import bench_weightwatcher
import checkpoints
import inventory

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SECTIONS = ("inventory", "spectra", "weightwatcher")


def machine() -> dict[str, Any]:
    """CPU model, cores, memory and package versions of this run."""
    cpu = "unknown"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        cpu = next(ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if "Model name" in ln)
    except (OSError, StopIteration):
        pass
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    versions = {}
    for pkg in ("lora-rank", "torch", "transformers", "peft", "safetensors", "weightwatcher"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "versions": versions,
        "date": datetime.date.today().isoformat(),
        "loadavg_at_start": os.getloadavg(),
        "command": " ".join(["python", "benches/run.py", *sys.argv[1:]]),
    }


def spectra(quick: bool) -> dict[str, Any]:
    """Run benches/bench_spectra.py (owned by the spectral engine) as its own script."""
    script = HERE / "bench_spectra.py"
    if not script.exists():
        return {"skipped": "benches/bench_spectra.py does not exist yet"}
    cmd = [sys.executable, str(script), *(["--quick"] if quick else [])]
    print(f"$ {' '.join(cmd)}", flush=True)
    proc = subprocess.run(cmd, cwd=HERE.parent)
    return {"command": " ".join(cmd), "returncode": proc.returncode}


# ---------------------------------------------------------------- report


def _t(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _by(records: list[dict[str, Any]], ckpt: str, method: str, mode: str) -> dict[str, Any]:
    found = [
        r for r in records if (r["checkpoint"], r["method"], r["mode"]) == (ckpt, method, mode)
    ]
    return found[0] if found else {}


def goals_markdown(records: list[dict[str, Any]]) -> str:
    """The pairs of issue 13 (``inventory.GOALS``): ours next to its anchor, same run."""
    lines = [
        "| checkpoint | ours | anchor | mode | ours median | anchor median | ours / anchor |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in dict.fromkeys(r["checkpoint"] for r in records):
        for ours, anchor, mode in inventory.GOALS:
            a, b = _by(records, c, ours, mode), _by(records, c, anchor, mode)
            if a and b:
                lines.append(
                    f"| {c} | `{ours}` | `{anchor}` | {mode} | {_t(a['median'])} | "
                    f"{_t(b['median'])} | {a['median'] / b['median']:.2f} |"
                )
    return "\n".join(lines)


def inventory_markdown(records: list[dict[str, Any]]) -> str:
    """Headline table (ours vs the meta-device approach) then one table per checkpoint."""
    ckpts = list(dict.fromkeys(r["checkpoint"] for r in records))
    lines = [
        "| checkpoint | lora_rank process | meta-device process | × | lora_rank call "
        "| meta-device call | × | PEFT all-linear process | × |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in ckpts:
        cells = [c]
        for method, mode, with_ratio in (
            ("lora_rank", "process", False),
            ("meta", "process", True),
            ("lora_rank", "call", False),
            ("meta", "call", True),
            ("peft", "process", True),
        ):
            r = _by(records, c, method, mode)
            cells.append(_t(r["median"]) if r else "–")
            if with_ratio:
                cells.append(f"{r['ratio']:.0f}×" if r else "–")
        lines.append("| " + " | ".join(cells) + " |")
    for c in ckpts:
        lines += [
            "",
            f"**{c}**",
            "",
            "| method | finds | call min / median | × | process min / median | × "
            "| peak RSS | RssAnon at exit |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, m in inventory.METHODS.items():
            call, proc = _by(records, c, name, "call"), _by(records, c, name, "process")
            if not call and not proc:
                continue
            mem = (proc or call)["memory"]
            cells = [f"`{name}`", f"{(call or proc)['result']} {m.what}"]
            for r in (call, proc):
                cells += (
                    [f"{_t(r['min'])} / {_t(r['median'])}", f"{r['ratio']:.1f}"]
                    if r
                    else ["–", "–"]
                )
            cells += [f"{mem['VmHWM']:.0f} MiB", f"{mem['RssAnon']:.0f} MiB"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def weightwatcher_markdown(ww: dict[str, Any]) -> str:
    if "skipped" in ww:
        return f"WeightWatcher: skipped ({ww['skipped']})."
    lines = [
        "| method | call min / median | × | process min / median | × | peak RSS | RssAnon |",
        "|---|---|---|---|---|---|---|",
    ]
    ours = ww.get("lora_rank", {})
    for name in ("lora_rank", "weightwatcher"):
        r = ww.get(name, {})
        if "error" in r:
            lines.append(f"| `{name}` | {r['error']} | | | | | |")
            continue
        cells = [f"`{name}`"]
        for mode in ("call", "process"):
            base = ours.get(mode)
            x = r[mode]
            cells += [
                f"{_t(x['min'])} / {_t(x['median'])}",
                f"{x['median'] / base['median']:.0f}" if base else "–",
            ]
        mem = r["process"]["memory"]
        cells += [f"{mem['VmHWM']:.0f} MiB", f"{mem['RssAnon']:.0f} MiB"]
        lines.append("| " + " | ".join(cells) + " |")
    for field, estimator in (("pl_alpha", "WeightWatcher's fit"), ("alpha", "Hill, top-k")):
        if field not in ww:
            continue
        a = ww[field]
        lines += [
            "",
            f"`{field}` ({estimator}) vs WeightWatcher's alpha on {a['modules']} matrices: "
            f"Spearman {a['spearman']:.2f}, median |ours − WW| {a['median_abs_diff']:.3f}, "
            f"worst {a.get('worst_abs_diff', math.nan):.2f}.",
        ]
    if "pl_alpha" in ww:
        lines += [
            "",
            "| module | pl_alpha (lora_rank) | alpha (Hill, lora_rank) | alpha (WeightWatcher) |",
            "|---|---|---|---|",
        ]
        hill = ww.get("alpha", {}).get("per_module", {})
        for k, (x, y) in ww["pl_alpha"]["per_module"].items():
            if ".layer.0." in k:
                h = hill.get(k, (math.nan,))[0]
                lines.append(f"| {k} | {x:.2f} | {h:.2f} | {y:.2f} |")
    return "\n".join(lines)


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _check_agreement(records: list[dict[str, Any]]) -> list[str]:
    """Ours and PEFT must find the same number of all-linear targets and count the same
    trainable parameters."""
    problems = []
    for r in records:
        if r["method"] in ("peft", "peft_count"):
            mine = "lora_rank" if r["method"] == "peft" else "lora_rank_count"
            ours = _by(records, r["checkpoint"], mine, r["mode"])
            if ours and ours["result"] != r["result"]:
                problems.append(
                    f"{r['checkpoint']} ({r['method']}): lora_rank gives {ours['result']}, "
                    f"PEFT {r['result']}"
                )
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI smoke run: < 1 min, no data kept")
    ap.add_argument("--runs", type=int, default=None, help="timed runs per number (default 5)")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"sections: {','.join(SECTIONS)}")
    ap.add_argument("--checkpoints", default=None, help="inventory checkpoints (default: all)")
    args = ap.parse_args()
    only = set(args.only.split(","))
    runs = args.runs or (1 if args.quick else 5)
    if not args.quick and runs < 5:
        print("note: fewer than 5 runs per number", file=sys.stderr)
    info = machine()
    print(f"{info['date']}  {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB")
    results: dict[str, Any] = {"machine": info, "runs": runs}
    with tempfile.TemporaryDirectory(prefix="lora-rank-bench-") as tmp:
        data = Path(tmp) if args.quick else checkpoints.DATA
        if args.quick:
            for spec in checkpoints.TINY:
                checkpoints.verify_against_save_pretrained(spec, Path(tmp))
            print("checkpoint builder matches save_pretrained byte for byte (tiny models)")
        paths = checkpoints.build_all(data, quick=args.quick)
        if "inventory" in only:
            names = args.checkpoints.split(",") if args.checkpoints else list(checkpoints.SPARSE)
            sparse = {n: paths[n] for n in names if n in paths}
            print("inventory:")
            start = inventory.interpreter_start(runs)
            print(f"  python -c pass: median {_t(start['median'])}")
            records = inventory.run(sparse, runs, only=inventory.QUICK if args.quick else None)
            results["python_start"] = start
            results["inventory"] = records
            problems = _check_agreement(records)
            for p in problems:
                print("DISAGREEMENT:", p, file=sys.stderr)
            if problems and args.quick:
                return 1
        if "spectra" in only:
            results["spectra"] = spectra(args.quick)
        if "weightwatcher" in only and not args.quick:
            print("weightwatcher (MiniLM):")
            results["weightwatcher"] = bench_weightwatcher.run(paths["minilm"], runs)
    if args.quick:
        print("quick run OK")
        return 0 if results.get("spectra", {}).get("returncode", 0) == 0 else 1
    md = [f"{info['date']} · {info['cpu']} · {info['cores']} cores · {info['memory_gib']} GiB"]
    md.append(f"`{info['command']}` · {json.dumps(info['versions'])}")
    if "inventory" in results:
        loads = [r["loadavg_1min"] for r in results["inventory"]]
        md.append(
            f"python -c pass: {_t(results['python_start']['median'])} median; 1-min load "
            f"average during the inventory runs: {min(loads):.1f}–{max(loads):.1f}"
        )
        md += ["", goals_markdown(results["inventory"])]
        md += ["", inventory_markdown(results["inventory"])]
    if "weightwatcher" in results:
        md += ["", weightwatcher_markdown(results["weightwatcher"])]
    write_atomic(RESULTS / "results.json", json.dumps(results, indent=1) + "\n")
    write_atomic(RESULTS / "results.md", "\n".join(md) + "\n")
    print("\n".join(md))
    print(f"\nwritten: {RESULTS / 'results.json'}, {RESULTS / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
