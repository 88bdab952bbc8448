"""unsloth (2026.10.9): keyword arguments of ``FastLanguageModel.get_peft_model(model, ...)``.
Its signature (``unsloth/models/llama.py``) names ``r``, ``target_modules``, ``lora_alpha``,
``layers_to_transform``, ``target_parameters`` and more, and passes its ``**kwargs`` on to
``peft.LoraConfig``: ``rank_pattern``, ``alpha_pattern``, ``exclude_modules`` and
``fan_in_fan_out`` reach PEFT unchanged, so every recommendation is expressed. Importing
unsloth needs a GPU; the keywords were read from the release's source.

``target_parameters`` is always written (``[]`` when there are none): with None, unsloth
adds MoE expert parameters of its own choosing.

Example:
    >>> import lora_rank
    >>> rec = lora_rank.analyze(lora_rank.demo_checkpoint()).recommend("attention-qv")
    >>> config(rec)
    {'r': 8, 'lora_alpha': 16, 'target_modules': ['query', 'value'], 'target_parameters': []}
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Optional

from .common import count_line

if TYPE_CHECKING:  # pragma: no cover
    from ..peft.recommendation import Recommendation
    from ..report import Report

RELEASE = "unsloth 2026.10.9"
FILENAME = "unsloth_peft.py"

#: Keywords of ``FastLanguageModel.get_peft_model`` in unsloth 2026.10.9 (``models/llama.py``)
#: that lora_rank writes; the rest go through its ``**kwargs`` to ``peft.LoraConfig``.
SIGNATURE_KEYWORDS = (
    "r",
    "target_modules",
    "lora_alpha",
    "layers_to_transform",
    "target_parameters",
)


def config(rec: Recommendation, report: Optional[Report] = None) -> dict[str, Any]:
    """The ``get_peft_model`` keywords of ``rec`` (nothing is refused: see the module docs).
    Example: see the module docs."""
    kw: dict[str, Any] = {
        "r": rec.r,
        "lora_alpha": rec.lora_alpha,
        "target_modules": rec.target_modules,
        "target_parameters": list(rec.target_parameters or []),
    }
    if rec.layers_to_transform is not None:
        kw["layers_to_transform"] = list(rec.layers_to_transform)
    if rec.exclude_modules:
        kw["exclude_modules"] = list(rec.exclude_modules)
    if rec.rank_pattern:
        kw["rank_pattern"] = dict(rec.rank_pattern)
    if rec.alpha_pattern:
        kw["alpha_pattern"] = dict(rec.alpha_pattern)
    if rec.fan_in_fan_out:
        kw["fan_in_fan_out"] = True
    return kw


def render(rec: Recommendation, report: Optional[Report] = None) -> str:
    """A Python file defining ``PEFT_KWARGS`` for ``get_peft_model``, the count in a comment.

    Example:
        >>> import lora_rank
        >>> rec = lora_rank.analyze(lora_rank.demo_checkpoint()).recommend("attention-qv")
        >>> print(render(rec), end="")  # doctest: +ELLIPSIS
        # unsloth 2026.10.9: FastLanguageModel.get_peft_model keywords for .../model
        # trainable parameters: 73,728 (what PEFT reports for the LoraConfig unsloth 2026.10.9 builds from these keys)
        # model = FastLanguageModel.get_peft_model(model, **PEFT_KWARGS)
        PEFT_KWARGS = {
            "r": 8,
            "lora_alpha": 16,
            "target_modules": ["query", "value"],
            "target_parameters": [],
        }
    """
    kw = config(rec, report)
    lines = [
        f"# {RELEASE}: FastLanguageModel.get_peft_model keywords for {rec.base_model_name_or_path}",
        f"# {count_line(rec, RELEASE)}",
        "# model = FastLanguageModel.get_peft_model(model, **PEFT_KWARGS)",
        "PEFT_KWARGS = {",
    ]
    lines += [f"    {json.dumps(k)}: {_literal(v)}," for k, v in kw.items()]
    return "\n".join([*lines, "}"]) + "\n"


def _literal(v: Any) -> str:
    """A Python literal of ``v`` (strings, numbers, lists and dicts of them as JSON, which
    is valid Python for those; booleans and None by ``repr``)."""
    return repr(v) if isinstance(v, bool) or v is None else json.dumps(v)
