"""PEFT's side, replayed without torch: ``rules`` (how PEFT matches ``target_modules``,
``target_parameters``, ``rank_pattern`` and converts MoE configs), ``patterns`` (compact
suffix lists and regexes exact for a set of names), ``config`` (emission: the fewest
``LoraConfig`` fields for a plan, checked by replaying them through ``rules``) and
``recommendation`` (the :class:`~lora_rank.peft.recommendation.Recommendation` result type).
The generate-then-replay loop stays in this package. May import: ``errors``, ``report``,
``inventory.kinds`` and ``inventory.rules``, ``atomic``; ``render`` only lazily for notebook
display. ``peft`` itself only inside ``Recommendation.to_peft``.
"""
