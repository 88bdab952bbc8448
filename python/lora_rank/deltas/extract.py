"""PEFT LoRA adapters from updates: :func:`extract` (a full fine-tune's ΔW = W_ft − W_base, as
in ``mergekit-extract-lora``) and :func:`resize` (an adapter re-truncated), both under an exact
parameter budget, at one rank, or by a per-module energy threshold
(:mod:`lora_rank.deltas.allocation`).

Each kept module's factors are the truncated SVD of its update: B = U_k·√S_k, A = √S_k·V_kᵀ
with alpha = rank (scaling 1), so ``PeftModel.from_pretrained(base, out)`` adds exactly
U_k·S_k·V_kᵀ. The ranks come from the update's spectrum (:func:`lora_rank.compare` or the
adapter's exact factor spectrum); the vectors from one update at a time: ΔW is read from both
checkpoints by the engine's delta source into one f32 matrix (the only full matrix held), then
decomposed with torch (``torch.linalg.svd`` in float64 up to 4M elements, else
``torch.svd_lowrank`` with 8 power iterations). A resize never forms ΔW: QR of A and B and an
SVD of the r × r core.

What LoRA cannot hold is never dropped silently: biases of adapted modules that changed are
stored (PEFT's ``bias="lora_only"``, counted in the trainable parameters); changed norms,
embeddings, output layers and new heads go to ``modules_to_save`` (their fine-tuned weights
stored in full); with those options off they are listed in ``not_captured`` and a warning
names them. Expert slices of MoE tensors are not extracted (listed).

Needs torch, safetensors and peft (the ``peft`` extra).
"""

from __future__ import annotations

import json
import os
import re
import warnings as _warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Optional, Union

from .. import _core, executors
from ..atomic import write_atomic
from ..errors import ConfigError
from ..inventory.quantization import QuantTuple
from ..peft.config import build
from ..peft.recommendation import Target
from ..recommend.allocation import most_energy
from ..recommend.budget import Budget, parse_budget
from ..spectral.jobs import Job, shard_files
from ..spectral.progress import ProgressCallback
from . import allocation
from .adapter import ADAPTER_CONFIG, ADAPTER_WEIGHTS, PEFT_PREFIX, analyze_adapter
from .compare import RESIZABLE_KINDS, Comparison, Minus, ModuleDelta, _vector_job

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Up to this many elements an update is decomposed exactly (float64); above, randomized.
EXACT_ELEMENTS = 1 << 22
#: Power iterations of ``torch.svd_lowrank`` above that size, and its extra columns.
LOWRANK_NITER = 8
LOWRANK_OVERSAMPLE = 16


