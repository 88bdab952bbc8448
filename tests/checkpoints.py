"""Tiny random-init checkpoints of real architectures, saved sharded with transformers.

Each entry names a transformers config class, its (tiny) keyword arguments and the model class
whose ``save_pretrained`` writes the checkpoint. Built once per test session by ``conftest``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Small dimensions shared by decoder-only families.
_DECODER = dict(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)

# The same sizes for families without grouped-query attention (encoders, GPT-NeoX).
_ENCODER = dict(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=64,
)


@dataclass(frozen=True)
class Arch:
    """One test architecture: transformers config class, its arguments, and the model class."""

    name: str
    config_class: str
    model_class: str
    kwargs: dict[str, Any] = field(default_factory=dict)


ARCHS: dict[str, Arch] = {
    a.name: a
    for a in [
        Arch("llama", "LlamaConfig", "LlamaForCausalLM", dict(_DECODER)),
        Arch("mistral", "MistralConfig", "MistralForCausalLM", dict(_DECODER)),
        Arch("qwen2", "Qwen2Config", "Qwen2ForCausalLM", dict(_DECODER)),
        Arch("qwen3", "Qwen3Config", "Qwen3ForCausalLM", dict(_DECODER, head_dim=8)),
        Arch("gemma", "GemmaConfig", "GemmaForCausalLM", dict(_DECODER, head_dim=8)),
        Arch("phi3", "Phi3Config", "Phi3ForCausalLM", dict(_DECODER, pad_token_id=0)),
        Arch(
            "gpt2",
            "GPT2Config",
            "GPT2LMHeadModel",
            dict(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=64),
        ),
        Arch(
            "gpt_neox",
            "GPTNeoXConfig",
            "GPTNeoXForCausalLM",
            dict(_ENCODER),
        ),
        Arch(
            "falcon",
            "FalconConfig",
            "FalconForCausalLM",
            dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4),
        ),
        Arch(
            "bert",
            "BertConfig",
            "BertForSequenceClassification",
            dict(_ENCODER),
        ),
        Arch(
            "roberta",
            "RobertaConfig",
            "RobertaForMaskedLM",
            dict(_ENCODER),
        ),
        Arch(
            "t5",
            "T5Config",
            "T5ForConditionalGeneration",
            dict(vocab_size=96, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4),
        ),
        Arch(
            "bart",
            "BartConfig",
            "BartForConditionalGeneration",
            dict(
                vocab_size=96,
                d_model=32,
                encoder_layers=2,
                decoder_layers=2,
                encoder_attention_heads=4,
                decoder_attention_heads=4,
                encoder_ffn_dim=48,
                decoder_ffn_dim=48,
                max_position_embeddings=64,
            ),
        ),
        Arch(
            "mixtral",
            "MixtralConfig",
            "MixtralForCausalLM",
            dict(_DECODER, num_local_experts=4, num_experts_per_tok=2),
        ),
        Arch(
            "qwen2_moe",
            "Qwen2MoeConfig",
            "Qwen2MoeForCausalLM",
            dict(
                _DECODER,
                num_experts=4,
                num_experts_per_tok=2,
                moe_intermediate_size=16,
                shared_expert_intermediate_size=24,
            ),
        ),
    ]
}


def build_model(arch: Arch, seed: int = 0) -> Any:
    """Instantiate the random-init model of ``arch`` (imports torch and transformers)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = getattr(transformers, arch.config_class)(**arch.kwargs)
    return getattr(transformers, arch.model_class)(config)


def save_checkpoint(arch: Arch, out: Path, max_shard_size: str = "20KB") -> Path:
    """Save ``arch`` sharded into ``out`` and return ``out``."""
    model = build_model(arch)
    model.save_pretrained(out, max_shard_size=max_shard_size, safe_serialization=True)
    return out


def load_model(path: Path) -> Any:
    """Load a saved fixture back with its own architecture class."""
    import transformers

    cfg = json.loads((path / "config.json").read_text())
    cls = getattr(transformers, cfg["architectures"][0])
    return cls.from_pretrained(path)
