"""Extraction-quality benchmark (issue 33 item 6; design and rule in DECISION.md, "Extraction
benchmark (issue 33)").

    python benches/quality/extract.py train [--tasks bbc drug] [--seeds 0 1 2 3 4] [--until HH:MM]
    python benches/quality/extract.py eval [--impl ref|lib] [--bias-arms] [--seeds ...]
    python benches/quality/extract.py tables        # the markdown of tables.extraction_table

As run for issue 33 (one process each, ``nice -n 10``, one torch thread): ``train`` with seeds
0-4 (≈ 63 min here at load 3-12), then ``eval --impl ref``, ``eval --impl lib`` and
``eval --impl lib --bias-arms`` (≈ 5-20 s per cell).

``train``: full fine-tunes of MiniLM (``finetune.FT``'s lr and epochs per task, every linear
weight and bias + the classifier, ``train.train(ranks=None)``), one per (task, seed); each
saves its base (the same classifier init the fine-tune started from) and its fine-tune with
``save_pretrained`` under ``benches/data/quality/extract/<task>_s<seed>/{base,ft}`` and the
fine-tune's own accuracy / NLL in ``ft.json`` there. ``eval``: every pair × budget × arm is
extracted to a PEFT adapter (arms: ``budgeted``, ``uniform``, ``kohya``), loaded onto the base
with ``PeftModel.from_pretrained`` and evaluated on the test split; rows go to
``benches/results/quality/extract.json`` as each cell finishes. ``--impl ref`` extracts with the
reference below (numpy float64 SVD of each ΔW, the three allocation rules, the adapter written
through PEFT itself); ``--impl lib`` with ``lora_rank.compare(...).extract(...)``, and also
records the reference's energy kept and ranks for the same cell.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import data
import finetune
import numpy as np
import train

ROOT = Path(__file__).resolve().parents[1]
PAIRS = ROOT / "data" / "quality" / "extract"
RESULTS = ROOT / "results" / "quality"
OUT = RESULTS / "extract.json"
TASKS = ("bbc", "drug")
SEEDS = (0, 1, 2)
R_BUDGETS = (2, 4, 8)
ARMS = ("budgeted", "uniform", "kohya")
#: Reading-only library arms (DECISION.md, amendment E1): the library's default biases=True,
#: which also stores the fine-tuned biases of the modules an arm adapts.
BIAS_ARMS = ("budgeted+bias", "uniform+bias")
#: Deterministic subsample of a task's training split (first N of data.py's seeded shuffle);
#: empty = the whole split (DECISION.md says whether any task was subsampled).
SUBSAMPLE: dict[str, int] = {}


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def pair_dir(task: str, seed: int) -> Path:
    return PAIRS / f"{task}_s{seed}"


# ---------------------------------------------------------------------------------------------
# Full fine-tunes


def _subsampled_load() -> None:
    """Make ``data.load`` return the subsampled training split for tasks in ``SUBSAMPLE``."""
    if not SUBSAMPLE:
        return
    original = data.load

    def load(name: str) -> data.Task:
        t = original(name)
        n = SUBSAMPLE.get(name)
        return t if n is None else data.Task(t.name, t.labels, t.train[:n], t.val, t.test)

    data.load = load  # type: ignore[assignment]


def finetune_pair(task: str, seed: int) -> dict[str, Any]:
    """Save the base (classifier init of ``seed``) and the full fine-tune of (task, seed)."""
    import torch

    torch.set_num_threads(1)
    d = pair_dir(task, seed)
    lr, epochs = finetune.FT[task]
    n_labels = len(data.load(task).labels)
    base = train._model(n_labels, seed)
    # The fine-tune starts from train._model(n_labels, seed) too: check the classifier init is
    # deterministic, so the saved base is exactly the fine-tune's starting point.
    again = train._model(n_labels, seed)
    for k, v in base.state_dict().items():
        if not torch.equal(v, again.state_dict()[k]):
            raise RuntimeError(f"model init is not deterministic at {k}")
    del again
    base.save_pretrained(d / "base")
    started = _now()
    res = train.train(task, None, lr=lr, seed=seed, epochs=epochs, keep=True)
    model = res.pop("model")
    model.save_pretrained(d / "ft")
    row = {
        "task": task,
        "seed": seed,
        "lr": lr,
        "epochs": epochs,
        "train_size": len(data.load(task).train),
        "started": started,
        "finished": _now(),
        **res,
    }
    (d / "ft.json").write_text(json.dumps(row, indent=1))
    return row


def cmd_train(tasks: list[str], seeds: list[int], until: str | None) -> None:
    _subsampled_load()
    for s in seeds:  # seed-major: seed 0 of every task, then seed 1, ...
        for t in tasks:
            if (pair_dir(t, s) / "ft.json").exists():
                continue
            if until and _past(until):
                print(f"--until {until}: not starting {t} s{s}", flush=True)
                return
            print(f"{_now()} start {t} s{s}", flush=True)
            row = finetune_pair(t, s)
            keys = ("seconds", "val_acc", "test_acc", "test_nll", "train_size")
            print(f"{_now()} done {t} s{s}", {k: row[k] for k in keys}, flush=True)


# ---------------------------------------------------------------------------------------------
# Reference extraction (the harness's own, to validate it and to check the library against)


class Pair:
    """ΔW = W_ft − W_base of the LoRA targets of one (task, seed) pair, their float64 SVDs, and
    the fine-tune's classifier. Targets: every 2-D ``.weight`` of the encoder and the pooler
    (all-linear's 37 modules; not the embeddings, not the classifier head)."""

    def __init__(self, task: str, seed: int) -> None:
        from safetensors.numpy import load_file

        self.task, self.seed, self.dir = task, seed, pair_dir(task, seed)
        base = load_file(str(self.dir / "base" / "model.safetensors"))
        ft = load_file(str(self.dir / "ft" / "model.safetensors"))
        if sorted(base) != sorted(ft) or any(base[k].shape != ft[k].shape for k in base):
            raise RuntimeError(f"{self.dir}: base and ft differ in tensor names or shapes")
        self.targets = sorted(
            k[: -len(".weight")]
            for k, v in base.items()
            if v.ndim == 2
            and k.endswith(".weight")
            and k.startswith(("bert.encoder.", "bert.pooler."))
        )
        self.delta = {
            n: ft[n + ".weight"].astype(np.float64) - base[n + ".weight"].astype(np.float64)
            for n in self.targets
        }
        self.svd = {n: np.linalg.svd(d, full_matrices=False) for n, d in self.delta.items()}
        self.energy = {n: float((s**2).sum()) for n, (_, s, _) in self.svd.items()}
        self.total = sum(self.energy.values())
        self.cost = {n: int(sum(d.shape)) for n, d in self.delta.items()}
        self.classifier = {k: ft[k] for k in ft if k.startswith("classifier.")}
        self.ft_bias = {n: ft[n + ".bias"] for n in self.targets}
        self.other_changed = sorted(
            k
            for k in base
            if k[: -len(".weight")] not in self.delta
            and not k.startswith("classifier.")
            and not np.array_equal(base[k], ft[k])
        )

    _comparison: Any = None

    def comparison(self) -> Any:
        """``lora_rank.compare(base, ft, spectral=True)`` of this pair (made once)."""
        if self._comparison is None:
            import lora_rank

            start = time.perf_counter()
            self._comparison = lora_rank.compare(
                str(self.dir / "base"), str(self.dir / "ft"), spectral=True
            )
            self.compare_seconds = round(time.perf_counter() - start, 2)
        return self._comparison

    def budget(self, r: int) -> int:
        """All-linear's LoRA parameter count at uniform rank ``r`` over the targets."""
        return r * sum(self.cost.values())

    def kept(self, ranks: dict[str, int]) -> float:
        """Share of Σ‖ΔW‖²_F kept by the rank-k truncations (k = ranks[module], 0 if absent)."""
        return sum(float((self.svd[n][1][:k] ** 2).sum()) for n, k in ranks.items()) / self.total

    def params(self, ranks: dict[str, int]) -> int:
        return sum(self.cost[n] * k for n, k in ranks.items())

    # The three allocation rules --------------------------------------------------------------

    def budgeted(self, b: int) -> dict[str, int]:
        """Greedy on σ²/(in+out) under ``b`` LoRA parameters: rank steps in decreasing order of
        energy per parameter; a step that no longer fits is skipped and cheaper ones go on."""
        steps = sorted(
            (
                (float(s[j] ** 2) / self.cost[n], n, j)
                for n, (_, s, _) in self.svd.items()
                for j in range(len(s))
            ),
            key=lambda x: (-x[0], x[1], x[2]),
        )
        out: dict[str, int] = {}
        room = b
        for _, n, _j in steps:
            if self.cost[n] <= room:
                out[n] = out.get(n, 0) + 1
                room -= self.cost[n]
        return dict(sorted(out.items()))

    def uniform(self, b: int) -> dict[str, int]:
        """mergekit: one rank for every target, the largest that fits ``b``."""
        r = b // sum(self.cost.values())
        return {n: min(r, min(self.delta[n].shape)) for n in self.targets}

    def sv_fro(self, tau: float) -> dict[str, int]:
        """kohya's ``sv_fro`` (``index_sv_fro``) at energy share ``tau`` (kohya's parameter is
        √tau): per module the smallest rank whose share of ‖ΔW‖²_F is ≥ tau, at least 1, at
        most min(in, out) − 1."""
        out = {}
        for n, (_, s, _) in self.svd.items():
            c = np.cumsum(s**2) / float((s**2).sum())
            k = int(np.searchsorted(c, tau)) + 1
            out[n] = max(1, min(k, len(s) - 1))
        return out

    def kohya(self, b: int) -> tuple[float, dict[str, int]]:
        """The sv_fro threshold whose parameter count is closest to ``b`` without exceeding it.

        The count only changes at the modules' cumulative shares; the ranks are constant for tau
        in (c_prev, c], so the threshold returned is the middle of that interval (far from
        either edge, so another implementation's rounding gives the same ranks)."""
        cands = sorted(
            {
                float(x)
                for _, s, _ in self.svd.values()
                for x in np.cumsum(s**2) / float((s**2).sum())
            }
        )
        lo, hi = 0, len(cands) - 1  # params(sv_fro(c)) is non-decreasing in c
        if self.params(self.sv_fro(cands[0])) > b:
            raise RuntimeError("kohya: even the smallest threshold exceeds the budget")
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.params(self.sv_fro(cands[mid])) <= b:
                lo = mid
            else:
                hi = mid - 1
        prev = cands[lo - 1] if lo > 0 else 0.0
        tau = (prev + cands[lo]) / 2
        ranks = self.sv_fro(tau)
        if ranks != self.sv_fro(cands[lo]):
            raise AssertionError("kohya: midpoint threshold changed the ranks")
        return tau, ranks

    def ranks(self, arm: str, r: int | None) -> tuple[dict[str, int], dict[str, Any]]:
        b = self.budget(r or 0)
        extra: dict[str, Any] = {}
        if arm == "budgeted":
            ranks = self.budgeted(b)
        elif arm == "uniform":
            ranks = self.uniform(b)
        elif arm == "kohya":
            tau, ranks = self.kohya(b)
            extra = {"threshold": tau, "kohya_sv_fro_param": tau**0.5}
        elif arm == "full-rank":
            ranks = {n: min(d.shape) for n, d in self.delta.items()}
        else:
            raise ValueError(arm)
        return ranks, extra

    def write_adapter(self, ranks: dict[str, int], out: Path) -> None:
        """A PEFT SEQ_CLS adapter of the rank-k truncations (B = U√S, A = √S Vᵀ, alpha = r, so
        scaling 1) with the fine-tune's classifier in ``modules_to_save``, saved by PEFT."""
        import torch
        from peft import LoraConfig, TaskType, get_peft_model
        from transformers import BertForSequenceClassification

        names = sorted(n for n, k in ranks.items() if k > 0)
        model = BertForSequenceClassification.from_pretrained(str(self.dir / "base"))
        with torch.no_grad():
            for k, v in self.classifier.items():
                model.get_parameter(k).copy_(torch.from_numpy(v))
        config = LoraConfig(
            task_type=TaskType.SEQ_CLS,
            target_modules="^(" + "|".join(re.escape(n) for n in names) + ")$",
            r=8,
            lora_alpha=8,
            rank_pattern={f"^{re.escape(n)}$": ranks[n] for n in names},
            alpha_pattern={f"^{re.escape(n)}$": ranks[n] for n in names},
            lora_dropout=0.0,
        )
        pm = get_peft_model(model, config)
        with torch.no_grad():
            for n in names:
                u, s, vt = self.svd[n]
                k = ranks[n]
                root = np.sqrt(s[:k])
                mod = pm.base_model.model.get_submodule(n)
                if mod.r["default"] != k or mod.scaling["default"] != 1.0:
                    raise RuntimeError(f"PEFT made {n} rank {mod.r['default']}, asked {k}")
                mod.lora_A["default"].weight.copy_(torch.from_numpy(root[:, None] * vt[:k]))
                mod.lora_B["default"].weight.copy_(torch.from_numpy(u[:, :k] * root))
        pm.save_pretrained(str(out))


def adapter_check(pair: Pair, adapter: Path) -> dict[str, Any]:
    """Read an adapter directory back (whoever wrote it): its ranks, LoRA parameter count, the
    share of Σ‖ΔW‖² that its scaling·B·A explains (1 − Σ‖ΔW − sBA‖² / Σ‖ΔW‖², equal to the
    truncation's energy kept when B·A is the rank-k SVD truncation), and whether its saved
    classifier is the fine-tune's."""
    from safetensors.numpy import load_file

    cfg = json.loads((adapter / "adapter_config.json").read_text())
    w = load_file(str(adapter / "adapter_model.safetensors"))

    def pattern_value(patterns: dict[str, Any], name: str, default: Any) -> Any:
        # PEFT's get_pattern_key: the first key matching the name's end, else the default.
        for key, v in patterns.items():
            if re.match(rf"(.*\.)?({key})$", name):
                return v
        return default

    ranks: dict[str, int] = {}
    resid = 0.0
    for n in pair.targets:
        ka, kb = (f"base_model.model.{n}.lora_{x}.weight" for x in "AB")
        if ka not in w:
            resid += pair.energy[n]
            continue
        a, b = w[ka].astype(np.float64), w[kb].astype(np.float64)
        r = int(a.shape[0])
        alpha = pattern_value(cfg.get("alpha_pattern") or {}, n, cfg["lora_alpha"])
        scale = alpha / (r**0.5 if cfg.get("use_rslora") else r)
        resid += float(((pair.delta[n] - scale * (b @ a)) ** 2).sum())
        ranks[n] = r
    unknown = sorted(
        k for k in w if ".lora_" in k and k.split(".lora_")[0][17:] not in pair.targets
    )
    # Saved as base_model.model.classifier[.modules_to_save].{weight,bias}.
    cls = {k.rsplit(".", 1)[1]: v for k, v in w.items() if ".classifier." in k}
    cls_ok = sorted(cls) == ["bias", "weight"] and all(
        np.array_equal(v, pair.classifier[f"classifier.{k}"]) for k, v in cls.items()
    )
    return {
        "adapter_ranks": ranks,
        "adapter_lora_params": pair.params(ranks),
        "adapter_explained": 1 - resid / pair.total,
        "adapter_classifier_is_ft": cls_ok,
        "adapter_unknown_keys": unknown,
        "modules_to_save": cfg.get("modules_to_save"),
    }


def evaluate_adapter(pair: Pair, adapter: Path) -> dict[str, Any]:
    """Test accuracy / NLL of base + adapter, loaded as a user would: the base with
    ``from_pretrained`` and the adapter with ``PeftModel.from_pretrained``."""
    import torch
    from peft import PeftModel
    from transformers import BertForSequenceClassification

    torch.set_num_threads(1)
    base = BertForSequenceClassification.from_pretrained(str(pair.dir / "base"))
    model = PeftModel.from_pretrained(base, str(adapter))
    trainable = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) + sum(
        p.numel() for n, p in model.named_parameters() if "modules_to_save" in n
    )
    wrapped = {
        n[len("base_model.model.") :]: int(m.r["default"])
        for n, m in model.named_modules()
        if hasattr(m, "lora_A") and "default" in getattr(m, "r", {})
    }
    # Biases after loading: how many of the targets' biases are the fine-tune's (the rest
    # should be the base's).
    params = dict(model.named_parameters())
    biases_ft = sum(
        bool(np.array_equal(params[k].detach().numpy(), pair.ft_bias[n]))
        for n in pair.targets
        if (k := f"base_model.model.{n}.base_layer.bias") in params
    )
    res = train.evaluate(model, data.load(pair.task), "test")
    return {
        "biases_ft": biases_ft,
        "test_acc": res["acc"],
        "test_nll": res["nll"],
        "peft_params": trainable,
        "peft_wrapped_ranks": wrapped,
    }


