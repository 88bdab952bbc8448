"""Two checkpoints of one architecture (a base and its fine-tune): which modules changed, by
how much, and the spectrum of each update ΔW = W_ft − W_base, streamed from both files panel by
panel (the Rust engine's delta source: never a full copy of either matrix, the memory of a
single scan).

Modules are paired by runtime name (a fine-tune saved with a task head, e.g.
``BertForSequenceClassification`` against a ``BertModel`` base, is paired through the prefix
its modules gain, ``bert.``). Every weight matrix the spectral engine reads (the jobs of
:class:`lora_rank.spectral.jobs.Plan`: linear layers, embeddings, expert slices) gets a
:class:`ModuleDelta`; every other tensor (biases, norms, buffers) is compared in full and a
difference is a :class:`TensorChange`, as are tensors only one side has and embeddings whose
vocabulary was resized. A matrix of another shape that is not an embedding or output layer is
an error naming it: the two are not one architecture.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Union

from .. import _core, executors
from ..errors import ConfigError, UnsupportedFormatError
from ..executors.scan import Scan
from ..inventory.quantization import QuantTuple
from ..inventory.quantization import _Aux as Aux
from ..report import Report, Spectrum, Tensor
from ..sources.local import PathLike
from ..spectral.jobs import Job, Plan, shard_files
from ..spectral.progress import ProgressCallback
from ..spectral.settings import SpectralSettings

if TYPE_CHECKING:  # pragma: no cover
    from .extract import ExtractedAdapter

#: Kinds whose matrices may change shape between a base and a fine-tune (a resized vocabulary).
RESIZABLE_KINDS = ("embedding", "lm_head")
#: Bytes compared at a time for tensors outside the matrices.
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ModuleDelta:
    """One weight matrix of both checkpoints and its update ΔW = W_ft − W_base.

    ``name`` is the base's module name (``expert`` set for one expert's slice);
    ``base_norm`` and ``delta_norm`` are ‖W_base‖_F and ‖ΔW‖_F; ``spectrum`` is ΔW's (with
    ``spectral=True``; None when ΔW is zero). ``lora_target`` says whether PEFT's ``all-linear`` wraps the module.

    Example:
        >>> d = ModuleDelta("q", "q", "attn_q", 0, None, 8, 8, 2.0, 0.5, None, True)
        >>> d.relative_change, d.changed
        (0.25, True)
    """

    name: str
    finetuned_name: str
    kind: str
    layer: Optional[int]
    expert: Optional[int]
    in_features: int
    out_features: int
    base_norm: float
    delta_norm: float
    spectrum: Optional[Spectrum]
    lora_target: bool

    @property
    def relative_change(self) -> float:
        """‖ΔW‖_F / ‖W_base‖_F."""
        if self.base_norm == 0:
            return 0.0 if self.delta_norm == 0 else math.inf
        return self.delta_norm / self.base_norm

    @property
    def changed(self) -> bool:
        """Whether ΔW is nonzero."""
        return self.delta_norm != 0

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "spectrum"}
        d["relative_change"] = self.relative_change
        d["spectrum"] = self.spectrum.to_dict() if self.spectrum else None
        return d


@dataclass(frozen=True)
class TensorChange:
    """A difference outside the compared matrices: ``change`` is ``"changed"`` (same shape,
    other values; ``relative_change`` ‖Δ‖/‖base‖ when the dtype is a float), ``"resized"``,
    ``"added"`` (only in the fine-tune), ``"removed"`` (only in the base) or ``"dtype"``.

    Example:
        >>> TensorChange("classifier.weight", "added", "[4, 384] BF16").change
        'added'
    """

    name: str
    change: str
    detail: str
    relative_change: Optional[float] = None
    #: The module the tensor belongs to (its name without ``.weight``/``.bias``).
    module: str = ""


@dataclass
class Comparison:
    """What :func:`compare` found: per matrix a :class:`ModuleDelta`, per other difference a
    :class:`TensorChange`, and the two reports. :meth:`extract` turns the updates into a PEFT
    adapter.

    Example:
        >>> import lora_rank
        >>> c = lora_rank.compare(lora_rank.demo_checkpoint(), lora_rank.demo_checkpoint())
        >>> len(c.modules), len(c.changed_modules), c.changes
        (40, 0, [])
    """

    base: Report
    finetuned: Report
    modules: list[ModuleDelta]
    changes: list[TensorChange]
    #: The prefix the fine-tune's names have beyond the base's ("" when none; "-p" when the
    #: base's names carry ``p`` and the fine-tune's do not).
    prefix: str = ""
    settings: Optional[SpectralSettings] = None
    warnings: list[str] = field(default_factory=list)
    #: The engine's reads of each module's update (its fine-tune job, that job's quantization
    #: and the base's job to subtract), aligned with :attr:`modules`, over :attr:`shards`.
    reads: list[UpdateRead] = field(default_factory=list, repr=False)
    #: ``(path, size)`` of the fine-tune's shards, then the base's: what :attr:`reads` index.
    shards: list[tuple[str, int]] = field(default_factory=list, repr=False)

    def update_read(self, module: ModuleDelta) -> UpdateRead:
        """The engine's read of ``module``'s update (for ``_core.read_matrix`` over
        :attr:`shards`)."""
        return self.reads[self.modules.index(module)]

    @property
    def changed_modules(self) -> list[ModuleDelta]:
        """The matrices whose update is nonzero."""
        return [m for m in self.modules if m.changed]

    def module(self, name: str) -> ModuleDelta:
        """The delta of module ``name`` (base or fine-tune name; first expert slice for MoE)."""
        for m in self.modules:
            if name in (m.name, m.finetuned_name):
                return m
        raise KeyError(name)

    def extract(
        self,
        out: Union[str, os.PathLike[str], None] = None,
        *,
        budget: Union[int, float, str, None] = None,
        r: Optional[int] = None,
        energy: Optional[float] = None,
        **kwargs: Any,
    ) -> ExtractedAdapter:
        """A PEFT LoRA adapter approximating the fine-tune: see
        :func:`lora_rank.deltas.extract.extract` (exactly one of ``budget``, ``r``, ``energy``).
        """
        # Lazy import (deliberate cycle): extraction needs torch; compare() does not.
        from .extract import extract

        return extract(self, out, budget=budget, r=r, energy=energy, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form."""
        return {
            "base": self.base.path,
            "finetuned": self.finetuned.path,
            "prefix": self.prefix,
            "modules": [m.to_dict() for m in self.modules],
            "changes": [vars(c) for c in self.changes],
            "warnings": list(self.warnings),
        }


