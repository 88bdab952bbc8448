"""Where checkpoint bytes come from: local files (``_core.open_checkpoint``) or a remote hub
repo / URL read by HTTP range requests (:mod:`lora_rank.sources.hub`)."""