@dataclass
class ExtractedAdapter:
    """An adapter written by :func:`extract` or :func:`resize`.

    ``ranks`` maps each adapted module to its rank; ``lora_params`` = Σ r·(in + out) (what
    the budget bounds); ``trainable_params`` what PEFT counts on the model (LoRA factors, plus
    the biases and ``modules_to_save`` stored); ``energy_kept`` the share of the updates'
    Σ‖ΔW‖²_F that the factors hold (of every update LoRA could have adapted).

    Example:
        >>> a = ExtractedAdapter(None, "uniform", {"q": 2}, 64, 64, 0.5, None)
        >>> a.lora_params, a.energy_kept
        (64, 0.5)
    """

    path: Optional[str]
    method: str
    ranks: dict[str, int]
    lora_params: int
    trainable_params: int
    energy_kept: float
    budget: Optional[int]
    modules_to_save: list[str] = field(default_factory=list)
    biases: list[str] = field(default_factory=list)
    not_captured: list[str] = field(default_factory=list)
    adapter_config: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form."""
        return dict(vars(self))


def _ranks(
    values: dict[str, list[float]],
    cost: dict[str, int],
    total_sq: dict[str, float],
    *,
    budget: Optional[int],
    r: Optional[int],
    energy: Optional[float],
) -> tuple[str, dict[str, int]]:
    given = [x is not None for x in (budget, r, energy)]
    if sum(given) != 1:
        raise ConfigError("give exactly one of budget, r and energy")
    if budget is not None:
        return "budget", most_energy(values, cost, budget)
    if r is not None:
        return "uniform", allocation.uniform(values, cost, r)
    assert energy is not None
    return "energy", allocation.by_energy(values, total_sq, energy)


def _svd(delta: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``k`` (U, S, Vᵀ) of ``delta`` (f32)."""
    import torch

    if delta.numel() <= EXACT_ELEMENTS:
        # One thread: LAPACK's SVD of a matrix this small gains nothing from more, and
        # OpenMP threads waiting on a busy machine made it 20× slower (0.47 s → 9.3 s for
        # 1536×384 on 2 loaded cores).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            u, s, vt = torch.linalg.svd(delta.double(), full_matrices=False)
        finally:
            torch.set_num_threads(threads)
        return u[:, :k].float(), s[:k].float(), vt[:k].float()
    q = min(k + LOWRANK_OVERSAMPLE, min(delta.shape))
    gen = torch.random.fork_rng()
    with gen:
        torch.manual_seed(0)
        u, s, v = torch.svd_lowrank(delta, q=q, niter=LOWRANK_NITER)
    return u[:, :k].contiguous(), s[:k], v[:, :k].T.contiguous()


