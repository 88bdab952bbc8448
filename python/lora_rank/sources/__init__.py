"""Where checkpoint bytes come from. ``local`` opens a directory, index, single file or
Hugging Face cache entry on this machine (the Rust engine finds the shards and validates every
header); a remote source (``hub``, HTTP range requests) will sit beside it. Each source returns
the same :class:`~lora_rank.sources.checkpoint.Checkpoint` (shard paths, tensors with their
shard index, parsed config). May import: ``_core``, ``errors``, ``report`` (for ``Tensor``);
nothing that interprets names (that is ``inventory``).
"""
