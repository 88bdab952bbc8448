"""TRL (1.16.0): the PEFT keys of TRL's ``ModelConfig`` (``trl sft --config FILE.yaml``, or
``TrlParser``), which ``trl.get_peft_config`` turns into ``peft.LoraConfig``: ``use_peft``,
``lora_r``, ``lora_alpha`` (int), ``lora_target_modules``, ``lora_target_parameters``.
In Python, ``SFTTrainer(peft_config=rec.to_peft())`` takes the exact config with no loss;
this is the config-file route.

``ModelConfig`` turns a one-element ``lora_target_modules`` list into a string, which PEFT
reads as a regex matched against the whole module name: ``["c_attn"]`` would match no
module. A one-element list is therefore written as the equivalent regex
``(?:.*\\.)?c_attn`` (PEFT's suffix rule, exact by construction). Refused with a one-line
:class:`~lora_rank.errors.ConfigError`: per-module ranks or alphas (no ``rank_pattern``),
``layers_to_transform``, a non-integer alpha; ``exclude_modules`` becomes the equivalent
suffix list when the report is given.

Example:
    >>> import lora_rank
    >>> report = lora_rank.analyze(lora_rank.demo_checkpoint())
    >>> print(render(report.recommend("attention-qv"), report), end="")  # doctest: +ELLIPSIS
    # TRL 1.16.0: ModelConfig PEFT keys for .../model
    # trainable parameters: 73,728 (what PEFT reports for the LoraConfig TRL 1.16.0 builds from these keys)
    model_name_or_path: "..."
    use_peft: true
    lora_r: 8
    lora_alpha: 16
    lora_target_modules:
    - "query"
    - "value"
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Optional

from .common import (
    check_equivalent,
    count_line,
    explicit_targets,
    integer_alpha,
    pattern_summary,
    refuse,
    to_yaml,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..peft.recommendation import Recommendation
    from ..report import Report

RELEASE = "TRL 1.16.0"
FILENAME = "trl_model_config.yaml"
_INSTEAD = "pass rec.to_peft() as SFTTrainer(peft_config=...) instead, or export to peft"


def config(rec: Recommendation, report: Optional[Report] = None) -> dict[str, Any]:
    """The ``ModelConfig`` keys of ``rec``; raises ConfigError for what they cannot say.

    Example:
        >>> import lora_rank
        >>> rec = lora_rank.analyze(lora_rank.demo_checkpoint()).recommend("attention-qv", r=4)
        >>> config(rec)["lora_r"]
        4
    """
    if rec.rank_pattern or rec.alpha_pattern:
        raise refuse(RELEASE, pattern_summary(rec) + " (ModelConfig has no rank_pattern)", _INSTEAD)
    if rec.layers_to_transform is not None:
        raise refuse(RELEASE, f"layers_to_transform {rec.layers_to_transform}", _INSTEAD)
    tm: Any = rec.target_modules
    if rec.exclude_modules:
        tm = explicit_targets(f"{RELEASE} (no exclude_modules)", rec, report)
    if isinstance(tm, list) and len(tm) == 1:
        tm = rf"(?:.*\.)?{re.escape(tm[0])}"
    out: dict[str, Any] = {
        "model_name_or_path": rec.base_model_name_or_path,
        "use_peft": True,
        "lora_r": rec.r,
        "lora_alpha": integer_alpha(RELEASE, rec.lora_alpha),
        "lora_target_modules": tm,
    }
    if rec.target_parameters:
        out["lora_target_parameters"] = list(rec.target_parameters)
    # fan_in_fan_out (GPT-2's Conv1D) is not a ModelConfig key: PEFT sets it itself for
    # Conv1D targets (with a warning), so nothing is lost.
    if tm is not rec.target_modules and (rec.exclude_modules or report is not None):
        check_equivalent(RELEASE, rec, peft_kwargs(out), report)
    return out


def peft_kwargs(keys: dict[str, Any]) -> dict[str, Any]:
    """The ``LoraConfig`` keywords ``trl.get_peft_config`` builds from ``keys`` (after
    ``ModelConfig.__post_init__``'s one-element-list rule).

    Example:
        >>> peft_kwargs({"lora_r": 4, "lora_alpha": 8, "lora_target_modules": ["q_proj"]})["target_modules"]
        'q_proj'
    """
    tm: Any = keys.get("lora_target_modules")
    if hasattr(tm, "__len__") and len(tm) == 1:
        tm = tm[0]
    kw: dict[str, Any] = {
        "r": keys.get("lora_r", 16),
        "lora_alpha": keys.get("lora_alpha", 32),
        "target_modules": tm,
    }
    if keys.get("lora_target_parameters") is not None:
        kw["target_parameters"] = keys["lora_target_parameters"]
    return kw


def render(rec: Recommendation, report: Optional[Report] = None) -> str:
    """The YAML text, the trainable count in a comment. Example: see the module docs."""
    keys = config(rec, report)
    head = f"{RELEASE}: ModelConfig PEFT keys for {rec.base_model_name_or_path}\n" + count_line(
        rec, RELEASE
    )
    return to_yaml(keys, {"model_name_or_path": head})
