"""PEFT as the oracle: load a checkpoint with transformers, wrap it with PEFT, and report what
PEFT wrapped and how many parameters it trains."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from checkpoints import load_model


@dataclass(frozen=True)
class PeftResult:
    #: Names of wrapped modules (``base_model.model.`` and nested ``.base_layer`` stripped).
    modules: frozenset[str]
    #: Full runtime names of parameters wrapped through ``target_parameters``.
    parameters: frozenset[str]
    #: ``get_nb_trainable_parameters()[0]``.
    trainable: int
    #: Rank of each wrapped module / parameter.
    ranks: dict[str, int]
    model: Any


def apply_peft(path: Path, config: Any) -> PeftResult:
    """``get_peft_model(load_model(path), config)`` and what it wrapped."""
    import peft
    from peft.tuners.tuners_utils import BaseTunerLayer

    model = peft.get_peft_model(load_model(path), config)
    modules: set[str] = set()
    params: set[str] = set()
    ranks: dict[str, int] = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, BaseTunerLayer):
            continue
        name = name.removeprefix("base_model.model.")
        while name.endswith(".base_layer"):
            name = name.removesuffix(".base_layer")
        param = getattr(mod, "parameter_name", None)
        r = next(iter(mod.r.values())) if mod.r else 0
        if param:
            full = f"{name}.{param}"
            params.add(full)
            ranks[full] = r
        else:
            modules.add(name)
            ranks[name] = r
    return PeftResult(
        frozenset(modules),
        frozenset(params),
        model.get_nb_trainable_parameters()[0],
        ranks,
        model,
    )
