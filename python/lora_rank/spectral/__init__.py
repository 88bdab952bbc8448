"""Spectral statistics of the weight matrices, streamed by the Rust engine. ``settings`` holds
the one frozen :class:`~lora_rank.spectral.settings.SpectralSettings` (the only defaults);
``jobs`` decides which tensors and slices are scanned; ``compute`` runs ``_core.spectra`` and
fills :class:`~lora_rank.report.Spectrum` results into the report; ``progress`` reports on
long scans. May import: ``_core``, ``errors``, ``report``; never ``recommend``, ``peft`` or
``render``. A new statistic: computed in ``rust/lora_rank_core/src/spectral/stats.rs``, one
key in the binding's result dict and one field in ``Spectrum`` (a contract test checks both).
"""
