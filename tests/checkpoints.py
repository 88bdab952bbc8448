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


# Every size field a config might read, for families tried without hand-tuned sizes (unknown
# fields become plain config attributes, harmless).
_TINY = dict(_DECODER, head_dim=8, pad_token_id=0)
_VISION = dict(
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=32,
    patch_size=8,
)
_SEQ2SEQ = dict(
    d_model=32,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=48,
    decoder_ffn_dim=48,
)
_T5 = dict(vocab_size=96, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4)
_SPEECH = dict(
    conv_dim=[16, 16],
    conv_stride=[5, 2],
    conv_kernel=[10, 3],
    num_conv_pos_embeddings=8,
    num_conv_pos_embedding_groups=4,
)
# DeepSeek-style MoE: one dense layer first, shared experts, grouped routing.
_DEEPSEEK = dict(
    n_routed_experts=4,
    num_experts_per_tok=2,
    moe_intermediate_size=16,
    first_k_dense_replace=1,
    n_group=1,
    topk_group=1,
)
_MLA = dict(q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8)


def _tiny(config_class: str, model_class: str, name: str, **kwargs: Any) -> Arch:
    """An architecture of the wider set (tests/test_architectures.py): tiny sizes + ``kwargs``."""
    base = {} if "text_config" in kwargs else _TINY
    return Arch(name, config_class, model_class, {**base, **kwargs})


