"""From stored tensors to runtime modules, header-only. ``rules`` is the one reader of the
shipped transformers/PEFT rules data; ``naming`` replays transformers' key renaming and expert
fusion; ``kinds`` classifies modules (attention q/k/v/o, MLP, experts, router, ...) and holds
:data:`~lora_rank.inventory.kinds.KINDS`; ``modules`` groups tensors into
:class:`~lora_rank.report.Module` s and marks what PEFT's ``all-linear`` wraps;
``transformers`` does the same exactly from a meta-device model; ``architectures`` reads the
generated per-class tables (runtime names, module classes, all-linear membership) and
``quantization`` turns packed quantized weights into logical ones. May import: ``errors``,
``report`` and each other (``rules`` ← ``naming`` ← ``modules``); never ``spectral``,
``recommend``, ``peft`` or ``render``. torch/transformers only inside ``transformers``.
"""
