r"""The :class:`Recommendation`: target modules and per-module ranks as an exact PEFT
``LoraConfig``, with the trainable-parameter count known before loading the model.

:func:`build` turns a plan (one :class:`Target` per adapted module: rank, alpha) into the
fewest ``LoraConfig`` fields that reproduce it:

- ``target_modules``: ``"all-linear"`` when the plan is exactly that (optionally with
  ``exclude_modules``), else the shortest choice among a list of dot-suffixes
  (``["q_proj", "v_proj"]``), the same list with ``layers_to_transform``, or one regex
  grouped by layer (``.*\.(?:(?:0|1)\.self_attn\.q_proj)``; never on model types whose
  ``target_modules`` PEFT rewrites for MoE, where a regex would widen);
- ``target_parameters`` for fused MoE expert tensors and routers (suffixes or full paths);
- ``r`` / ``lora_alpha``: the most common pair; ``rank_pattern`` / ``alpha_pattern``: one regex
  key per other pair, grouped by kind and layer.

Before returning, the config is replayed with PEFT's matching rules
(:func:`lora_rank.peft_rules.applied`): every wrapped module and parameter, its rank and alpha
must equal the plan, and every pattern key must hit exactly the modules it was made for;
otherwise :class:`~lora_rank.peft_rules.PeftEmulationError` is raised.

Example:
    >>> import lora_rank
    >>> rec = lora_rank.analyze(lora_rank.demo_checkpoint()).recommend("attention-qv")
    >>> rec.target_modules, rec.r, rec.trainable_params
    (['query', 'value'], 8, 73728)
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from . import patterns, peft_rules, taxonomy
from .peft_rules import ALL_LINEAR, PeftEmulationError, Universe
from .report import KINDS, Report

#: The file PEFT reads an adapter's config from.
ADAPTER_CONFIG = "adapter_config.json"


def _num(x: float) -> Union[int, float]:
    """``x`` as an int when integral (tidier JSON, PEFT's own type for ranks and alphas)."""
    return int(x) if float(x).is_integer() else float(x)


@dataclass(frozen=True)
class Target:
    """One adapted module (or parameter) of a recommendation.

    ``key`` is PEFT's name for it (the module name, or the parameter path for
    ``target_parameters``); ``params`` the trainable parameters its adapter adds; ``score`` the
    allocation score (NaN for presets without spectra).
    """

    module: str
    key: str
    kind: str
    layer: Optional[int]
    rank: int
    alpha: float
    params: int
    is_parameter: bool
    score: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (NaN score as None)."""
        d = {f: getattr(self, f) for f in self.__dataclass_fields__}
        d["alpha"] = _num(self.alpha)
        d["score"] = self.score if math.isfinite(self.score) else None
        return d


@dataclass
class Recommendation:
    """LoRA targets and ranks for one checkpoint, as exact ``peft.LoraConfig`` fields.

    ``trainable_params`` is what ``get_peft_model(model, rec.to_peft())
    .get_nb_trainable_parameters()[0]`` reports (checked against PEFT in the test suite);
    ``targets`` lists every adapted module with its rank. Overrides passed to
    :meth:`to_peft` that change targets or ranks (or ``task_type="SEQ_CLS"``, which makes
    PEFT train the classification head in full) change that count.

    Example:
        >>> import lora_rank
        >>> rec = lora_rank.analyze(lora_rank.demo_checkpoint()).recommend("attention")
        >>> rec.to_dict()["target_modules"]
        ['query', 'key', 'value', 'attention.output.dense']
    """

    strategy: str
    target_modules: Union[str, list[str]]
    exclude_modules: Optional[list[str]]
    layers_to_transform: Optional[list[int]]
    target_parameters: Optional[list[str]]
    r: int
    lora_alpha: Union[int, float]
    rank_pattern: dict[str, int]
    alpha_pattern: dict[str, Union[int, float]]
    fan_in_fan_out: bool
    trainable_params: int
    targets: list[Target]
    warnings: list[str] = field(default_factory=list)
    task: Optional[str] = None
    #: Budget in trainable parameters, when one was given (or derived, for a weighted strategy).
    budget: Optional[int] = None
    total_params: int = 0
    base_model_name_or_path: Optional[str] = None
    #: How targets and ranks were chosen (shown by :meth:`explain`).
    rule: str = ""

    # -- PEFT -------------------------------------------------------------------------------
    def peft_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``peft.LoraConfig`` (fresh copies: PEFT edits configs in
        place)."""
        kw: dict[str, Any] = {
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "target_modules": copy.copy(self.target_modules),
        }
        if self.exclude_modules:
            kw["exclude_modules"] = list(self.exclude_modules)
        if self.layers_to_transform is not None:
            kw["layers_to_transform"] = list(self.layers_to_transform)
        if self.target_parameters:
            kw["target_parameters"] = list(self.target_parameters)
        kw["rank_pattern"] = dict(self.rank_pattern)
        kw["alpha_pattern"] = dict(self.alpha_pattern)
        if self.fan_in_fan_out:
            kw["fan_in_fan_out"] = True
        return kw

    def to_peft(self, **overrides: Any) -> Any:
        """A ``peft.LoraConfig`` (imports peft); ``overrides`` are passed on
        (``lora_dropout=0.05``, ``task_type="CAUSAL_LM"``, ...).

        Example:
            >>> cfg = rec.to_peft(lora_dropout=0.05)  # doctest: +SKIP
            >>> cfg.r, cfg.lora_dropout  # doctest: +SKIP
            (8, 0.05)
        """
        from peft import LoraConfig

        return LoraConfig(**{**self.peft_kwargs(), **overrides})

    def adapter_config(self) -> dict[str, Any]:
        """The ``adapter_config.json`` content :meth:`save` writes."""
        return {
            "peft_type": "LORA",
            "task_type": None,
            "base_model_name_or_path": self.base_model_name_or_path,
            **self.peft_kwargs(),
        }

    def save(self, directory: Union[str, os.PathLike[str]]) -> Path:
        """Write ``adapter_config.json`` into ``directory`` (created if missing) atomically;
        ``peft.LoraConfig.from_pretrained(directory)`` reads it back. Returns the file's path.

        Example:
            >>> path = rec.save("adapter")  # doctest: +SKIP
            >>> peft.LoraConfig.from_pretrained("adapter").r  # doctest: +SKIP
            8
        """
        from .atomic import write_atomic

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        path = out / ADAPTER_CONFIG
        write_atomic(path, json.dumps(self.adapter_config(), indent=2) + "\n")
        return path

    # -- views ------------------------------------------------------------------------------
    def module_ranks(self) -> dict[str, int]:
        """Report module name → LoRA rank of every adapted module."""
        return {t.module: t.rank for t in self.targets}

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form: the ``LoraConfig`` fields, the counts, warnings and targets."""
        return {
            **self.peft_kwargs(),
            "exclude_modules": self.exclude_modules,
            "layers_to_transform": self.layers_to_transform,
            "target_parameters": self.target_parameters,
            "fan_in_fan_out": self.fan_in_fan_out,
            "strategy": self.strategy,
            "task": self.task,
            "trainable_params": self.trainable_params,
            "budget": self.budget,
            "total_params": self.total_params,
            "warnings": list(self.warnings),
            "rule": self.rule,
            "targets": [t.to_dict() for t in self.targets],
        }

    def explain(self) -> str:
        """A plain-text table of every target (module, kind, score, rank, alpha, params), the
        rule that chose them, the totals and the PEFT fields.

        Example:
            >>> print(rec.explain())  # doctest: +SKIP
            strategy: auto (task: general) ...
        """
        lines = [f"strategy: {self.strategy} (task: {self.task or 'general'})"]
        lines += [f"  {line}" for line in self.rule.splitlines()]
        header = ("module", "kind", "score", "rank", "alpha", "params")
        rows = [
            (
                t.key,
                t.kind,
                f"{t.score:.1f}" if math.isfinite(t.score) else "-",
                str(t.rank),
                f"{_num(t.alpha)}",
                f"{t.params:,}",
            )
            for t in self.targets
        ]
        widths = [
            max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
            for i, h in enumerate(header)
        ]

        def fmt(cells: Sequence[str]) -> str:
            return "  ".join(
                c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
            ).rstrip()

        lines += ["", fmt(header), fmt(["-" * w for w in widths])]
        lines += [fmt(r) for r in rows]
        share = self.trainable_params / self.total_params if self.total_params else math.nan
        total = f"trainable: {self.trainable_params:,} ({share:.3%} of {self.total_params:,})"
        if self.budget:
            total += f", budget {self.budget:,} ({self.trainable_params / self.budget:.1%} used)"
        lines += ["", total, f"LoraConfig: {json.dumps(self.peft_kwargs())}"]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"Recommendation({self.strategy}, {len(self.targets)} targets, r={self.r}, "
            f"{len(self.rank_pattern)} rank_pattern keys, "
            f"{self.trainable_params:,} trainable params)"
        )

    def _repr_html_(self) -> str:
        """Notebook display: PEFT fields, trainable count, ranks per kind (:mod:`lora_rank.html`)."""
        from .html import recommendation_html

        return recommendation_html(self)


# -- building ------------------------------------------------------------------------------


def _target_module_options(
    mods: list[str], universe: Universe, allow_all_linear: bool
) -> list[dict[str, Any]]:
    """Candidate ``target_modules`` (+ ``exclude_modules`` / ``layers_to_transform``) fields
    for the module targets ``mods``, most preferred first (not yet checked)."""
    options: list[dict[str, Any]] = []
    if allow_all_linear and set(mods) <= universe.all_linear:
        drop = [n for n in sorted(universe.all_linear) if n not in set(mods)]
        excl = patterns.suffix_list(drop, universe.all_linear) if drop else None
        if not drop or excl:
            options.append({"target_modules": ALL_LINEAR, "exclude_modules": excl})
    if not mods:
        return [*options, {"target_modules": []}]
    listed = patterns.suffix_list(mods, universe.modules)
    if listed:
        options.append({"target_modules": listed})
    layers = {peft_rules.layer_of(n) for n in mods}
    if None not in layers:
        # Every layer's module of each role targeted, in the targets' (kind) order.
        shapes = list(dict.fromkeys(patterns.template(n) for n in mods))
        pool = sorted(
            (
                r.key
                for r in universe.reach.values()
                if not r.is_parameter and patterns.template(r.key) in shapes
            ),
            key=lambda n: shapes.index(patterns.template(n)),
        )
        pooled = patterns.suffix_list(pool, universe.modules)
        if pooled:
            options.append(
                {
                    "target_modules": pooled,
                    "layers_to_transform": sorted(int(i) for i in layers if i is not None),
                }
            )
    if universe.moe is None:
        rx = patterns.regex(mods, universe.modules)
        if rx:
            # The shorter form unless a piece starts at a top-level name (checked by applied()).
            for prefix in (r".*\.", r"(?:.*\.)?"):
                options.append({"target_modules": prefix + patterns.embed(rx)})
    return options


#: Lists up to this long are preferred to a regex (PEFT's usual, most readable form).
_MAX_LIST = 16


def _cost(option: dict[str, Any]) -> tuple[int, int]:
    """Preference of an exact option, lowest first: literal "all-linear" (by the length of its
    exclusions), then short lists, then whatever is shortest."""
    tm = option["target_modules"]
    if tm == ALL_LINEAR:
        return (0, len(json.dumps(option.get("exclude_modules"))))
    if isinstance(tm, list) and len(tm) <= _MAX_LIST:
        return (1, len(json.dumps(option)))
    return (2, len(json.dumps(option)))


def _pattern_keys(
    intended: dict[str, tuple[int, float]],
    got: dict[str, tuple[int, float]],
) -> tuple[dict[str, int], dict[str, float], dict[str, list[str]]]:
    """``rank_pattern`` and ``alpha_pattern`` keys for the names whose ``got`` (rank, alpha)
    differs from ``intended``: one regex per intended pair, exact among the targets."""
    need: dict[tuple[int, float], list[str]] = {}
    for name, pair in intended.items():
        if got[name] != pair:
            need.setdefault(pair, []).append(name)
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    groups: dict[str, list[str]] = {}
    for (rank, alpha), names in sorted(need.items(), key=lambda kv: (-kv[0][0], -kv[0][1])):
        key = patterns.regex(names, intended)
        if key is None:
            raise PeftEmulationError(f"no exact rank_pattern key for {names[:3]}")
        groups[key] = names
        if got[names[0]][0] != rank or any(got[n][0] != rank for n in names):
            ranks[key] = rank
        if any(got[n][1] != alpha for n in names):
            alphas[key] = alpha
    return ranks, alphas, groups


def _check_keys(
    patterns_: dict[str, Any], groups: dict[str, list[str]], wrapped: Sequence[str], what: str
) -> None:
    """Every key of ``patterns_`` must be the first match of exactly its group."""
    first = {n: peft_rules.pattern_key(patterns_, n) for n in wrapped}
    for key in patterns_:
        hit = {n for n in wrapped if peft_rules.key_matches(key, n)}
        if not hit or hit != set(groups[key]) or any(first[n] != key for n in hit):
            raise PeftEmulationError(
                f"{what} key {key!r} hits {sorted(hit)[:4]}, meant for {sorted(groups[key])[:4]}"
            )


def build(
    report: Report,
    targets: list[Target],
    *,
    strategy: str,
    allow_all_linear: bool = False,
    task: Optional[str] = None,
    budget: Optional[int] = None,
    warnings: Optional[list[str]] = None,
    rule: str = "",
) -> Recommendation:
    """The :class:`Recommendation` whose PEFT config adapts exactly ``targets`` with their
    ranks and alphas (see the module docstring); ``allow_all_linear`` permits the literal
    ``"all-linear"``.

    Raises:
        PeftEmulationError: when no config reproduces ``targets`` (an internal error).
    """
    universe = Universe.of(report)
    intended = {t.key: (t.rank, float(t.alpha)) for t in targets}
    pairs = Counter(intended.values())
    r0, a0 = max(pairs, key=lambda p: (pairs[p], p)) if pairs else (8, 16.0)
    # Kind order (q, k, v, o, gate, up, down) makes suffix lists read naturally.
    in_order = sorted(targets, key=lambda t: KINDS.index(t.kind) if t.kind in KINDS else len(KINDS))
    mods = [t.key for t in in_order if not t.is_parameter]
    params = [t.key for t in in_order if t.is_parameter]
    tp = patterns.suffix_list(params, universe.parameters) if params else None
    if params and tp is None:
        raise PeftEmulationError(f"no exact target_parameters for {params[:3]}")

    best: Optional[tuple[tuple[int, int], dict[str, Any], dict[str, list[str]]]] = None
    for option in _target_module_options(mods, universe, allow_all_linear):
        base = {"r": r0, "lora_alpha": a0, **option, "target_parameters": tp}
        literal = option["target_modules"] == ALL_LINEAR
        if literal and universe.moe is not None:
            # PEFT adds the expert tensors and router itself.
            base["target_parameters"] = None
        try:
            got = peft_rules.applied(base, universe)
        except PeftEmulationError:
            continue
        if set(got) != set(intended):
            continue
        ranks, alphas, groups = _pattern_keys(intended, got)
        config = {**base, "rank_pattern": ranks, "alpha_pattern": alphas}
        if peft_rules.applied(config, universe) != intended:
            continue
        size = _cost(option)
        if best is None or size < best[0]:
            best = (size, config, groups)
    if best is None:
        raise PeftEmulationError(
            f"no LoraConfig reproduces the {len(targets)} planned targets of {report.path}"
        )
    _, config, groups = best
    literal = config["target_modules"] == ALL_LINEAR
    wrapped = sorted(intended)
    _check_keys(config["rank_pattern"], groups, wrapped, "rank_pattern")
    _check_keys(config["alpha_pattern"], groups, wrapped, "alpha_pattern")
    counted = peft_rules.trainable(peft_rules.applied(config, universe), universe)
    if counted != sum(t.params for t in targets):
        raise PeftEmulationError(
            f"trainable count {counted} != planned {sum(t.params for t in targets)}"
        )

    notes = list(warnings or [])
    peft_keyed = literal and universe.moe is not None and bool(universe.moe.fused)
    if peft_keyed or any(
        peft_rules.key_matches(k, p) for k in config["rank_pattern"] for p in params
    ):
        notes.append(
            "PEFT warns that rank_pattern/alpha_pattern keys of target_parameters 'did not "
            "match any targeted module'; they do apply (PEFT only checks modules there)"
        )
    conv1d = report.model_type in taxonomy.CONV1D_MODEL_TYPES and bool(mods)
    return Recommendation(
        strategy=strategy,
        target_modules=config["target_modules"],
        exclude_modules=config.get("exclude_modules"),
        layers_to_transform=config.get("layers_to_transform"),
        target_parameters=config.get("target_parameters"),
        r=int(config["r"]),
        lora_alpha=_num(config["lora_alpha"]),
        rank_pattern={k: int(v) for k, v in config["rank_pattern"].items()},
        alpha_pattern={k: _num(v) for k, v in config["alpha_pattern"].items()},
        fan_in_fan_out=conv1d,
        trainable_params=counted,
        targets=targets,
        warnings=notes,
        task=task,
        budget=budget,
        total_params=report.total_params,
        base_model_name_or_path=report.path,
        rule=rule,
    )
