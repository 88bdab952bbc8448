"""axolotl (0.19.0): the LoRA keys of an axolotl YAML config, read by its pydantic schema
(``axolotl.utils.schemas.peft.LoraConfig``) and turned into ``peft.LoraConfig`` by
``axolotl.loaders.adapter._build_peft_lora_config``:

- ``lora_r``, ``lora_alpha`` (ints) → ``r``, ``lora_alpha``;
- ``lora_target_modules`` (a list, a regex string, or the string ``"all-linear"``, all passed
  to PEFT as they are: PEFT's own ``all-linear``, not axolotl's ``lora_target_linear``, which
  lists the leaf names of every ``*Linear*`` class itself);
- ``lora_target_parameters``, ``peft_layers_to_transform``, ``lora_fan_in_fan_out``;
- ``lora_rank_pattern`` / ``lora_alpha_pattern`` (``dict[str, PositiveInt]``) → PEFT's
  ``rank_pattern`` / ``alpha_pattern``: per-module ranks and alphas are expressed.

Refused (one-line :class:`~lora_rank.errors.ConfigError`): a non-integer alpha (the schema's
fields are ints) and ``exclude_modules`` (the schema has no ``lora_exclude_modules`` field, so
validation drops it; a list that selects the same modules is written instead when the report
is given).

Example:
    >>> import lora_rank
    >>> report = lora_rank.analyze(lora_rank.demo_checkpoint())
    >>> print(render(report.recommend("attention-qv"), report), end="")  # doctest: +ELLIPSIS
    # axolotl 0.19.0: LoRA keys for .../model
    # trainable parameters: 73,728 (what PEFT reports for the LoraConfig axolotl 0.19.0 builds from these keys)
    base_model: "..."
    adapter: "lora"
    lora_r: 8
    lora_alpha: 16
    lora_target_modules:
    - "query"
    - "value"
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from .common import check_equivalent, count_line, explicit_targets, integer_alpha, to_yaml

if TYPE_CHECKING:  # pragma: no cover
    from ..peft.recommendation import Recommendation
    from ..report import Report

#: The release whose schema and loader these keys are written for.
RELEASE = "axolotl 0.19.0"
#: The file :func:`lora_rank.export.save` writes.
FILENAME = "axolotl_lora.yaml"


def config(rec: Recommendation, report: Optional[Report] = None) -> dict[str, Any]:
    """The axolotl keys of ``rec`` (see the module docs); raises ConfigError for what the
    format cannot express.

    Example:
        >>> import lora_rank
        >>> rec = lora_rank.analyze(lora_rank.demo_checkpoint()).recommend("attention-qv")
        >>> config(rec)["lora_target_modules"]
        ['query', 'value']
    """
    out: dict[str, Any] = {
        "base_model": rec.base_model_name_or_path,
        "adapter": "lora",
        "lora_r": rec.r,
        "lora_alpha": integer_alpha(RELEASE, rec.lora_alpha),
    }
    tm: Any = rec.target_modules
    layers = rec.layers_to_transform
    if rec.exclude_modules:
        tm = explicit_targets(f"{RELEASE} (no lora_exclude_modules in its schema)", rec, report)
        layers = None
    out["lora_target_modules"] = tm
    if rec.target_parameters:
        out["lora_target_parameters"] = list(rec.target_parameters)
    if layers is not None:
        out["peft_layers_to_transform"] = list(layers)
    if rec.rank_pattern:
        out["lora_rank_pattern"] = dict(rec.rank_pattern)
    if rec.alpha_pattern:
        out["lora_alpha_pattern"] = {
            k: integer_alpha(RELEASE, v, f"alpha_pattern value for {k!r}")
            for k, v in rec.alpha_pattern.items()
        }
    if rec.fan_in_fan_out:
        out["lora_fan_in_fan_out"] = True
    if tm is not rec.target_modules:
        check_equivalent(RELEASE, rec, peft_kwargs(out), report)
    return out


def peft_kwargs(keys: dict[str, Any]) -> dict[str, Any]:
    """The ``LoraConfig`` keywords axolotl 0.19.0 builds from ``keys`` (its
    ``_build_peft_lora_config``, the LoRA fields only).

    Example:
        >>> peft_kwargs({"lora_r": 4, "lora_alpha": 8, "lora_target_modules": ["q_proj"]})["r"]
        4
    """
    kw: dict[str, Any] = {
        "r": keys.get("lora_r"),
        "lora_alpha": keys.get("lora_alpha"),
        "target_modules": keys.get("lora_target_modules") or [],
        "target_parameters": keys.get("lora_target_parameters") or [],
        "layers_to_transform": keys.get("peft_layers_to_transform"),
        "fan_in_fan_out": keys.get("lora_fan_in_fan_out"),
    }
    if keys.get("lora_rank_pattern"):
        kw["rank_pattern"] = keys["lora_rank_pattern"]
    if keys.get("lora_alpha_pattern"):
        kw["alpha_pattern"] = keys["lora_alpha_pattern"]
    return kw


def render(rec: Recommendation, report: Optional[Report] = None) -> str:
    """The YAML text (a fragment to merge into an axolotl config), the trainable count in a
    comment. Example: see the module docs."""
    keys = config(rec, report)
    head = f"{RELEASE}: LoRA keys for {rec.base_model_name_or_path}\n{count_line(rec, RELEASE)}"
    return to_yaml(keys, {"base_model": head})
