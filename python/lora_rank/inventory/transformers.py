"""``analyze(path, resolve="transformers")``: exact names and classes from the model itself.

The model is built on the meta device from ``config.json`` (no weights are read or allocated:
the usual inspect-by-loading approach, seconds instead of milliseconds). Checkpoint keys are
renamed with transformers' own ``get_model_conversion_mapping`` + ``rename_source_key``, shapes
come from the model's parameters, classes from its modules, and the LoRA targets from PEFT
resolving ``target_modules="all-linear"`` on that meta model. This covers architectures the
shipped rules don't (including ``trust_remote_code`` models when the caller allows it).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Optional

from ..errors import ConfigError
from ..report import Module, Tensor
from . import kinds, naming


def _build_meta_model(root: str, config: dict[str, Any], trust_remote_code: bool) -> Any:
    import torch
    import transformers

    cfg = transformers.AutoConfig.from_pretrained(root, trust_remote_code=trust_remote_code)
    arch = (config.get("architectures") or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    auto_map = getattr(cfg, "auto_map", None) or {}
    with torch.device("meta"):
        if cls is not None:
            return cls(cfg)
        if auto_map:
            if not trust_remote_code:
                raise ConfigError(
                    f"{root}: the model class {arch!r} is custom code from the checkpoint; pass "
                    "trust_remote_code=True to build it (this runs code shipped with the model)"
                )
            auto = next((a for a, ref in auto_map.items() if ref.endswith(f".{arch}")), None)
            auto_cls = getattr(transformers, auto or "AutoModel")
            return auto_cls.from_config(cfg, trust_remote_code=True)
        return transformers.AutoModel.from_config(cfg)


def peft_targets(model: Any) -> tuple[set[str], set[str]]:
    """Modules and parameters PEFT wraps for ``target_modules="all-linear"`` on ``model`` (a
    torch model; imports peft). ``scripts/generate_architectures.py`` records them per class.

    Example:
        >>> import transformers
        >>> cfg = transformers.BertConfig(num_hidden_layers=1, hidden_size=8, num_attention_heads=2,
        ...                               intermediate_size=16, vocab_size=10)
        >>> sorted(peft_targets(transformers.BertModel(cfg))[0])[:2]
        ['encoder.layer.0.attention.output.dense', 'encoder.layer.0.attention.self.key']
    """
    import peft
    from peft.tuners.tuners_utils import BaseTunerLayer

    wrapped = peft.get_peft_model(model, peft.LoraConfig(target_modules="all-linear"))
    modules: set[str] = set()
    params: set[str] = set()
    for name, mod in wrapped.named_modules():
        if not isinstance(mod, BaseTunerLayer):
            continue
        name = name.removeprefix("base_model.model.")
        while name.endswith(".base_layer"):
            name = name.removesuffix(".base_layer")
        param = getattr(mod, "parameter_name", None)
        if param:
            params.add(f"{name}.{param}")
        else:
            modules.add(name)
    return modules, params


def _runtime_names(model: Any, keys: list[str]) -> dict[str, str]:
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, rename_source_key

    conversions = get_model_conversion_mapping(model)
    renamings = [c for c in conversions if not isinstance(c, WeightConverter)]
    converters = [c for c in conversions if isinstance(c, WeightConverter)]
    meta = model.state_dict()
    prefix = getattr(model, "base_model_prefix", None) or None
    return {k: rename_source_key(k, renamings, converters, prefix, meta)[0] for k in keys}


def build_modules_from_model(
    tensors: list[Tensor],
    config: Optional[dict[str, Any]],
    root: str,
    *,
    trust_remote_code: bool = False,
) -> tuple[list[Module], list[str]]:
    """Modules of the checkpoint named, shaped and classified by the meta-device model.

    Example:
        >>> import lora_rank
        >>> report = lora_rank.analyze(lora_rank.demo_checkpoint(), resolve="transformers")
        >>> report.module("encoder.layer.0.attention.self.query").module_class
        'Linear'
    """
    import torch

    if config is None:
        raise ConfigError(f"{root}: resolve='transformers' needs config.json beside the weights")
    model = _build_meta_model(root, config, trust_remote_code)
    runtime = _runtime_names(model, [t.name for t in tensors])
    params = dict(model.named_parameters())
    params.update(dict(model.named_buffers()))
    modules_by_name = dict(model.named_modules())
    target_modules, target_params = peft_targets(model)

    groups: dict[str, list[Tensor]] = defaultdict(list)
    entry_of: dict[str, str] = {}
    warnings: list[str] = []
    for t in tensors:
        name = runtime[t.name]
        owner, _, leaf = name.rpartition(".")
        is_module_param = leaf in ("weight", "bias") and owner in modules_by_name
        entry = owner if is_module_param else name
        entry_of[t.name] = entry
        groups[entry].append(t)
        if name not in params:
            warnings.append(
                f"checkpoint key {t.name} maps to {name}, which the model does not have"
            )

    modules: list[Module] = []
    for entry, stored in groups.items():
        mod = modules_by_name.get(entry)
        if mod is not None:
            own = dict(mod.named_parameters(recurse=False))
            weight = own.get("weight")
            shape = tuple(weight.shape) if weight is not None else tuple(stored[0].shape)
            count = sum(p.numel() for p in own.values())
            cls_name: Optional[str] = type(mod).__name__
        else:
            p = params.get(entry)
            shape = tuple(p.shape) if p is not None else tuple(stored[0].shape)
            count = math.prod(shape)
            cls_name = None
        kind = kinds.classify(entry, len(shape))
        if isinstance(mod, torch.nn.Embedding):
            kind = "embedding"
        elif "Norm" in (cls_name or "") and len(shape) == 1:
            kind = "norm"
        elif _is_linear(mod) and kind in ("embedding", "norm", "other", "moe_router"):
            kind = "other_linear"
        in_f = out_f = None
        if _is_linear(mod):
            out_f, in_f = (shape[1], shape[0]) if type(mod).__name__ == "Conv1D" else shape[:2]
        elif len(shape) == 3 and kind.startswith("moe_expert"):
            out_f, in_f = shape[1], shape[2]
        parameter = next((p for p in (entry, f"{entry}.weight") if p in target_params), None)
        modules.append(
            Module(
                name=entry,
                kind=kind,
                layer=kinds.layer_index(entry),
                in_features=in_f,
                out_features=out_f,
                shape=shape,
                dtype=next((t.dtype for t in stored if t.name.endswith("weight")), stored[0].dtype),
                params=count,
                is_lora_target=entry in target_modules or parameter is not None,
                checkpoint_keys=tuple(t.name for t in stored),
                parameter=parameter,
                num_experts=shape[0] if len(shape) == 3 and kind.startswith("moe_expert") else None,
                module_class=cls_name,
            )
        )
    return naming.natural_sorted(modules, lambda m: m.name), warnings


def _is_linear(mod: Any) -> bool:
    import torch

    return isinstance(mod, torch.nn.Linear) or type(mod).__name__ == "Conv1D"
