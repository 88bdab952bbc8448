r"""The :class:`Recommendation`: target modules and per-module ranks as an exact PEFT
``LoraConfig``, with the trainable-parameter count known before loading the model, and its
:class:`Target` rows (one per adapted module). Built by :func:`lora_rank.peft.config.build`;
written with :meth:`Recommendation.save`, shown with :meth:`Recommendation.explain` and in
notebooks through :mod:`lora_rank.render.html`.

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

if TYPE_CHECKING:  # pragma: no cover
    from ..report import Report

#: The file PEFT reads an adapter's config from.
ADAPTER_CONFIG = "adapter_config.json"


def json_number(x: float) -> Union[int, float]:
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
        d["alpha"] = json_number(self.alpha)
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
            >>> import lora_rank
            >>> rec = lora_rank.analyze(lora_rank.demo_checkpoint()).recommend("attention-qv")
            >>> cfg = rec.to_peft(lora_dropout=0.05)
            >>> cfg.r, cfg.lora_dropout, sorted(cfg.target_modules)
            (8, 0.05, ['query', 'value'])
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

    def save(
        self,
        directory: Union[str, os.PathLike[str]],
        format: str = "peft",
        report: Optional[Report] = None,
    ) -> Path:
        """Write ``adapter_config.json`` into ``directory`` (created if missing) atomically;
        ``peft.LoraConfig.from_pretrained(directory)`` reads it back. Returns the file's path.
        Another ``format`` (``axolotl``, ``llama-factory``, ``unsloth``, ``trl``) writes that
        trainer's config instead (:mod:`lora_rank.export`; ``report`` lets it translate
        ``"all-linear"`` into a list it checks).

        Example:
            >>> import lora_rank
            >>> rec = lora_rank.analyze(lora_rank.demo_checkpoint()).recommend("attention-qv")
            >>> import tempfile, peft
            >>> path = rec.save(tempfile.mkdtemp())
            >>> path.name, peft.LoraConfig.from_pretrained(path.parent).r
            ('adapter_config.json', 8)
            >>> rec.save(tempfile.mkdtemp(), format="axolotl").name
            'axolotl_lora.yaml'
        """
        if format != "peft":
            from ..export import save

            return save(self, directory, format, report)
        from ..atomic import write_atomic

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        path = out / ADAPTER_CONFIG
        write_atomic(path, json.dumps(self.adapter_config(), indent=2) + "\n")
        return path

    def export(
        self, format: str = "peft", report: Optional[Report] = None
    ) -> Union[str, dict[str, Any]]:
        """This recommendation in a trainer's format: a dict for ``peft`` (the
        ``adapter_config.json`` content) and ``unsloth`` (``get_peft_model`` keywords), YAML
        text for ``axolotl``, ``llama-factory`` and ``trl``; a one-line ConfigError names what
        a format cannot express (:mod:`lora_rank.export`).

        Example:
            >>> import lora_rank
            >>> rec = lora_rank.analyze(lora_rank.demo_checkpoint()).recommend("attention-qv")
            >>> rec.export("unsloth")["r"]
            8
        """
        from ..export import export

        return export(self, format, report)

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
            >>> import lora_rank
            >>> rec = lora_rank.analyze(lora_rank.demo_checkpoint()).recommend("attention-qv")
            >>> lines = rec.explain().splitlines()
            >>> lines[0], lines[-2][:24]
            ('strategy: attention-qv (task: general)', 'trainable: 73,728 (0.325')
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
                f"{json_number(t.alpha)}",
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
        """Notebook display: PEFT fields, trainable count, ranks per kind
        (:mod:`lora_rank.render.html`)."""
        # Lazy import (deliberate cycle): render reads recommendations; notebooks display them.
        from ..render.html import recommendation_html

        return recommendation_html(self)