def _names_prefix(base: set[str], ft: set[str]) -> str:
    """The prefix that pairs the most names: ``""``, ``"p."`` (fine-tune = p + base) or
    ``"-p."`` (base = p + fine-tune)."""
    best, best_n = "", len(base & ft)
    heads = {n.split(".", 1)[0] + "." for n in ft | base if "." in n}
    for p in sorted(heads):
        n_add = sum(1 for n in base if p + n in ft)
        n_cut = sum(1 for n in ft if p + n in base)
        if n_add > best_n:
            best, best_n = p, n_add
        if n_cut > best_n:
            best, best_n = "-" + p, n_cut
    return best


def _ft_name(name: str, prefix: str) -> str:
    if prefix.startswith("-"):
        p = prefix[1:]
        return name[len(p) :] if name.startswith(p) else name
    return prefix + name


def _shift(job: Job, by: int) -> Job:
    name, segs, cols, dtype = job
    return (name, [(s + by, off, rows) for s, off, rows in segs], cols, dtype)


#: ``(job, quantization)`` of the matrix a delta job subtracts (``_core.spectra``'s ``minus``).
Minus = tuple[Job, Optional[list[QuantTuple]]]
#: One update as the engine reads it: the fine-tune's job, its quantization, the base's part.
UpdateRead = tuple[Job, Optional[list[QuantTuple]], Minus]


def _shift_quant(quant: Optional[list[QuantTuple]], by: int) -> Optional[list[QuantTuple]]:
    """Engine quantization tuples with every auxiliary tensor's shard moved by ``by``."""
    if quant is None:
        return None

    def aux(a: Aux) -> Aux:
        return (a[0], a[1] + by, a[2], a[3], a[4])

    def opt(a: Optional[Aux]) -> Optional[Aux]:
        return None if a is None else aux(a)

    return [
        (
            q[0],
            q[1],
            q[2],
            q[3],
            q[4],
            aux(q[5]),
            opt(q[6]),
            opt(q[7]),
            [aux(a) for a in q[8]],
            q[9],
        )
        for q in quant
    ]


def _rows(job: Job) -> int:
    return sum(seg[2] for seg in job[1])


def _vector_job(t: Tensor) -> Job:
    return (t.name, [(t.shard, t.begin, 1)], max(t.numel, 1), t.dtype)


def _same_bytes(a: str, a_range: tuple[int, int], b: str, b_range: tuple[int, int]) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        fa.seek(a_range[0])
        fb.seek(b_range[0])
        left = a_range[1] - a_range[0]
        while left > 0:
            n = min(left, _CHUNK)
            if fa.read(n) != fb.read(n):
                return False
            left -= n
    return True