# ---------------------------------------------------------------------------------------------
# Results file


def load_rows() -> list[dict[str, Any]]:
    return json.loads(OUT.read_text())["rows"] if OUT.exists() else []


def save_row(row: dict[str, Any]) -> None:
    """Add ``row`` to the results file (replacing its key), under a lock: the reference's and
    the library's evaluations may run at once."""
    import fcntl

    RESULTS.mkdir(parents=True, exist_ok=True)
    PAIRS.mkdir(parents=True, exist_ok=True)
    with open(PAIRS / "results.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = [x for x in load_rows() if x["key"] != row["key"]] + [row]
        tmp = OUT.with_suffix(f".json.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"rows": rows}, indent=1))
        tmp.replace(OUT)


def _key(impl: str, task: str, seed: int, r: int | None, arm: str) -> str:
    return f"{impl}/{task}/s{seed}/r{r}/{arm}"


def _lib_extract(pair: Pair, arm: str, r: int, ref_extra: dict[str, Any], out: Path) -> Any:
    cmp = pair.comparison()
    # SEQ_CLS: the classifier goes to modules_to_save (not a LoRA target); biases=False: no arm
    # carries the fine-tune's bias changes (DECISION.md; the library's default stores the
    # biases of adapted modules, which would favour arms that adapt more modules).
    kw: dict[str, Any] = {"task_type": "SEQ_CLS", "biases": arm.endswith("+bias")}
    arm = arm.removesuffix("+bias")
    if arm == "budgeted":
        return cmp.extract(str(out), budget=pair.budget(r), **kw)
    if arm == "uniform":
        return cmp.extract(str(out), r=r, **kw)
    if arm == "kohya":
        return cmp.extract(str(out), energy=ref_extra["threshold"], **kw)
    raise ValueError(arm)


def _lib_ranks(pair: Pair, ranks: dict[str, int]) -> dict[str, int]:
    """The library's ``ad.ranks`` keyed like the reference (runtime names under ``bert.``)."""
    out = {}
    for n, k in ranks.items():
        m = n if n in pair.delta else f"bert.{n}"
        if m not in pair.delta:
            raise KeyError(f"library rank for unknown module {n!r}")
        out[m] = int(k)
    return dict(sorted(out.items()))


def eval_cell(pair: Pair, impl: str, r: int | None, arm: str, scratch: Path) -> dict[str, Any]:
    start = time.perf_counter()
    ranks, extra = pair.ranks(arm.removesuffix("+bias"), r)
    row: dict[str, Any] = {
        "key": _key(impl, pair.task, pair.seed, r, arm),
        "impl": impl,
        "task": pair.task,
        "seed": pair.seed,
        "r": r,
        "budget": pair.budget(r) if r is not None else None,
        "arm": arm,
        **extra,
    }
    adapter = scratch / f"{pair.task}_s{pair.seed}_r{r}_{arm}_{impl}"
    if impl == "ref":
        pair.write_adapter(ranks, adapter)
        row.update(ranks=ranks, energy_kept=pair.kept(ranks), lora_params=pair.params(ranks))
    else:
        pair.comparison()
        t0 = time.perf_counter()
        ad = _lib_extract(pair, arm, int(r or 0), extra, adapter)
        lib_ranks = _lib_ranks(pair, dict(ad.ranks))
        row.update(
            compare_seconds=pair.compare_seconds,
            extract_seconds=round(time.perf_counter() - t0, 2),
            ranks=lib_ranks,
            energy_kept=float(ad.energy_kept),
            lora_params=pair.params(lib_ranks),
            lib_trainable_params=int(ad.trainable_params),
            lib_lora_params=int(ad.lora_params),
            lib_budget=ad.budget,
            lib_modules_to_save=list(ad.modules_to_save),
            lib_not_captured=len(ad.not_captured),
            lib_warnings=list(ad.warnings),
            ref_ranks=ranks,
            ref_energy_kept=pair.kept(ranks),
            ref_energy_of_lib_ranks=pair.kept(lib_ranks),
            same_ranks=lib_ranks == {n: k for n, k in ranks.items() if k > 0},
        )
        row["d_energy_lib_minus_ref"] = row["energy_kept"] - row["ref_energy_kept"]
    row.update(adapter_check(pair, adapter))
    row.update(evaluate_adapter(pair, adapter))
    # PEFT wrapped exactly the modules and ranks the adapter file holds.
    row["peft_ranks_match"] = row.pop("peft_wrapped_ranks") == row["adapter_ranks"]
    row["seconds"] = round(time.perf_counter() - start, 1)
    row["finished"] = _now()
    return row


def cmd_eval(
    impl: str,
    tasks: list[str],
    seeds: list[int],
    until: str | None,
    extra_arms: tuple[str, ...] = (),
) -> None:
    import shutil
    import tempfile

    done = {x["key"] for x in load_rows()}
    for s in seeds:
        for t in tasks:
            if not (pair_dir(t, s) / "ft.json").exists():
                print(f"{_now()} no fine-tune yet for {t} s{s}", flush=True)
                continue
            pair: Pair | None = None
            ft = json.loads((pair_dir(t, s) / "ft.json").read_text())
            k = _key("ft", t, s, None, "full fine-tune")
            if k not in done:
                save_row(
                    {
                        "key": k,
                        "impl": "ft",
                        "task": t,
                        "seed": s,
                        "r": None,
                        "arm": "full fine-tune",
                        "energy_kept": 1.0,
                        "test_acc": ft["test_acc"],
                        "test_nll": ft["test_nll"],
                    }
                )
            more = extra_arms if impl == "lib" else ()
            cells = [(r, arm) for r in R_BUDGETS for arm in (*ARMS, *more)]
            if impl == "ref":
                cells.append((None, "full-rank"))
            for r, arm in cells:
                k = _key(impl, t, s, r, arm)
                if k in done:
                    continue
                if until and _past(until):
                    print(f"--until {until}: not starting {k}", flush=True)
                    return
                if pair is None:
                    pair = Pair(t, s)
                scratch = Path(tempfile.mkdtemp(prefix="lora-rank-extract-"))
                try:
                    row = eval_cell(pair, impl, r, arm, scratch)
                finally:
                    shutil.rmtree(scratch)
                save_row(row)
                done.add(k)
                keys = ("energy_kept", "lora_params", "test_acc", "test_nll", "seconds")
                print(f"{_now()} {k}", {x: row.get(x) for x in keys}, flush=True)


def _past(hhmm: str) -> bool:
    now = dt.datetime.now(dt.timezone.utc)
    h, m = (int(x) for x in hhmm.split(":"))
    return now >= now.replace(hour=h, minute=m, second=0, microsecond=0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cmd", choices=("train", "eval", "tables"))
    p.add_argument("--tasks", nargs="+", default=list(TASKS))
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    p.add_argument("--impl", choices=("ref", "lib"), default="ref")
    p.add_argument("--bias-arms", action="store_true", help="also the reading-only +bias arms")
    p.add_argument("--until", default=None, help="HH:MM UTC: start nothing at or after")
    a = p.parse_args()
    if a.cmd == "train":
        cmd_train(a.tasks, a.seeds, a.until)
    elif a.cmd == "eval":
        cmd_eval(a.impl, a.tasks, a.seeds, a.until, BIAS_ARMS if a.bias_arms else ())
    else:
        import tables

        print(tables.extraction_table(OUT))


if __name__ == "__main__":
    main()
