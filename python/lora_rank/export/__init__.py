"""A :class:`~lora_rank.peft.recommendation.Recommendation` in the config formats of the
trainers people launch LoRA fine-tunes from, one module per format, and Spectrum's selection
of layers to unfreeze (:mod:`lora_rank.export.spectrum`).

Each exporter writes exactly the keys its tool reads, for the release named in its
``RELEASE``; what the format cannot express is either written as an equivalent (checked by
replaying PEFT's matching on the report) or refused with a one-line
:class:`~lora_rank.errors.ConfigError` naming what would be lost. The trainable count the
exported config gives is PEFT's (``Recommendation.trainable_params``) and is stated beside
the keys (a YAML or Python comment).

=============== =========================== ======================================
format          file written by ``save``    the tool reads it as
=============== =========================== ======================================
``peft``        ``adapter_config.json``     ``peft.LoraConfig.from_pretrained``
``axolotl``     ``axolotl_lora.yaml``       axolotl config keys (merge into yours)
``llama-factory`` ``llama_factory_lora.yaml`` LLaMA-Factory training arguments
``unsloth``     ``unsloth_peft.py``         ``get_peft_model(model, **PEFT_KWARGS)``
``trl``         ``trl_model_config.yaml``   ``trl sft --config`` (``ModelConfig``)
=============== =========================== ======================================

May import: ``errors``, ``report``, ``atomic``, ``peft.rules``/``patterns``, ``spectral``;
never ``peft.recommendation`` at run time (it imports this package lazily).

Example:
    >>> import lora_rank
    >>> rec = lora_rank.analyze(lora_rank.demo_checkpoint()).recommend("attention-qv")
    >>> export(rec, "unsloth")["target_modules"]
    ['query', 'value']
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Optional, Union

from ..errors import ConfigError
from . import axolotl, llama_factory, trl, unsloth

if TYPE_CHECKING:  # pragma: no cover
    from ..peft.recommendation import Recommendation
    from ..report import Report

#: Format names, PEFT first (the default).
FORMATS = ("peft", "axolotl", "llama-factory", "unsloth", "trl")

_MODULES: dict[str, ModuleType] = {
    "axolotl": axolotl,
    "llama-factory": llama_factory,
    "unsloth": unsloth,
    "trl": trl,
}


def _module(fmt: str) -> ModuleType:
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    return _MODULES[fmt]


def export(
    rec: Recommendation, fmt: str = "peft", report: Optional[Report] = None
) -> Union[str, dict[str, Any]]:
    """``rec`` in format ``fmt``: the ``adapter_config.json`` dict (peft), the keyword dict
    (unsloth) or the YAML text (axolotl, llama-factory, trl). ``report`` (the one ``rec`` was
    made from) lets an exporter translate ``"all-linear"``/``exclude_modules`` into an
    explicit list it checks; without it such translations are refused.

    Raises:
        ConfigError: an unknown format, or what the format cannot express (one line).

    Example:
        >>> import lora_rank
        >>> rec = lora_rank.analyze(lora_rank.demo_checkpoint()).recommend("attention-qv")
        >>> print(export(rec, "llama-factory").splitlines()[-1])
        lora_target: "query,value"
    """
    if fmt == "peft":
        return rec.adapter_config()
    mod = _module(fmt)
    if fmt == "unsloth":
        out: dict[str, Any] = mod.config(rec, report)
        return out
    text: str = mod.render(rec, report)
    return text


def filename(fmt: str) -> str:
    """The file :func:`save` writes for ``fmt``.

    Example:
        >>> filename("axolotl")
        'axolotl_lora.yaml'
    """
    if fmt == "peft":
        return "adapter_config.json"
    name: str = _module(fmt).FILENAME
    return name


def render(rec: Recommendation, fmt: str, report: Optional[Report] = None) -> str:
    """The text :func:`save` writes for ``fmt``.

    Example:
        >>> import lora_rank
        >>> rec = lora_rank.analyze(lora_rank.demo_checkpoint()).recommend("attention-qv")
        >>> render(rec, "peft").startswith('{')
        True
    """
    if fmt == "peft":
        return json.dumps(rec.adapter_config(), indent=2) + "\n"
    text: str = _module(fmt).render(rec, report)
    return text


def save(
    rec: Recommendation,
    directory: Union[str, os.PathLike[str]],
    fmt: str = "peft",
    report: Optional[Report] = None,
) -> Path:
    """Write ``rec`` in format ``fmt`` into ``directory`` (created if missing) atomically as
    :func:`filename`; returns the path. Nothing is written when the format refuses.

    Example:
        >>> import lora_rank, tempfile
        >>> rec = lora_rank.analyze(lora_rank.demo_checkpoint()).recommend("attention-qv")
        >>> save(rec, tempfile.mkdtemp(), "trl").name
        'trl_model_config.yaml'
    """
    from ..atomic import write_atomic

    text = render(rec, fmt, report)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    path = out / filename(fmt)
    write_atomic(path, text)
    return path