def compare(
    base: Union[PathLike, Report],
    finetuned: Union[PathLike, Report],
    *,
    spectral: bool = True,
    settings: Optional[SpectralSettings] = None,
    top_k: Optional[int] = None,
    threads: Optional[int] = None,
    progress: Union[bool, ProgressCallback, None] = None,
    executor: str = "local",
    ray_address: Optional[str] = None,
) -> Comparison:
    """Compare a base checkpoint with a fine-tune of it, without loading either model.

    Args:
        base, finetuned: what :func:`lora_rank.analyze` takes (local paths, HF cache entries),
            or its reports. Their spectral reads are local: a hub id is read from the HF
            cache when its snapshot is there.
        spectral: the spectrum of every update (else only norms and what changed).
        settings, top_k, threads: the solver's settings (``top_k`` default 64 here: the
            directions :meth:`Comparison.extract` can keep per module).
        progress: as in :func:`lora_rank.analyze`.
        executor, ray_address: where the updates' norms and spectra are computed (``"ray"``:
            Ray tasks, the same results), as in :func:`lora_rank.analyze`.

    Raises:
        ConfigError: the two are not one architecture (names the first mismatching tensor).

    Example:
        >>> import lora_rank
        >>> c = lora_rank.compare(lora_rank.demo_checkpoint(), lora_rank.demo_checkpoint(),
        ...                       spectral=False)
        >>> c.module("encoder.layer.0.attention.self.query").delta_norm
        0.0
    """
    # Lazy import (deliberate cycle): analysis dispatches adapter directories to this package.
    from ..analysis import analyze

    executors.check_executor(executor)
    chosen = (settings or SpectralSettings(top_k=64)).replace(top_k=top_k, threads=threads)
    reports = [
        r if isinstance(r, Report) else analyze(r, threads=chosen.threads, progress=False)
        for r in (base, finetuned)
    ]
    b, f = reports
    for r in reports:
        if r.remote_shards is not None:
            raise UnsupportedFormatError(
                f"{r.path}: comparing a remote checkpoint is not supported yet: download it "
                "(`hf download`) and pass the local path"
            )
    plan_b, plan_f = Plan(b), Plan(f)
    prefix = _names_prefix({m.name for m in b.modules}, {m.name for m in f.modules})
    f_jobs = {(m.name, e): i for i, (m, e) in enumerate(plan_f.targets)}
    changes: list[TensorChange] = []
    pairs: list[tuple[int, int]] = []
    for i, (m, e) in enumerate(plan_b.targets):
        j = f_jobs.pop((_ft_name(m.name, prefix), e), None)
        if j is None:
            changes.append(TensorChange(m.name, "removed", "only in the base", module=m.name))
            continue
        mb, mf = m, plan_f.targets[j][0]
        jb, jf = plan_b.jobs[i], plan_f.jobs[j]
        if (_rows(jb), jb[2]) != (_rows(jf), jf[2]):
            shapes = f"{_rows(jb)}×{jb[2]} in the base, {_rows(jf)}×{jf[2]} in the fine-tune"
            if mb.kind in RESIZABLE_KINDS and jb[2] == jf[2]:
                changes.append(TensorChange(jf[0], "resized", shapes, module=mf.name))
                continue
            raise ConfigError(
                f"{f.path}: tensor {jf[0]!r} does not match the base's {jb[0]!r} ({shapes}): "
                "not a fine-tune of this base"
            )
        pairs.append((i, j))
    if not pairs and plan_b.jobs and plan_f.jobs:
        raise ConfigError(
            f"{f.path}: no weight matrix in common with the base {b.path} (first: "
            f"{plan_f.jobs[0][0]!r} against {plan_b.jobs[0][0]!r}): not a fine-tune of this base"
        )
    for (name, _), _j in sorted(f_jobs.items()):
        changes.append(TensorChange(name, "added", "only in the fine-tune", module=name))
    shards = shard_files(f) + shard_files(b)
    off = len(f.shards)
    jobs = [plan_f.jobs[j] for _, j in pairs]
    quant = [plan_f.quant[j] for _, j in pairs]
    subtracted: list[Minus] = [
        (_shift(plan_b.jobs[i], off), _shift_quant(plan_b.quant[i], off)) for i, _ in pairs
    ]
    minus: list[Optional[Minus]] = list(subtracted)
    base_norms = executors.norms(
        Scan(
            shard_files(b), [plan_b.jobs[i] for i, _ in pairs], [plan_b.quant[i] for i, _ in pairs]
        ),
        chosen,
        executor=executor,
        ray_address=ray_address,
    )
    # One streamed read of both finds the updates that are zero (often most of them: a
    # fine-tune of some layers, unchanged embeddings); only the others are solved.
    delta_norms = executors.norms(
        Scan(shards, jobs, quant, minus=minus), chosen, executor=executor, ray_address=ray_address
    )
    spectra: list[Optional[Spectrum]] = [None] * len(pairs)
    if spectral:
        todo = [k for k, d in enumerate(delta_norms) if d != 0]
        scan = Scan(
            shards,
            [jobs[k] for k in todo],
            [quant[k] for k in todo],
            minus=[minus[k] for k in todo],
        )
        results = executors.spectra(
            scan,
            chosen,
            progress=progress,
            description="updates",
            executor=executor,
            ray_address=ray_address,
        )
        for k, d in zip(todo, results):
            spectra[k] = Spectrum.from_core(d)
    modules: list[ModuleDelta] = []
    for (i, j), nb, nd, s in zip(pairs, base_norms, delta_norms, spectra):
        mb, e = plan_b.targets[i]
        mf = plan_f.targets[j][0]
        modules.append(
            ModuleDelta(
                name=mb.name,
                finetuned_name=mf.name,
                kind=mb.kind,
                layer=mb.layer,
                expert=e,
                in_features=int(mb.in_features or plan_b.jobs[i][2]),
                out_features=int(mb.out_features or sum(r for *_, r in plan_b.jobs[i][1])),
                base_norm=nb,
                delta_norm=nd,
                spectrum=s,
                lora_target=mf.is_lora_target,
            )
        )
    changes += _other_changes(b, f, plan_b, plan_f, prefix, threads=chosen.threads)
    return Comparison(
        base=b,
        finetuned=f,
        modules=modules,
        changes=changes,
        prefix=prefix,
        settings=chosen if spectral else None,
        reads=list(zip(jobs, quant, subtracted)),
        shards=shards,
    )


