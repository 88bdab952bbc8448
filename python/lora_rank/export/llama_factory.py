"""LLaMA-Factory (0.9.5): the LoRA arguments of a LLaMA-Factory training YAML, read into its
``llamafactory.hparams.FinetuningArguments`` dataclass and turned into ``peft.LoraConfig`` by
``llamafactory.model.adapter._setup_lora_tuning``: ``finetuning_type: lora``, ``lora_rank``
(one rank for every module), ``lora_alpha`` (an int), ``lora_target`` (a comma-separated list
of module-name suffixes, or ``all``: LLaMA-Factory's own list of linear leaf names).

Everything else is refused with a one-line :class:`~lora_rank.errors.ConfigError` naming what
would be lost: per-module ranks or alphas (no ``rank_pattern``), ``target_parameters`` (MoE
expert tensors), ``layers_to_transform``, a non-integer alpha. ``"all-linear"`` and
``exclude_modules`` become the explicit suffix list that selects the same modules, checked
against the report (PEFT's matching replayed), or are refused without one.

Example:
    >>> import lora_rank
    >>> report = lora_rank.analyze(lora_rank.demo_checkpoint())
    >>> print(render(report.recommend("all-linear"), report), end="")  # doctest: +ELLIPSIS
    # LLaMA-Factory 0.9.5: LoRA arguments for .../model
    # trainable parameters: ... (what PEFT reports for the LoraConfig LLaMA-Factory 0.9.5 builds from these keys)
    model_name_or_path: "..."
    finetuning_type: "lora"
    lora_rank: 8
    lora_alpha: 16
    lora_target: "dense,key,query,value"
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from .common import (
    check_equivalent,
    count_line,
    explicit_targets,
    integer_alpha,
    pattern_summary,
    plain_suffixes,
    refuse,
    to_yaml,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..peft.recommendation import Recommendation
    from ..report import Report

RELEASE = "LLaMA-Factory 0.9.5"
FILENAME = "llama_factory_lora.yaml"
_INSTEAD = "export to peft, axolotl or unsloth, which pass rank_pattern through to PEFT"


def config(rec: Recommendation, report: Optional[Report] = None) -> dict[str, Any]:
    """The LLaMA-Factory arguments of ``rec``; raises ConfigError for what they cannot say.

    Example:
        >>> import lora_rank
        >>> report = lora_rank.analyze(lora_rank.demo_checkpoint())
        >>> config(report.recommend("spectral", budget="1%"), report)
        Traceback (most recent call last):
        ...
        lora_rank.errors.ConfigError: LLaMA-Factory 0.9.5 cannot express per-module ranks [4, 8] / alphas [8, 16] over ...
    """
    if rec.rank_pattern or rec.alpha_pattern:
        raise refuse(RELEASE, pattern_summary(rec) + " (lora_rank is one rank)", _INSTEAD)
    if rec.target_parameters:
        raise refuse(
            RELEASE, f"target_parameters {rec.target_parameters} (MoE expert tensors)", _INSTEAD
        )
    if rec.layers_to_transform is not None:
        raise refuse(RELEASE, f"layers_to_transform {rec.layers_to_transform}", _INSTEAD)
    targets = plain_suffixes(RELEASE, explicit_targets(RELEASE, rec, report))
    out: dict[str, Any] = {
        "model_name_or_path": rec.base_model_name_or_path,
        "finetuning_type": "lora",
        "lora_rank": rec.r,
        # LLaMA-Factory's default alpha is 2·rank: always written.
        "lora_alpha": integer_alpha(RELEASE, rec.lora_alpha),
        "lora_target": ",".join(targets),
    }
    if targets != rec.target_modules:
        check_equivalent(RELEASE, rec, peft_kwargs(out), report)
    return out


def peft_kwargs(args: dict[str, Any]) -> dict[str, Any]:
    """The ``LoraConfig`` keywords LLaMA-Factory 0.9.5 builds from ``args`` (``lora_target``
    split at commas, ``lora_alpha`` defaulting to twice the rank).

    Example:
        >>> peft_kwargs({"lora_rank": 4, "lora_target": "q_proj, v_proj"})
        {'r': 4, 'lora_alpha': 8, 'target_modules': ['q_proj', 'v_proj']}
    """
    rank = int(args.get("lora_rank", 8))
    return {
        "r": rank,
        "lora_alpha": args.get("lora_alpha") or rank * 2,
        "target_modules": [t.strip() for t in str(args.get("lora_target", "all")).split(",")],
    }


def render(rec: Recommendation, report: Optional[Report] = None) -> str:
    """The YAML text, the trainable count in a comment. Example: see the module docs."""
    keys = config(rec, report)
    head = (
        f"{RELEASE}: LoRA arguments for {rec.base_model_name_or_path}\n{count_line(rec, RELEASE)}"
    )
    return to_yaml(keys, {"model_name_or_path": head})
