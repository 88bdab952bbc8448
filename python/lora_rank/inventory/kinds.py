"""Module kinds: which role a weight plays (attention q/k/v/o, MLP projections, MoE experts,
router, embedding, head, norm, ...), decided from runtime names by rules kept as data.

Rules are ``(regex, kind)`` pairs tried in order against the runtime module name; the first
match wins. They cover the naming schemes of the Llama, Mistral, Qwen, Gemma, Phi, GPT-2,
GPT-J, GPT-NeoX, Falcon, BERT/RoBERTa, T5, BART, Mixtral and Qwen-MoE families. Names no rule
covers fall back on shape: a 2-D weight is ``other_linear``, anything else ``other``.
"""

from __future__ import annotations

import functools
import re
from typing import Optional

from .. import _core

#: Every module kind, in display order.
KINDS: tuple[str, ...] = (
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_o",
    "attn_qkv",
    "mlp_gate",
    "mlp_up",
    "mlp_down",
    "mlp_gate_up",
    "moe_expert_gate",
    "moe_expert_up",
    "moe_expert_gate_up",
    "moe_expert_down",
    "moe_shared_expert_gate",
    "moe_router",
    "embedding",
    "lm_head",
    "classifier",
    "norm",
    "other_linear",
    "other",
)


# Name pieces used by several rules.
_ATTN = r"(?:(?:attention\.)?self|self_attn|self_attention|attention|attn|SelfAttention|EncDecAttention|encoder_attn|cross_attn|crossattention|mixer)"
_MLP = r"(?:mlp|feed_forward|ffn|DenseReluDense|shared_expert|shared_experts)"

#: Ordered ``(regex on the runtime name, kind)`` rules. ``{A}``/``{M}`` stand for attention and
#: MLP container names.
KIND_RULES: tuple[tuple[str, str], ...] = (
    # MoE experts (fused 3-D parameters, or per-expert modules when not fused)
    (r"\.experts\.gate_up_proj$", "moe_expert_gate_up"),
    (r"\.experts\.(?:down_proj|w2)$", "moe_expert_down"),
    (r"\.experts\.(?:up_proj|w3)$", "moe_expert_up"),
    (r"\.experts\.(?:gate_proj|w1)$", "moe_expert_gate"),
    (r"\.experts\.\d+\.(?:gate_proj|w1)$", "moe_expert_gate"),
    (r"\.experts\.\d+\.(?:up_proj|w3)$", "moe_expert_up"),
    (r"\.experts\.\d+\.(?:down_proj|w2)$", "moe_expert_down"),
    (r"\.experts\.\d+\.gate_up_proj$", "moe_expert_gate_up"),
    (r"\.shared_expert_gate$", "moe_shared_expert_gate"),
    (r"\.(?:block_sparse_moe|mlp|moe|feed_forward)\.(?:gate|router)$", "moe_router"),
    (r"\.router(?:\.layer|\.classifier)?$", "moe_router"),
    # attention
    (r"\.{A}\.(?:q_proj|q|query|q_lin|wq|query_proj)$", "attn_q"),
    (r"\.{A}\.(?:k_proj|k|key|k_lin|wk|key_proj)$", "attn_k"),
    (r"\.{A}\.(?:v_proj|v|value|v_lin|wv|value_proj)$", "attn_v"),
    (r"\.{A}\.(?:qkv_proj|query_key_value|c_attn|Wqkv|qkv|W_pack|in_proj)$", "attn_qkv"),
    (r"\.{A}\.(?:o_proj|o|out_proj|wo|out_lin|dense|c_proj|output\.dense|o_lin)$", "attn_o"),
    # MLP
    (r"\.{M}\.(?:gate_up_proj)$", "mlp_gate_up"),
    (r"\.{M}\.(?:gate_proj|w1|wi_0|fc_gate)$", "mlp_gate"),
    (r"\.{M}\.(?:up_proj|w3|wi_1|wi|c_fc|fc1|fc_in|dense_h_to_4h|lin1)$", "mlp_up"),
    (r"\.{M}\.(?:down_proj|w2|wo|c_proj|fc2|fc_out|dense_4h_to_h|lin2)$", "mlp_down"),
    (r"(?:^|\.)(?:fc1|intermediate\.dense)$", "mlp_up"),
    # known linear layers of no LoRA-specific role (pooler, LM-head transforms)
    (
        r"(?:^|\.)(?:pooler\.dense|lm_head\.dense|transform\.dense|predictions\.transform\.dense)$",
        "other_linear",
    ),
    (r"(?:^|\.)(?:fc2|output\.dense)$", "mlp_down"),
    # embeddings, heads, norms
    (
        r"(?:^|\.)(?:embed_tokens|embed_positions|embed_in|wte|wpe|shared|word_embeddings|"
        r"position_embeddings|token_type_embeddings|relative_attention_bias|embeddings|"
        r"embed|tok_embeddings|word_embeddings_layernorm_skip)$",
        "embedding",
    ),
    (
        r"^(?:lm_head|embed_out|output|proj_out|cls\.predictions\.decoder|lm_head\.decoder)$",
        "lm_head",
    ),
    (
        r"(?:^|\.)(?:classifier|score|qa_outputs|pre_classifier|classification_head|"
        r"seq_relationship|classifier\.dense|classifier\.out_proj|"
        r"classification_head\.dense|classification_head\.out_proj)$",
        "classifier",
    ),
    (r"(?:norm|ln_\w+|ln_f|LayerNorm|layernorm\w*|layer_norm|ln|rms_norm)$", "norm"),
)