def _owner(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else name


def _other_changes(
    b: Report, f: Report, plan_b: Plan, plan_f: Plan, prefix: str, *, threads: Optional[int]
) -> list[TensorChange]:
    """Differences among the tensors no matrix job read (biases, norms, buffers, 1-D)."""
    read = {
        k
        for plan in (plan_b, plan_f)
        for m, _ in plan.targets
        for k in m.checkpoint_keys
        if k in plan.tensors and k.endswith("weight") and len(plan.tensors[k].shape) >= 2
    }
    # Quantized weights' auxiliary tensors are part of their matrices.
    for report in (b, f):
        for m in report.modules:
            if m.quantization is not None:
                read |= set(m.checkpoint_keys) | set(m.quantization.aux_keys)
    tf = {t.name: t for t in f.tensors}
    out: list[TensorChange] = []
    float_pairs: list[tuple[Tensor, Tensor]] = []
    for tb in b.tensors:
        if tb.name in read:
            continue
        name_f = _ft_name(tb.name, prefix)
        t = tf.pop(name_f, None)
        if t is None:
            out.append(TensorChange(tb.name, "removed", "only in the base", module=_owner(tb.name)))
            continue
        if t.shape != tb.shape:
            out.append(
                TensorChange(
                    name_f, "resized", f"{list(tb.shape)} → {list(t.shape)}", module=_owner(name_f)
                )
            )
        elif t.dtype != tb.dtype:
            out.append(
                TensorChange(name_f, "dtype", f"{tb.dtype} → {t.dtype}", module=_owner(name_f))
            )
        elif not _same_bytes(
            f.shards[t.shard], (t.begin, t.end), b.shards[tb.shard], (tb.begin, tb.end)
        ):
            float_pairs.append((tb, t))
    for name, t in sorted(tf.items()):
        if name not in read:
            out.append(
                TensorChange(name, "added", f"{list(t.shape)} {t.dtype}", module=_owner(name))
            )
    decodable = [(tb, t) for tb, t in float_pairs if tb.dtype in ("F32", "F16", "BF16", "F64")]
    ratios: dict[str, float] = {}
    if decodable:
        off = len(f.shards)
        shards = shard_files(f) + shard_files(b)
        jobs = [_vector_job(t) for _, t in decodable]
        vector_minus: list[Optional[Minus]] = [
            (_shift(_vector_job(tb), off), None) for tb, _ in decodable
        ]
        deltas = _core.frobenius_norms(shards, jobs, minus=vector_minus, threads=threads)
        norms = _core.frobenius_norms(
            shard_files(b), [_vector_job(tb) for tb, _ in decodable], threads=threads
        )
        for (_, t), d, n in zip(decodable, deltas, norms):
            ratios[t.name] = d / n if n else math.inf
    for _, t in float_pairs:
        out.append(
            TensorChange(
                t.name,
                "changed",
                f"{list(t.shape)} {t.dtype}",
                ratios.get(t.name),
                module=_owner(t.name),
            )
        )
    return out