def _factors(
    u: torch.Tensor, s: torch.Tensor, vt: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    root = s.clamp(min=0).sqrt()
    return (root[:, None] * vt).to(dtype).contiguous(), (u * root[None, :]).to(dtype).contiguous()


class Factorize(NamedTuple):
    """One module's update to factorize: what the engine reads (``_core.read_matrix`` of
    ``job`` over ``shards``, minus the base's ``minus``), its rank ``k``, whether it is stored
    [in, out] (Conv1D), the factors' dtype and torch's threads (None: as set)."""

    shards: list[tuple[str, int]]
    job: Job
    quant: Optional[list[QuantTuple]]
    minus: Minus
    conv1d: bool
    k: int
    dtype: str
    threads: Optional[int]


def factorize(item: Factorize) -> tuple[torch.Tensor, torch.Tensor, float]:
    """LoRA factors (A = √S·Vᵀ, B = U·√S) of the top-``k`` SVD of one module's update, and
    the Σσ² they keep. A module-level function: ``extract(executor="ray")`` runs it as one Ray
    task per module, on the worker that reads the update.

    Example:
        >>> import lora_rank, tempfile
        >>> from lora_rank.deltas.extract import example_finetune
        >>> base = lora_rank.demo_checkpoint()
        >>> c = lora_rank.compare(base, example_finetune(tempfile.mkdtemp()), progress=False)
        >>> m = c.changed_modules[0]
        >>> a, b, kept = factorize(Factorize(c.shards, *c.update_read(m), False, 2, "float32", 1))
        >>> top2 = sum(x * x for x in m.spectrum.singular_values[:2])  # compare()'s spectrum
        >>> tuple(a.shape), tuple(b.shape), abs(kept - top2) < 1e-4 * top2
        ((2, 384), (384, 2), True)
    """
    import torch

    raw = _core.read_matrix(item.shards, item.job, item.quant, minus=item.minus)
    rows = sum(seg[2] for seg in item.job[1])
    with _warnings.catch_warnings():
        # A read-only view of the engine's bytes (no copy of the matrix): nothing writes it.
        _warnings.simplefilter("ignore", UserWarning)
        delta = torch.frombuffer(raw, dtype=torch.float32).reshape(rows, -1)
    if item.conv1d:
        delta = delta.T  # stored [in, out]
    before = torch.get_num_threads()
    if item.threads is not None:
        torch.set_num_threads(item.threads)
    try:
        u, s, vt = _svd(delta, item.k)
    finally:
        torch.set_num_threads(before)
    a, b = _factors(u, s, vt, getattr(torch, item.dtype))
    return a, b, float((s.double() ** 2).sum())


def _write(
    out: Union[str, os.PathLike[str]], tensors: dict[str, torch.Tensor], config: dict[str, Any]
) -> str:
    from safetensors.torch import save

    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    write_atomic(path / ADAPTER_WEIGHTS, save(tensors, metadata={"format": "pt"}))
    write_atomic(path / ADAPTER_CONFIG, json.dumps(config, indent=2) + "\n")
    return str(path)


def extract(
    comparison: Comparison,
    out: Union[str, os.PathLike[str], None] = None,
    *,
    budget: Budget = None,
    r: Optional[int] = None,
    energy: Optional[float] = None,
    task_type: Optional[str] = None,
    biases: bool = True,
    modules_to_save: bool = True,
    dtype: str = "float32",
    threads: Optional[int] = None,
    progress: Union[bool, ProgressCallback, None] = False,
    executor: str = "local",
    ray_address: Optional[str] = None,
) -> ExtractedAdapter:
    """A PEFT LoRA adapter that approximates the fine-tune of ``comparison`` (see the module
    docs), written to ``out`` (``adapter_config.json`` and ``adapter_model.safetensors``,
    atomically) unless ``out`` is None.

    Args:
        comparison: from :func:`lora_rank.compare` with ``spectral=True``.
        budget: trainable LoRA parameters (``2_000_000``, ``"2M"``, ``0.005``, ``"0.5%"`` of
            the base's parameters): the ranks keeping the most Σ‖ΔW‖²_F.
        r: one rank for every module (mergekit's ``--max-rank``).
        energy: per module, the smallest rank keeping this share of ‖ΔW‖²_F (kohya's
            ``sv_fro``).
        task_type: PEFT's ``task_type`` for the config; ``"SEQ_CLS"`` puts classification
            heads in ``modules_to_save`` instead of adapting them with LoRA, as PEFT does.
        biases: store the fine-tuned biases of adapted modules whose bias changed
            (``bias="lora_only"``); else they are listed as not captured.
        modules_to_save: store changed norms, embeddings, output layers and new modules in
            full; else they are listed as not captured.
        dtype: of the factors (``"float32"``, ``"bfloat16"``, ``"float16"``).
        threads: torch's threads for each module's SVD (None: as set; one Ray task's CPUs).
        progress: as in :func:`lora_rank.analyze` (one step per adapted module).
        executor, ray_address: where each module's update is read and factorized
            (``"ray"``: one Ray task per module, :func:`lora_rank.executors.each`; the factors
            are bit for bit the local ones with the same ``threads`` on a CPU of the same kind).

    Example:
        >>> import lora_rank, tempfile
        >>> from lora_rank.deltas.extract import example_finetune
        >>> base = lora_rank.demo_checkpoint()
        >>> c = lora_rank.compare(base, example_finetune(tempfile.mkdtemp()), progress=False)
        >>> a = c.extract(tempfile.mkdtemp(), budget=10_000)
        >>> a.ranks, a.lora_params, round(a.energy_kept, 3)
        ({'encoder.layer.0.attention.self.query': 12}, 9216, 1.0)
    """
    import torch

    wanted = getattr(torch, dtype, None)
    if not isinstance(wanted, torch.dtype):
        raise ConfigError(f"dtype {dtype!r} is not a torch dtype")
    if comparison.settings is None:
        raise ConfigError("extraction needs the updates' spectra: compare(..., spectral=True)")
    f = comparison.finetuned
    heads = task_type == "SEQ_CLS"
    candidates: list[ModuleDelta] = []
    not_captured: list[str] = []
    save_modules: set[str] = set()

    def keep_whole(name: str, why: str) -> None:
        if modules_to_save:
            save_modules.add(name)
        else:
            not_captured.append(f"{name} ({why})")

    for m in comparison.modules:
        if not m.changed:
            continue
        if m.expert is not None:
            not_captured.append(f"{m.finetuned_name}[{m.expert}] (expert slice)")
        elif m.kind in RESIZABLE_KINDS or not m.lora_target or (heads and m.kind == "classifier"):
            keep_whole(m.finetuned_name, f"{m.kind}, changed")
        else:
            candidates.append(m)
    values = {m.finetuned_name: list(m.spectrum.singular_values) for m in candidates if m.spectrum}
    cost = {m.finetuned_name: m.in_features + m.out_features for m in candidates}
    total_sq = {m.finetuned_name: m.delta_norm**2 for m in candidates}
    limit = parse_budget(budget, comparison.base.total_params)
    method, ranks = _ranks(values, cost, total_sq, budget=limit, r=r, energy=energy)
    warns: list[str] = []
    top_k = comparison.settings.top_k
    capped = [n for n, k in ranks.items() if k >= top_k and k < min(cost[n], 10**9)]
    if capped and method != "uniform":
        warns.append(
            f"{len(capped)} module(s) reached the {top_k} singular values compare() computed "
            f"(e.g. {capped[0]}); compare(top_k=...) with more lets them keep more"
        )
    if r is not None and r > top_k:
        warns.append(f"r={r} exceeds the {top_k} singular values compare() computed: capped")
        ranks = {n: min(k, top_k) for n, k in ranks.items()}
    by_name = {m.finetuned_name: m for m in candidates}
    tensors: dict[str, torch.Tensor] = {}
    kept_sq = 0.0
    kept = sorted(ranks.items())
    items = [
        Factorize(
            comparison.shards,
            *comparison.update_read(by_name[name]),
            f.module(name).module_class == "Conv1D",
            k,
            dtype,
            threads,
        )
        for name, k in kept
    ]
    factors = executors.each(
        factorize,
        items,
        shards=comparison.shards,
        names=[name for name, _ in kept],
        progress=progress,
        description="extract",
        executor=executor,
        ray_address=ray_address,
        num_cpus=threads or 1,
    )
    for (name, _), (a, b, sq) in zip(kept, factors):
        kept_sq += sq
        tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = a
        tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = b
    # Biases of adapted modules, and what else changed.
    bias_of: dict[str, str] = {}
    for ch in comparison.changes:
        if ch.change not in ("changed", "resized", "added", "dtype"):
            continue
        if ch.module in by_name and ch.name.endswith(".bias") and ch.change == "changed":
            if ch.module not in ranks:
                # A LoRA candidate the allocation left out: its update, bias included, is
                # what the budget chose not to keep.
                not_captured.append(f"{ch.name} (bias of a module given rank 0)")
            elif biases:
                bias_of[ch.module] = ch.name
            else:
                not_captured.append(f"{ch.name} (bias of an adapted module)")
            continue
        keep_whole(ch.module, f"{ch.change} {ch.name.rsplit('.', 1)[-1]}")
    carried: list[str] = []
    if bias_of:
        # bias="lora_only" trains (and saves) the bias of every adapted module that has one.
        for name in sorted(ranks):
            t = next((k for k in f.module(name).checkpoint_keys if k.endswith("bias")), None)
            if t is not None:
                tensors[f"{PEFT_PREFIX}{name}.base_layer.bias"] = _read_tensor(f, t)
                carried.append(name)
    saved_params = 0
    for name in sorted(save_modules):
        module = f.module(name)
        for key in module.checkpoint_keys:
            suffix = key.rsplit(".", 1)[-1]
            tensors[f"{PEFT_PREFIX}{name}.{suffix}"] = _read_tensor(f, key)
        saved_params += module.params
    targets = [
        Target(
            module=n,
            key=n,
            kind=by_name[n].kind,
            layer=by_name[n].layer,
            rank=k,
            alpha=k,
            params=k * cost[n],
            is_parameter=False,
        )
        for n, k in ranks.items()
    ]
    rec = build(f, targets, strategy=f"extract-{method}", budget=limit, rule="extract")
    config = rec.adapter_config()
    config.update(
        base_model_name_or_path=comparison.base.path,
        task_type=task_type,
        bias="lora_only" if carried else "none",
        modules_to_save=sorted(save_modules) or None,
    )
    lora_params = sum(k * cost[n] for n, k in ranks.items())
    bias_params = sum(f.module(n).out_features or 0 for n in carried)
    total = sum(total_sq.values())
    if not_captured:
        warns.append(
            f"not captured by the adapter: {', '.join(not_captured[:5])}"
            + (f" and {len(not_captured) - 5} more" if len(not_captured) > 5 else "")
        )
    for w in warns:
        _warnings.warn(w, stacklevel=3)
    path = _write(out, tensors, config) if out is not None else None
    return ExtractedAdapter(
        path=path,
        method=method,
        ranks=dict(sorted(ranks.items())),
        lora_params=lora_params,
        trainable_params=rec.trainable_params + bias_params + saved_params,
        energy_kept=kept_sq / total if total else 1.0,
        budget=limit,
        modules_to_save=sorted(save_modules),
        biases=carried,
        not_captured=not_captured,
        adapter_config=config,
        warnings=warns,
    )


def _read_tensor(report: Any, name: str) -> torch.Tensor:
    """Tensor ``name`` of ``report``'s checkpoint, in its stored dtype (decoded exactly)."""
    import torch

    t = next(x for x in report.tensors if x.name == name)
    raw = _core.read_matrix(shard_files(report), _vector_job(t))
    values = torch.frombuffer(bytearray(raw), dtype=torch.float32).reshape(t.shape)
    stored = {"BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}
    return values.to(stored.get(t.dtype, torch.float32)).contiguous()


def resize(
    adapter: Union[str, os.PathLike[str]],
    out: Union[str, os.PathLike[str], None] = None,
    *,
    budget: Budget = None,
    r: Optional[int] = None,
    energy: Optional[float] = None,
    dtype: Optional[str] = None,
) -> ExtractedAdapter:
    """Re-truncate a PEFT LoRA adapter from the exact SVD of each module's update (QR of A and
    B, SVD of the r × r core; ΔW never formed) with the allocation rules of :func:`extract`;
    ``budget`` as a count or a share of the adapter's own LoRA parameters (``"50%"``). Other
    tensors (``modules_to_save``, biases) are copied. DoRA adapters are refused (their
    magnitudes belong to the update they were trained with).

    Example:
        >>> import tempfile
        >>> from lora_rank.deltas.adapter import example_adapter
        >>> small = resize(example_adapter(tempfile.mkdtemp()), tempfile.mkdtemp(), r=2)
        >>> small.ranks, small.lora_params, round(small.energy_kept, 2) < 1
        ({'encoder.layer.0.attention.self.query': 2}, 1536, True)
    """
    import torch
    from safetensors.torch import load_file

    report = analyze_adapter(os.fspath(adapter))
    dora = [m.name for m in report.adapted if m.dora]
    if dora:
        raise ConfigError(f"{report.path}: resizing DoRA adapters is not supported ({dora[0]})")
    stored = load_file(os.path.join(report.path, ADAPTER_WEIGHTS))
    values = {m.name: list(m.spectrum.singular_values) for m in report.adapted}
    cost = {m.name: m.in_features + m.out_features for m in report.adapted}
    total_sq = {m.name: m.spectrum.frobenius_norm**2 for m in report.adapted}
    limit = parse_budget(budget, report.trainable_params)
    method, ranks = _ranks(values, cost, total_sq, budget=limit, r=r, energy=energy)
    tensors = {k: v for k, v in stored.items() if ".lora_" not in k}
    kept_sq = 0.0
    for m in report.adapted:
        k = ranks.get(m.name, 0)
        if k == 0:
            continue
        a, b = stored[m.a_key].double(), stored[m.b_key].double()
        a2 = a.reshape(a.shape[0], -1)
        b2 = b.reshape(b.shape[0], -1)
        qa, ra = torch.linalg.qr(a2.T)
        qb, rb = torch.linalg.qr(b2)
        uc, s, vct = torch.linalg.svd(rb @ ra.T * m.scaling)
        u, s, vt = qb @ uc[:, :k], s[:k], vct[:k] @ qa.T
        kept_sq += float((s**2).sum())
        out_dtype = getattr(torch, dtype) if dtype else stored[m.a_key].dtype
        new_a, new_b = _factors(u, s, vt, out_dtype)
        tensors[m.a_key] = new_a.reshape(k, *a.shape[1:])
        tensors[m.b_key] = new_b.reshape(b.shape[0], k, *b.shape[2:])
    top = max(ranks.values(), default=1)
    config = dict(report.adapter_config)
    config.update(
        r=top,
        lora_alpha=top,
        use_rslora=False,
        target_modules=sorted(ranks),
        rank_pattern={re.escape(n): k for n, k in sorted(ranks.items()) if k != top},
        alpha_pattern={re.escape(n): k for n, k in sorted(ranks.items()) if k != top},
    )
    dropped = [m.name for m in report.adapted if m.name not in ranks]
    for name in dropped:  # a dropped module's bias (bias="lora_only") goes with it
        tensors.pop(f"{PEFT_PREFIX}{name}.base_layer.bias", None)
        tensors.pop(f"{PEFT_PREFIX}{name}.bias", None)
    lora_params = sum(k * cost[n] for n, k in ranks.items())
    # PEFT also trains what the adapter stores whole: biases and modules_to_save.
    other_params = sum(t.numel() for k, t in tensors.items() if ".lora_" not in k)
    total = sum(total_sq.values())
    path = _write(out, tensors, config) if out is not None else None
    warns = (
        [f"{len(dropped)} module(s) dropped (rank 0): {', '.join(dropped[:3])}"] if dropped else []
    )
    for w in warns:
        _warnings.warn(w, stacklevel=2)
    return ExtractedAdapter(
        path=path,
        method=method,
        ranks=dict(sorted(ranks.items())),
        lora_params=lora_params,
        trainable_params=lora_params + other_params,
        energy_kept=kept_sq / total if total else 1.0,
        budget=limit,
        adapter_config=config,
        warnings=warns,
    )


def example_finetune(directory: str) -> str:
    """Write a "fine-tune" of the bundled MiniLM into ``directory`` (for examples and docs):
    its layer-0 query weight plus a planted update of rank 12 (singular values 1.2, 1.1, …,
    0.1), every other tensor unchanged. Returns the directory. Needs numpy and safetensors.

    Example:
        >>> import tempfile, os
        >>> sorted(os.listdir(example_finetune(tempfile.mkdtemp())))
        ['config.json', 'model.safetensors']
    """
    import numpy as np
    from safetensors.numpy import load_file, save

    from ..demo import demo_checkpoint

    weights = load_file(os.path.join(demo_checkpoint(), "model.safetensors"))
    rng = np.random.default_rng(0)
    name = "encoder.layer.0.attention.self.query.weight"
    u, _ = np.linalg.qr(rng.standard_normal((384, 12)))
    v, _ = np.linalg.qr(rng.standard_normal((384, 12)))
    s = np.arange(12, 0, -1) / 10
    weights[name] = (weights[name] + (u * s) @ v.T).astype(np.float32)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "model.safetensors", save(weights))
    config = Path(demo_checkpoint()) / "config.json"
    write_atomic(out / "config.json", config.read_text())
    return str(out)