#: The wider set checked against PEFT by tests/test_architectures.py (every family the
#: architecture tables must get exactly right: vision, audio, encoder-decoder, multimodal, MoE
#: with dense first layers and shared experts, tied embeddings, classification heads).
WIDE_ARCHS: dict[str, Arch] = {
    a.name: a
    for a in [
        _tiny("Gemma2Config", "Gemma2ForCausalLM", "gemma2"),
        _tiny("Gemma3TextConfig", "Gemma3ForCausalLM", "gemma3_text"),
        _tiny(
            "Qwen3MoeConfig",
            "Qwen3MoeForCausalLM",
            "qwen3_moe",
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=16,
        ),
        _tiny("DeepseekV3Config", "DeepseekV3ForCausalLM", "deepseek_v3", **_DEEPSEEK, **_MLA),
        _tiny("DeepseekV2Config", "DeepseekV2ForCausalLM", "deepseek_v2", **_DEEPSEEK, **_MLA),
        _tiny("Glm4MoeConfig", "Glm4MoeForCausalLM", "glm4_moe", **_DEEPSEEK),
        _tiny("OlmoeConfig", "OlmoeForCausalLM", "olmoe", num_experts=4, num_experts_per_tok=2),
        _tiny(
            "GraniteMoeConfig",
            "GraniteMoeForCausalLM",
            "granitemoe",
            num_local_experts=4,
            num_experts_per_tok=2,
        ),
        _tiny(
            "PhimoeConfig",
            "PhimoeForCausalLM",
            "phimoe",
            num_local_experts=4,
            num_experts_per_tok=2,
        ),
        _tiny(
            "JambaConfig",
            "JambaForCausalLM",
            "jamba",
            num_experts=4,
            num_experts_per_tok=2,
            attn_layer_period=2,
            attn_layer_offset=1,
            expert_layer_period=2,
            expert_layer_offset=1,
            mamba_d_state=4,
            mamba_dt_rank=4,
        ),
        _tiny("LlamaConfig", "LlamaForSequenceClassification", "llama_seqcls"),
        _tiny("LlamaConfig", "LlamaForTokenClassification", "llama_tokcls"),
        _tiny("LlamaConfig", "LlamaForCausalLM", "llama_tied", tie_word_embeddings=True),
        _tiny("Qwen2Config", "Qwen2ForSequenceClassification", "qwen2_seqcls"),
        _tiny("OPTConfig", "OPTForCausalLM", "opt", ffn_dim=48, word_embed_proj_dim=32),
        _tiny("BloomConfig", "BloomForCausalLM", "bloom", n_layer=2, n_head=4),
        _tiny(
            "GPTJConfig", "GPTJForCausalLM", "gptj", n_embd=32, n_layer=2, n_head=4, rotary_dim=4
        ),
        _tiny("GPTBigCodeConfig", "GPTBigCodeForCausalLM", "gpt_bigcode", n_embd=32, n_layer=2),
        _tiny("CodeGenConfig", "CodeGenForCausalLM", "codegen", n_embd=32, n_layer=2, rotary_dim=4),
        _tiny("MptConfig", "MptForCausalLM", "mpt", d_model=32, n_heads=4, n_layers=2),
        _tiny("StableLmConfig", "StableLmForCausalLM", "stablelm"),
        _tiny("Starcoder2Config", "Starcoder2ForCausalLM", "starcoder2"),
        _tiny("CohereConfig", "CohereForCausalLM", "cohere"),
        _tiny("Olmo2Config", "Olmo2ForCausalLM", "olmo2"),
        _tiny("PhiConfig", "PhiForCausalLM", "phi"),
        _tiny("GraniteConfig", "GraniteForCausalLM", "granite"),
        _tiny(
            "DebertaV2Config",
            "DebertaV2ForSequenceClassification",
            "deberta_v2",
            relative_attention=True,
            position_buckets=8,
            pos_att_type=["p2c", "c2p"],
        ),
        _tiny("DebertaConfig", "DebertaForMaskedLM", "deberta"),
        _tiny(
            "DistilBertConfig",
            "DistilBertForSequenceClassification",
            "distilbert",
            dim=32,
            hidden_dim=48,
            n_layers=2,
            n_heads=4,
        ),
        _tiny("ElectraConfig", "ElectraForTokenClassification", "electra", embedding_size=16),
        _tiny("AlbertConfig", "AlbertForMaskedLM", "albert", embedding_size=16),
        _tiny("XLMRobertaConfig", "XLMRobertaForQuestionAnswering", "xlm_roberta"),
        _tiny("MPNetConfig", "MPNetForMaskedLM", "mpnet"),
        _tiny(
            "ModernBertConfig",
            "ModernBertForMaskedLM",
            "modernbert",
            global_attn_every_n_layers=2,
            local_attention=16,
        ),
        _tiny("EsmConfig", "EsmForMaskedLM", "esm"),
        _tiny("RoFormerConfig", "RoFormerForMaskedLM", "roformer"),
        _tiny("BertConfig", "BertForMultipleChoice", "bert_mc"),
        _tiny("MT5Config", "MT5ForConditionalGeneration", "mt5", **_T5),
        _tiny("UMT5Config", "UMT5ForConditionalGeneration", "umt5", **_T5),
        _tiny("T5Config", "T5EncoderModel", "t5_encoder", **_T5),
        _tiny(
            "SwitchTransformersConfig",
            "SwitchTransformersForConditionalGeneration",
            "switch_transformers",
            **_T5,
            num_sparse_encoder_layers=1,
            num_decoder_layers=2,
            num_sparse_decoder_layers=1,
            num_experts=4,
        ),
        _tiny("MBartConfig", "MBartForConditionalGeneration", "mbart", **_SEQ2SEQ),
        _tiny("PegasusConfig", "PegasusForConditionalGeneration", "pegasus", **_SEQ2SEQ),
        _tiny(
            "MarianConfig",
            "MarianMTModel",
            "marian",
            **_SEQ2SEQ,
            decoder_vocab_size=96,
            decoder_start_token_id=0,
        ),
        _tiny(
            "WhisperConfig",
            "WhisperForConditionalGeneration",
            "whisper",
            **_SEQ2SEQ,
            num_mel_bins=16,
            max_source_positions=32,
            max_target_positions=32,
        ),
        _tiny("ViTConfig", "ViTForImageClassification", "vit", **_VISION),
        _tiny("ViTConfig", "ViTModel", "vit_model", **_VISION),
        _tiny("DeiTConfig", "DeiTForImageClassification", "deit", **_VISION),
        _tiny("Dinov2Config", "Dinov2ForImageClassification", "dinov2", **_VISION),
        _tiny("BeitConfig", "BeitForImageClassification", "beit", **_VISION),
        _tiny("CLIPVisionConfig", "CLIPVisionModel", "clip_vision", **_VISION),
        _tiny(
            "CLIPConfig",
            "CLIPModel",
            "clip",
            text_config=dict(_TINY),
            vision_config=dict(_VISION),
            projection_dim=16,
        ),
        _tiny(
            "SiglipConfig",
            "SiglipModel",
            "siglip",
            text_config=dict(_TINY),
            vision_config=dict(_VISION),
        ),
        _tiny("Wav2Vec2Config", "Wav2Vec2ForCTC", "wav2vec2_ctc", **_SPEECH),
        _tiny(
            "Wav2Vec2Config",
            "Wav2Vec2ForSequenceClassification",
            "wav2vec2_seqcls",
            **_SPEECH,
            classifier_proj_size=16,
        ),
        _tiny("HubertConfig", "HubertForCTC", "hubert_ctc", **_SPEECH),
        _tiny("WavLMConfig", "WavLMForCTC", "wavlm_ctc", **_SPEECH, num_buckets=16),
        _tiny(
            "ASTConfig",
            "ASTForAudioClassification",
            "ast",
            **_VISION,
            num_mel_bins=16,
            max_length=32,
        ),
        _tiny(
            "Gemma3Config",
            "Gemma3ForConditionalGeneration",
            "gemma3",
            text_config=dict(_TINY),
            vision_config=dict(_VISION),
            mm_tokens_per_image=4,
        ),
        _tiny(
            "LlavaConfig",
            "LlavaForConditionalGeneration",
            "llava",
            text_config=dict(_TINY, model_type="llama"),
            vision_config=dict(_VISION, model_type="clip_vision_model"),
        ),
        _tiny(
            "PaliGemmaConfig",
            "PaliGemmaForConditionalGeneration",
            "paligemma",
            text_config=dict(_TINY, model_type="gemma"),
            vision_config=dict(_VISION, model_type="siglip_vision_model"),
        ),
        _tiny(
            "Qwen2VLConfig",
            "Qwen2VLForConditionalGeneration",
            "qwen2_vl",
            text_config=dict(
                _TINY, rope_parameters=dict(rope_type="default", mrope_section=[1, 1, 2])
            ),
            vision_config=dict(
                depth=2,
                embed_dim=32,
                hidden_size=32,
                num_heads=4,
                mlp_ratio=2,
                patch_size=4,
                spatial_merge_size=2,
            ),
        ),
        _tiny(
            "Llama4Config",
            "Llama4ForConditionalGeneration",
            "llama4",
            text_config=dict(
                _TINY,
                num_local_experts=4,
                num_experts_per_tok=1,
                intermediate_size_mlp=48,
                interleave_moe_layer_step=2,
            ),
            vision_config=dict(
                _VISION,
                vision_output_dim=32,
                projector_input_dim=32,
                projector_output_dim=32,
            ),
        ),
        _tiny(
            "MllamaConfig",
            "MllamaForConditionalGeneration",
            "mllama",
            text_config=dict(_TINY, cross_attention_layers=[1]),
            vision_config=dict(
                _VISION, num_global_layers=1, vision_output_dim=64, intermediate_layers_indices=[0]
            ),
        ),
    ]
}

#: Checkpoints of other tests, outside the architecture-table checks: ConvNeXt (a vision
#: model whose only Linear layers are its blocks' pwconv1/pwconv2, of no attention or MLP kind).
OTHER_ARCHS: dict[str, Arch] = {
    a.name: a
    for a in [
        Arch(
            "convnext",
            "ConvNextConfig",
            "ConvNextForImageClassification",
            dict(
                num_channels=3,
                patch_size=4,
                num_stages=2,
                hidden_sizes=[16, 32],
                depths=[2, 2],
                num_labels=5,
                image_size=32,
            ),
        ),
    ]
}

#: Every test architecture by name (what the ``checkpoint`` fixture builds).
ALL_ARCHS: dict[str, Arch] = {**ARCHS, **WIDE_ARCHS, **OTHER_ARCHS}


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
