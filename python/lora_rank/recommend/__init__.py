"""Which modules to adapt and at which ranks. ``presets`` (kind groups, presets, task weights,
candidate selection), ``scoring`` (scores from spectra), ``allocation`` (ranks under a budget),
``budget`` (budget parsing), ``weights`` (the rules of the weighted strategies: spectral,
kind-prior, depth, alpha, pooler) and ``strategies`` (what ``auto`` is, :func:`~lora_rank.recommend.strategies.recommend`
and :func:`~lora_rank.recommend.strategies.rank_targets`), which hand their plan to
:func:`lora_rank.peft.config.build`). May import: ``errors``, ``report``, ``inventory.kinds``,
``spectral`` (settings; ``compute`` lazily), ``peft``; never ``render`` or ``cli``.
"""