_COMPILED: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(rx.replace("{A}", _ATTN).replace("{M}", _MLP)), kind) for rx, kind in KIND_RULES
)

#: Container names that hold numbered layers.
_LAYER = re.compile(
    r"(?:^|\.)(?:layers|layer|h|block|blocks|decoder_layers|encoder_layers)\.(\d+)(?:\.|$)"
)

#: Model types whose linear layers are transformers' ``Conv1D`` (weight stored ``[in, out]``).
CONV1D_MODEL_TYPES = frozenset({"gpt2", "openai-gpt", "decision_transformer", "imagegpt"})

#: Kinds that are never nn.Linear at run time.
NON_LINEAR_KINDS = frozenset({"embedding", "norm", "other"})


def match_rule(name: str) -> Optional[str]:
    """Kind given by the first rule matching ``name``, or None when no rule covers it.

    Example:
        >>> match_rule("bert.pooler.dense"), match_rule("model.frobnicator")
        ('other_linear', None)
    """
    # Layer and expert numbers do not change a module's kind: each pattern is matched once.
    return _match_normalized(_core.name_patterns([name], "0")[0][0])


@functools.lru_cache(maxsize=4096)
def _match_normalized(name: str) -> Optional[str]:
    for rx, kind in _COMPILED:
        if rx.search(name):
            return kind
    return None


def classify(name: str, ndim: int) -> str:
    """Kind of the module called ``name`` (runtime name) whose weight has ``ndim`` dims.

    Example:
        >>> classify("model.layers.0.self_attn.q_proj", 2)
        'attn_q'
        >>> classify("transformer.h.3.mlp.c_proj", 2)
        'mlp_down'
        >>> classify("model.layers.0.input_layernorm", 1)
        'norm'
    """
    kind = match_rule(name)
    if ndim == 1:
        return "norm" if kind == "norm" or re.search("norm", name, re.IGNORECASE) else "other"
    if kind is None or kind == "norm":
        return "other_linear" if ndim == 2 else "other"
    if ndim == 2 or (ndim == 3 and kind.startswith("moe_expert")):
        return kind
    return "other"


def layer_index(name: str) -> Optional[int]:
    """Index of the numbered layer ``name`` sits in, or None.

    Example:
        >>> layer_index("model.layers.12.mlp.up_proj"), layer_index("lm_head")
        (12, None)
    """
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None
