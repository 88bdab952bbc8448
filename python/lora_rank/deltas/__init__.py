"""Updates whose spectrum is the answer: PEFT LoRA adapters (:mod:`.adapter`), base-vs-fine-tune
deltas (:mod:`.compare`), and adapters extracted from a fine-tune or resized under a budget
(:mod:`.allocation`, :mod:`.extract`).

Example:
    >>> import lora_rank, tempfile
    >>> from lora_rank.deltas.adapter import example_adapter
    >>> lora_rank.analyze(example_adapter(tempfile.mkdtemp())).adapted[0].r
    4
"""

from .adapter import AdaptedModule, AdapterReport, analyze_adapter
from .compare import Comparison, ModuleDelta, TensorChange, compare

__all__ = [
    "AdaptedModule",
    "AdapterReport",
    "Comparison",
    "ModuleDelta",
    "TensorChange",
    "analyze_adapter",
    "compare",
]
