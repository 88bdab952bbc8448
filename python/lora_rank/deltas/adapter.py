"""PEFT LoRA adapters read from their files: per adapted module r, alpha, scaling and the exact
spectrum of its update ΔW = scaling·B·A, computed from the factors (QR of both, SVD of the
r × r core in Rust: ``_core.product_spectra``), never by forming ΔW.

An adapter directory holds ``adapter_config.json`` and ``adapter_model.safetensors`` with keys
``base_model.model.<module>.lora_A.weight`` [r, in] and ``.lora_B.weight`` [out, r]
(``lora_embedding_A`` [r, num_embeddings] / ``lora_embedding_B`` [dim, r] for embeddings, whose
update is (B·A)ᵀ: the same singular values; convolutions store A as [r, in, k, …] and B as
[out, r, 1, …], read as [r, in·k·…] and [out, r]). The scaling is ``alpha / r``, or
``alpha / √r`` with ``use_rslora``, with ``r`` the stored rank and ``alpha`` from
``alpha_pattern`` (PEFT's matching: :func:`lora_rank.peft.rules.pattern_key`) or
``lora_alpha``. DoRA's ``lora_magnitude_vector`` rescales each output row of W + ΔW; the
spectrum reported is that of ΔW = scaling·B·A and ``dora`` says the module has the vector.
``modules_to_save`` copies are listed, not analysed; factors this reader does not know
(``target_parameters`` wrappers of 3-D expert tensors) are named in a warning.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import warnings as _warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .. import _core
from ..errors import ConfigError, NotACheckpointError
from ..inventory.kinds import classify, layer_index
from ..peft.rules import pattern_key
from ..report import Module, Report, Spectrum, Tensor
from ..sources.local import open_local
from ..spectral.jobs import Job, Plan, shard_files

#: The files of a PEFT adapter.
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
#: What PEFT puts in front of the base model's module names in an adapter's keys.
PEFT_PREFIX = "base_model.model."
#: Singular values reported per adapted module (the whole spectrum has at most r nonzero).
TOP_K = 64

_FACTOR = re.compile(
    r"^(?P<module>.+)\.(?P<which>lora_A|lora_B|lora_embedding_A|lora_embedding_B)"
    r"(?:\.[^.]+)?(?:\.weight)?$"
)
_MAGNITUDE = re.compile(r"^(?P<module>.+)\.lora_magnitude_vector(?:\.[^.]+)?(?:\.weight)?$")


def is_adapter(path: str) -> bool:
    """Whether ``path`` is a local PEFT adapter directory (``adapter_config.json`` beside
    ``adapter_model.safetensors``).

    Example:
        >>> import lora_rank
        >>> is_adapter(lora_rank.demo_checkpoint())
        False
    """
    return os.path.isfile(os.path.join(path, ADAPTER_CONFIG)) and os.path.isfile(
        os.path.join(path, ADAPTER_WEIGHTS)
    )


@dataclass(frozen=True)
class AdaptedModule:
    """One module an adapter changes: its base model name, rank, alpha, scaling and the
    spectrum of its update ΔW = scaling·B·A (out × in).

    ``rank_used`` is the energy rank at 99% of ‖ΔW‖²_F: how many of the ``r`` directions the
    update really uses. ``base_norm`` (‖W‖_F of the base weight) and ``relative_change``
    (‖ΔW‖_F / ‖W‖_F) are set when the adapter was analysed with ``base=``.

    Example:
        >>> s = Spectrum((2.0, 1.0), 5 ** 0.5, 2.0, 1.25, 1, 2, 2, True, 1.0, 0, "exact")
        >>> m = AdaptedModule("model.layers.0.self_attn.q_proj", "attn_q", 0, 16, 16, 2, 16.0,
        ...                   8.0, "a", "b", False, False, s, base_norm=10.0)
        >>> m.rank_used, m.params, round(m.relative_change, 4)
        (2, 64, 0.2236)
    """

    name: str
    kind: str
    layer: Optional[int]
    in_features: int
    out_features: int
    r: int
    alpha: float
    scaling: float
    a_key: str
    b_key: str
    embedding: bool
    dora: bool
    spectrum: Spectrum
    base_norm: Optional[float] = None

    @property
    def rank_used(self) -> int:
        """Energy rank of ΔW at 99%."""
        return self.spectrum.energy_rank_99

    @property
    def params(self) -> int:
        """Parameters of the factors: r·(in + out)."""
        return self.r * (self.in_features + self.out_features)

    @property
    def relative_change(self) -> Optional[float]:
        """‖ΔW‖_F / ‖W‖_F (None without a base)."""
        if self.base_norm is None:
            return None
        return self.spectrum.frobenius_norm / self.base_norm if self.base_norm else math.inf

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "spectrum"}
        d.update(
            rank_used=self.rank_used,
            params=self.params,
            relative_change=self.relative_change,
            spectrum=self.spectrum.to_dict(),
        )
        return d


@dataclass
class AdapterReport(Report):
    """What :func:`lora_rank.analyze` returns for a PEFT adapter directory: a :class:`Report`
    whose modules are the adapted modules (their spectrum is the update's), plus the adapter's
    own view: :attr:`adapted` (r, alpha, scaling, rank used per module), its config,
    ``modules_to_save`` and the base it was checked against.

    Example:
        >>> import lora_rank, tempfile
        >>> from lora_rank.deltas.adapter import example_adapter
        >>> report = lora_rank.analyze(example_adapter(tempfile.mkdtemp()))
        >>> m = report.adapted[0]
        >>> m.name, m.r, m.scaling, m.rank_used
        ('encoder.layer.0.attention.self.query', 4, 2.0, 3)
    """

    adapter_config: dict[str, Any] = field(default_factory=dict)
    adapted: list[AdaptedModule] = field(default_factory=list)
    modules_to_save: list[str] = field(default_factory=list)
    #: The base checkpoint the adapter was checked against (``base=``), if any.
    base_path: Optional[str] = None

    def adapted_module(self, name: str) -> AdaptedModule:
        """The adapted module called ``name`` (KeyError if none)."""
        for m in self.adapted:
            if m.name == name:
                return m
        raise KeyError(name)

    @property
    def trainable_params(self) -> int:
        """Parameters of all factors (what PEFT counts as the adapter's LoRA parameters)."""
        return sum(m.params for m in self.adapted)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (the report's, plus the adapter's fields)."""
        d = super().to_dict()
        d["adapter_config"] = self.adapter_config
        d["adapted"] = [m.to_dict() for m in self.adapted]
        d["modules_to_save"] = list(self.modules_to_save)
        d["base_path"] = self.base_path
        return d


def _read_config(root: str) -> dict[str, Any]:
    path = os.path.join(root, ADAPTER_CONFIG)
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not a readable adapter config: {e}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: not a JSON object")
    kind = config.get("peft_type", "LORA")
    if kind != "LORA":
        raise ConfigError(f"{path}: peft_type {kind!r} is not a LoRA adapter")
    return config


def _matrix_job(t: Tensor) -> Job:
    """The engine job reading tensor ``t`` as a matrix [shape[0], prod(shape[1:])]."""
    cols = math.prod(t.shape[1:]) if len(t.shape) > 1 else 1
    return (t.name, [(t.shard, t.begin, t.shape[0] if t.shape else 1)], cols, t.dtype)


def _scaling(config: dict[str, Any], name: str, r: int) -> tuple[float, float]:
    """(alpha, scaling) of module ``name`` with stored rank ``r``."""
    alphas = config.get("alpha_pattern") or {}
    key = pattern_key(alphas, name)
    alpha = float(alphas[key]) if key is not None else float(config.get("lora_alpha", 8))
    if r == 0:
        return alpha, 0.0
    return alpha, alpha / (math.sqrt(r) if config.get("use_rslora") else r)


def analyze_adapter(
    path: str,
    *,
    base: Optional[Report] = None,
    threads: Optional[int] = None,
) -> AdapterReport:
    """Read a PEFT LoRA adapter directory: every adapted module's r, alpha, scaling and the
    exact spectrum of its update (see the module docs). With ``base`` (the base checkpoint's
    :class:`~lora_rank.report.Report`), every adapted module is checked against the base's
    modules and shapes (a :class:`~lora_rank.errors.ConfigError` names each mismatch) and
    ‖ΔW‖_F / ‖W‖_F is reported. :func:`lora_rank.analyze` calls this for adapter
    directories.

    Example:
        >>> import lora_rank, tempfile
        >>> from lora_rank.deltas.adapter import example_adapter
        >>> report = analyze_adapter(example_adapter(tempfile.mkdtemp()),
        ...                          base=lora_rank.analyze(lora_rank.demo_checkpoint()))
        >>> m = report.adapted[0]
        >>> m.out_features, m.in_features, m.relative_change < 1
        (384, 384, True)
    """
    root = os.fspath(path)
    if not is_adapter(root):
        raise NotACheckpointError(
            f"{root}: not a PEFT adapter ({ADAPTER_CONFIG} + {ADAPTER_WEIGHTS})"
        )
    config = _read_config(root)
    ckpt = open_local(os.path.join(root, ADAPTER_WEIGHTS), threads)
    tensors = {t.name: t for t in ckpt.tensors}
    factors: dict[str, dict[str, Tensor]] = {}
    magnitudes: set[str] = set()
    other: list[str] = []
    for name, t in tensors.items():
        key = name[len(PEFT_PREFIX) :] if name.startswith(PEFT_PREFIX) else name
        match = _FACTOR.match(key)
        if match:
            factors.setdefault(match["module"], {})[match["which"]] = t
            continue
        mag = _MAGNITUDE.match(key)
        if mag:
            magnitudes.add(mag["module"])
        else:
            other.append(key)
    warns: list[str] = []
    # (module, A, B, embedding, alpha, scaling)
    pairs: list[tuple[str, Tensor, Tensor, bool, float, float]] = []
    for module, parts in sorted(factors.items()):
        embedding = "lora_embedding_A" in parts or "lora_embedding_B" in parts
        a = parts.get("lora_embedding_A" if embedding else "lora_A")
        b = parts.get("lora_embedding_B" if embedding else "lora_B")
        if a is None or b is None or len(a.shape) < 2 or len(b.shape) < 2:
            warns.append(
                f"{root}: {module}: factors {sorted(parts)} with shapes "
                f"{[parts[k].shape for k in sorted(parts)]} are not an A/B pair this reader "
                "knows (target_parameters wrappers of 3-D tensors are not analysed); skipped"
            )
            continue
        if math.prod(b.shape[2:]) != 1 or b.shape[1] != a.shape[0]:
            raise ConfigError(
                f"{root}/{ADAPTER_WEIGHTS}: {b.name} {list(b.shape)} does not multiply "
                f"{a.name} {list(a.shape)}"
            )
        pairs.append((module, a, b, embedding, *_scaling(config, module, a.shape[0])))
    shards = [(p, os.path.getsize(p)) for p in ckpt.shards]
    modules_arg = []
    for _, a, b, _, _, scaling in pairs:
        b_job = (b.name, [(b.shard, b.begin, b.shape[0])], b.shape[1], b.dtype)
        modules_arg.append((_matrix_job(a), b_job, scaling))
    results = _core.product_spectra(shards, modules_arg, TOP_K, threads=threads)
    base_report = base
    adapted: list[AdaptedModule] = []
    for (module, a, b, embedding, alpha, scaling), d in zip(pairs, results):
        r = a.shape[0]
        out_f, in_f = b.shape[0], math.prod(a.shape[1:])
        if embedding:  # the embedding's weight is [num_embeddings, dim] = (B·A)ᵀ
            out_f, in_f = in_f, out_f
        adapted.append(
            AdaptedModule(
                name=module,
                kind=classify(module, 2) if not embedding else "embedding",
                layer=layer_index(module),
                in_features=in_f,
                out_features=out_f,
                r=r,
                alpha=alpha,
                scaling=scaling,
                a_key=a.name,
                b_key=b.name,
                embedding=embedding,
                dora=module in magnitudes,
                spectrum=Spectrum.from_core(d),
            )
        )
    if base_report is not None:
        adapted = check_against_base(adapted, base_report, root, threads)
    # Tensors stored in full (modules_to_save, embedding layers PEFT saves with their
    # adapter): their modules, without PEFT's wrapper names.
    saved = sorted(
        {
            k.rsplit(".", 1)[0].replace(".modules_to_save", "").replace(".base_layer", "")
            for k in other
            if not k.endswith("bias")
        }
    )
    for w in warns:
        _warnings.warn(w, stacklevel=2)
    modules = [
        Module(
            name=m.name,
            kind=m.kind,
            layer=m.layer,
            in_features=m.in_features,
            out_features=m.out_features,
            shape=(m.out_features, m.in_features),
            dtype=tensors[m.a_key].dtype,
            params=m.params,
            is_lora_target=True,
            checkpoint_keys=(m.a_key, m.b_key),
            spectrum=m.spectrum,
        )
        for m in adapted
    ]
    return AdapterReport(
        path=root,
        model_type=None,
        architectures=[],
        config=None,
        total_params=sum(t.numel for t in ckpt.tensors),
        total_bytes=sum(t.nbytes for t in ckpt.tensors),
        tensors=ckpt.tensors,
        modules=modules,
        shards=ckpt.shards,
        resolution="adapter",
        warnings=warns,
        spectral_settings={"method": "exact (from the factors)", "top_k": TOP_K},
        adapter_config=config,
        adapted=adapted,
        modules_to_save=saved,
        base_path=base_report.path if base_report is not None else None,
    )


def check_against_base(
    adapted: list[AdaptedModule], base: Report, root: str, threads: Optional[int] = None
) -> list[AdaptedModule]:
    """``adapted`` with each base weight's ‖W‖_F, after checking that every module exists in
    ``base`` with the adapter's (out, in) shape: one :class:`~lora_rank.errors.ConfigError`
    naming every mismatch otherwise.
    """
    by_name = {m.name: m for m in base.modules}
    problems: list[str] = []
    found: list[Module] = []
    for m in adapted:
        b = by_name.get(m.name)
        if b is None:
            problems.append(f"{m.name}: no such module in the base")
            continue
        want = (b.out_features, b.in_features)
        if m.embedding and len(b.shape) == 2:
            want = (b.shape[0], b.shape[1])
        if (m.out_features, m.in_features) != want:
            problems.append(
                f"{m.name}: the adapter is {m.out_features}×{m.in_features}, "
                f"the base's weight {want[0]}×{want[1]}"
            )
            continue
        found.append(b)
    if problems:
        shown = "; ".join(problems[:5]) + (
            f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        )
        raise ConfigError(f"{root}: the adapter does not fit the base {base.path}: {shown}")
    plan = Plan(base)
    job_of = {module.name: i for i, (module, expert) in enumerate(plan.targets) if expert is None}
    wanted = [job_of[b.name] for b in found if b.name in job_of]
    norms = _core.frobenius_norms(
        shard_files(base),
        [plan.jobs[i] for i in wanted],
        quant=[plan.quant[i] for i in wanted],
        threads=threads,
    )
    norm_of = {plan.targets[i][0].name: n for i, n in zip(wanted, norms)}
    return [dataclasses.replace(m, base_norm=norm_of.get(m.name)) for m in adapted]


def example_adapter(directory: str) -> str:
    """Write a small PEFT adapter for the bundled MiniLM into ``directory`` (for examples and
    docs): ``encoder.layer.0.attention.self.query`` at r=4, alpha=8, whose update has rank 3
    (its 4th direction is zero). Returns the directory. Needs numpy and safetensors.

    Example:
        >>> import tempfile, os
        >>> sorted(os.listdir(example_adapter(tempfile.mkdtemp())))
        ['adapter_config.json', 'adapter_model.safetensors']
    """
    import numpy as np
    from safetensors.numpy import save_file

    from ..atomic import write_atomic

    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 384)).astype(np.float32) / 20
    b = rng.standard_normal((384, 4)).astype(np.float32) / 20
    b[:, 3] = 0.0
    module = "encoder.layer.0.attention.self.query"
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    save_file(
        {f"{PEFT_PREFIX}{module}.lora_A.weight": a, f"{PEFT_PREFIX}{module}.lora_B.weight": b},
        str(out / ADAPTER_WEIGHTS),
    )
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["query"]}
    write_atomic(out / ADAPTER_CONFIG, json.dumps(config, indent=2) + "\n")
    return str(out)
