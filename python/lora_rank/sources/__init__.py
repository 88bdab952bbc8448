"""Where checkpoint bytes come from. ``local`` opens a directory, index, single file or
Hugging Face cache entry on this machine (the Rust engine finds the shards and validates every
header); ``hub`` resolves hub repo ids, ``hf://`` paths and URLs (the local Hugging Face cache
first, else headers by HTTP range requests, validated by the same Rust parser). Each source returns
the same :class:`~lora_rank.sources.checkpoint.Checkpoint` (shard paths, tensors with their
shard index, parsed config). May import: ``_core``, ``errors``, ``report`` (for ``Tensor``);
nothing that interprets names (that is ``inventory``).
"""
