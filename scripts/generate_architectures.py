"""Generate ``python/lora_rank/_data/architectures/`` from the installed transformers and PEFT.

For every model class in transformers' auto mappings (base models and every head), the class
is built on the meta device from its config class's defaults and PEFT's
``target_modules="all-linear"`` is applied to it. Per runtime parameter, with layer and expert
indices abstracted to ``#``, the table records the owning module's class and category, whether
PEFT wraps the owner (``target_modules``) or the parameter (``target_parameters``), and which
of transformers' rename mappings (``transformers_rules.json``, written by
``scripts/generate_rules.py``) ``get_model_conversion_mapping`` applies to the class, with their
scope prefixes. Classes that cannot be built are listed with the reason.

Layer stacks are shrunk before PEFT runs (PEFT on a 61-layer DeepSeek-V3 takes minutes): every
``num_*layers``-like config field is cut to the smallest depth at which every distinct layer
structure of the full-depth model is still present (dense-then-MoE stacks keep their dense
layers), and the shrunk model must give exactly the full model's parameter patterns, or the
full model is used.

One JSON file per model type (``<model_type>.json``, loaded lazily by
``lora_rank.inventory.architectures``) plus ``_index.json`` (class → file, versions, failures).

Usage::

    python scripts/generate_architectures.py                 # rewrite the shipped tables
    python scripts/generate_architectures.py --check         # diff against the shipped tables
    python scripts/generate_architectures.py --check --classes ViTForImageClassification,...
    python scripts/generate_architectures.py --sample 40     # --check on 40 classes (seeded)
    python scripts/generate_architectures.py --merge --classes A,B --variants A,B
                                    # regenerate A and B into the shipped tables, searching
                                    # their config flags for optional modules (kept from then on)

Config-flag search (``--variants``; the classes are listed in ``_index.json``
``variant_search`` and every later run repeats it): each top-level boolean of the config is
flipped on its own and the parameter patterns it adds are recorded with PEFT's answer on that
model (DeBERTa's ``relative_attention`` adds ``rel_embeddings``). It is run for the test
architectures and their model types' base classes; the full search on every class would take
hours here.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import random
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Optional

OUT = Path(__file__).resolve().parent.parent / "python/lora_rank/_data/architectures"
RULES = OUT.parent / "transformers_rules.json"

#: Seconds one class may take (build, shrink, PEFT) before it is recorded as failed.
TIMEOUT = 240.0

_INDEX = re.compile(r"\.\d+(?=\.|$)")

#: Config fields holding a layer count (shrunk); lists of that length beside them are cut too.
_LAYER_FIELD = re.compile(
    r"^(?:num_hidden_layers|num_layers|n_layers?|encoder_layers|decoder_layers|"
    r"num_encoder_layers|num_decoder_layers|depth|text_layers|vision_layers|"
    r"num_(?:text|vision|audio|encoder|decoder)_layers)$"
)

#: Size fields some config classes leave None by default.
_UNSET_SIZES = ("vocab_size",)

#: Category codes (the table's vocabulary; lora_rank.inventory.architectures reads them).
CATEGORIES = ("linear", "conv1d", "embedding", "norm", "fused_expert", "buffer", "other")


def pattern(name: str) -> str:
    """``model.layers.3.mlp.experts.7.w1.weight`` → ``model.layers.#.mlp.experts.#.w1.weight``."""
    return _INDEX.sub(".#", name)


def _auto_classes() -> dict[str, str]:
    """Every model class of the auto mappings → the first model type that maps to it."""
    from transformers.models.auto import modeling_auto

    classes: dict[str, str] = {}
    for attr in sorted(dir(modeling_auto)):
        if not (attr.startswith("MODEL_") and attr.endswith("_MAPPING_NAMES")):
            continue
        for model_type, names in getattr(modeling_auto, attr).items():
            for cls in [names] if isinstance(names, str) else list(names):
                classes.setdefault(cls, model_type)
    return dict(sorted(classes.items()))


def _category(module: Any, param: Any, leaf: str, is_buffer: bool) -> str:
    import torch
    from transformers.pytorch_utils import Conv1D

    if is_buffer:
        return "buffer"
    if isinstance(module, torch.nn.Linear) and leaf in ("weight", "bias"):
        return "linear"
    if isinstance(module, Conv1D) and leaf in ("weight", "bias"):
        return "conv1d"
    if isinstance(module, torch.nn.Embedding) and leaf == "weight":
        return "embedding"
    norms = (
        torch.nn.LayerNorm,
        torch.nn.GroupNorm,
        torch.nn.RMSNorm,
        torch.nn.modules.batchnorm._NormBase,
    )
    if isinstance(module, norms) or "Norm" in type(module).__name__:
        return "norm"
    if param is not None and param.dim() == 3 and "Expert" in type(module).__name__:
        return "fused_expert"
    return "other"


def _parameters(model: Any) -> dict[str, tuple[str, str]]:
    """Runtime name → (category, owner class) of every parameter and persistent buffer."""
    modules = dict(model.named_modules(remove_duplicate=False))
    out: dict[str, tuple[str, str]] = {}
    state = set(model.state_dict().keys())
    for mod_name, mod in modules.items():
        prefix = f"{mod_name}." if mod_name else ""
        for leaf, p in mod.named_parameters(recurse=False):
            out[prefix + leaf] = (_category(mod, p, leaf, False), type(mod).__name__)
        for leaf, b in mod.named_buffers(recurse=False):
            if prefix + leaf in state:
                out[prefix + leaf] = (_category(mod, b, leaf, True), type(mod).__name__)
    return out


def _layer_signatures(params: dict[str, tuple[str, str]]) -> dict[str, int]:
    """Per layer stack (name up to its first index): the depth that holds every distinct layer."""
    sigs: dict[tuple[str, int], set[tuple[str, str, str]]] = {}
    for name, (cat, cls) in params.items():
        m = _INDEX.search(name)
        if m is None:
            continue
        stack, idx = name[: m.start()], int(m.group(0)[1:])
        rest = pattern(name[m.end() :])
        sigs.setdefault((stack, idx), set()).add((rest, cat, cls))
    need: dict[str, int] = {}
    seen: dict[str, list[frozenset[tuple[str, str, str]]]] = {}
    for (stack, idx), sig in sorted(sigs.items()):
        frozen = frozenset(sig)
        if frozen not in seen.setdefault(stack, []):
            seen[stack].append(frozen)
            need[stack] = max(need.get(stack, 1), idx + 1)
    return need


def _shrink(doc: dict[str, Any], depth: int) -> bool:
    """Cut layer-count fields of a config dict (recursively) to ``depth``; True if any changed."""
    changed = False
    for key, value in list(doc.items()):
        if isinstance(value, dict):
            changed |= _shrink(value, depth)
        elif (
            isinstance(key, str)
            and _LAYER_FIELD.match(key)
            and isinstance(value, int)
            and not isinstance(value, bool)
            and value > depth
        ):
            for other, lst in list(doc.items()):
                if isinstance(lst, list) and len(lst) == value:
                    doc[other] = lst[:depth]
            doc[key] = depth
            changed = True
    return changed


def _build(cls: Any, config: Any) -> Any:
    import torch

    with torch.device("meta"):
        return cls(config)


def _conversions(model: Any, rules: dict[str, Any]) -> list[list[Any]]:
    """``get_model_conversion_mapping(model)`` as ``[identifier, scope_prefix]`` entries of the
    shipped rules, checked transform by transform against transformers' own result."""
    from transformers.conversion_mapping import (
        get_checkpoint_conversion_mapping,
        get_model_conversion_mapping,
    )
    from transformers.modeling_utils import PreTrainedModel

    entries: list[list[Any]] = []
    seen: dict[str, list[str]] = {}

    def claimed(ident: str, name: str) -> bool:
        return any(s == "" or name.startswith(s + ".") for s in seen.get(ident, []))

    for name, sub in model.named_modules():
        if not isinstance(sub, PreTrainedModel):
            continue
        cls_name, model_type = type(sub).__name__, sub.config.model_type
        if claimed(cls_name, name):
            continue
        ident: Optional[str] = cls_name
        found_via_class = get_checkpoint_conversion_mapping(cls_name) is not None
        if not found_via_class:
            if model_type and claimed(model_type, name):
                continue
            ident = model_type
            if ident is None or get_checkpoint_conversion_mapping(ident) is None:
                continue
        scope = None
        if name != "":
            scope = name.removeprefix(model.base_model_prefix).removeprefix(".")
        assert ident is not None
        entries.append([rules["model_types"][ident], scope])
        seen.setdefault(cls_name, []).append(name)
        if not found_via_class and model_type:
            seen.setdefault(model_type, []).append(name)
    # Check: the same transforms, in the same order, with the same scopes.
    got = [
        (w.compiled_sources.pattern, list(w.target_patterns), w.scope_prefix)
        for w in get_model_conversion_mapping(model, add_legacy=False)
    ]
    want = [
        (t["regex"], t["target_patterns"], scope)
        for ident, scope in entries
        for t in rules["mappings"][ident]
    ]
    if got != want:
        raise RuntimeError("conversion mapping differs from the shipped rules (regenerate them)")
    return entries


def _peft(model: Any) -> tuple[set[str], set[str], Optional[str]]:
    from lora_rank.inventory.transformers import peft_targets

    try:
        modules, params = peft_targets(model)
    except Exception as e:
        return set(), set(), f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return modules, params, None


def _records(model: Any) -> tuple[dict[str, list[Any]], set[str], Optional[str]]:
    """Per parameter pattern ``[category, owner class, flags]`` (flags: 1 = PEFT all-linear wraps
    the owner, 2 = it wraps the parameter), the patterns whose layers disagree, PEFT's error."""
    params = _parameters(model)
    modules, target_params, peft_error = _peft(model)
    records: dict[str, list[Any]] = {}
    mixed: set[str] = set()
    for name, (cat, owner_cls) in params.items():
        owner = name.rpartition(".")[0]
        flags = (1 if owner in modules else 0) | (2 if name in target_params else 0)
        rec = [cat, owner_cls, flags]
        key = pattern(name)
        if records.setdefault(key, rec) != rec:
            mixed.add(key)
    return records, mixed, peft_error


#: Config booleans every config has (none changes which modules a model has).
_GENERIC_FLAGS = frozenset(
    {
        "return_dict", "output_hidden_states", "output_attentions", "torchscript", "use_cache",
        "is_encoder_decoder", "is_decoder", "add_cross_attention", "tie_encoder_decoder",
        "chunk_size_feed_forward", "problem_type", "_attn_implementation_autoset",
        "output_router_logits", "gradient_checkpointing", "use_return_dict",
    }
)  # fmt: skip


#: Integer config fields that decide which layers are dense or MoE, and a value to try when
#: the default is 0 or 1 (a dense first layer, every other layer MoE).
_LAYOUT_INT = re.compile(
    r"^(?:first_k_dense_replace|interleave_moe_layer_step|moe_layer_freq|decoder_sparse_step|"
    r"moe_every_k_layers|sparse_step|expert_layer_period)$"
)


def _flips(doc: dict[str, Any]) -> list[tuple[list[str], dict[str, Any]]]:
    """Config dicts with one flag changed: each boolean (top level and one sub-config deep)
    flipped, each layout integer of ``_LAYOUT_INT`` moved off 0/1."""
    out: list[tuple[list[str], dict[str, Any]]] = []
    scopes: list[tuple[str, dict[str, Any]]] = [("", doc)]
    scopes += [(f"{k}.", v) for k, v in sorted(doc.items()) if isinstance(v, dict)]
    for prefix, scope in scopes:
        for key, value in sorted(scope.items()):
            if not isinstance(key, str) or key in _GENERIC_FLAGS or key.startswith("_"):
                continue
            if isinstance(value, bool):
                new: Any = not value
            elif isinstance(value, int) and _LAYOUT_INT.match(key) and value in (0, 1):
                new = value + 1
            else:
                continue
            changed = {**scope, key: new}
            out.append(([prefix + key], {**doc, prefix[:-1]: changed} if prefix else changed))
    return out


def _variants(
    cls: Any, config_cls: Any, doc: dict[str, Any], base: dict[str, list[Any]]
) -> list[tuple[list[str], dict[str, list[Any]], set[str]]]:
    """Modules that defaults leave out but a flag adds (DeBERTa's ``relative_attention``
    adds ``rel_embeddings``; ``attention_bias``, an untied ``lm_head``, DeepSeek-V2's dense
    first layers with ``first_k_dense_replace``): each flag of ``_flips`` is changed on its own
    (layer stacks at least 4 deep), and the patterns it adds are recorded from that model, with
    PEFT run on it, as ``(flags, records, mixed)``."""
    deep = json.loads(json.dumps(doc))
    _grow(deep, 4)
    found: list[tuple[list[str], dict[str, list[Any]], set[str]]] = []
    for flags, changed in _flips(deep):
        try:
            model = _build(cls, config_cls.from_dict(changed))
            added = {pattern(n) for n in _parameters(model)} - set(base)
            if not added:
                continue
            records, mixed, _ = _records(model)
        except Exception:
            continue
        found.append((flags, {k: records[k] for k in added if k in records}, mixed & added))
    return found


def _grow(doc: dict[str, Any], depth: int) -> None:
    """Raise layer-count fields below ``depth`` to it, dropping per-layer lists that no longer
    fit (the config derives them again)."""
    for key, value in list(doc.items()):
        if isinstance(value, dict):
            _grow(value, depth)
        elif (
            isinstance(key, str)
            and _LAYER_FIELD.match(key)
            and isinstance(value, int)
            and not isinstance(value, bool)
            and 0 < value < depth
        ):
            for other, lst in list(doc.items()):
                if isinstance(lst, list) and len(lst) == value and other.endswith("layer_types"):
                    del doc[other]
            doc[key] = depth


def describe(
    cls_name: str, model_type: str, rules: dict[str, Any], variants: bool = False
) -> dict[str, Any]:
    """The table entry of one class (raises when the class cannot be built); ``variants``: also
    search the config's flags for modules the defaults leave out (``_variants``)."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    cls = getattr(transformers, cls_name)
    # The class's own config decides its model type (a class can serve several auto entries).
    own = getattr(getattr(cls, "config_class", None), "model_type", None)
    model_type = own if own in CONFIG_MAPPING else model_type
    config_cls = CONFIG_MAPPING[model_type]
    # Defaults that leave a size unset (ESM's vocab_size=None) get a placeholder size: sizes
    # are abstracted anyway.
    overrides = {k: 1024 for k in _UNSET_SIZES if getattr(config_cls(), k, 0) is None}
    full_model = _build(cls, config_cls(**overrides))
    full = _parameters(full_model)
    need = _layer_signatures(full)
    depth = max(need.values(), default=1)
    model, shrunk = full_model, None
    doc = config_cls(**overrides).to_dict()
    if _shrink(doc, depth):
        try:
            small_model = _build(cls, config_cls.from_dict(doc))
            small = _parameters(small_model)
        except Exception:
            small = {}
        if {pattern(n): v for n, v in small.items()} == {pattern(n): v for n, v in full.items()}:
            model, shrunk = small_model, depth
    conversions = _conversions(model, rules)
    records, mixed, peft_error = _records(model)
    found = []
    if variants:
        doc_used = doc if shrunk else config_cls(**overrides).to_dict()
        found = _variants(cls, config_cls, doc_used, records)
    for _flips, extra, extra_mixed in found:
        for key, rec in extra.items():
            records.setdefault(key, rec)
        mixed |= extra_mixed
    # Output embedding: PEFT excludes it (tied or not); recorded for the reader's kind labels.
    out_emb = (
        full_model.get_output_embeddings() if hasattr(full_model, "get_output_embeddings") else None
    )
    out_name = None
    if out_emb is not None:
        out_name = next((n for n, m in model.named_modules() if m is out_emb), None)
        if out_name is None:
            out_name = next((n for n, m in full_model.named_modules() if m is out_emb), None)
    entry: dict[str, Any] = {
        "model_type": model_type,
        "config_class": config_cls.__name__,
        "base_model_prefix": getattr(model, "base_model_prefix", "") or "",
        "conversions": conversions,
        "depth": shrunk,
        "output_embedding": out_name,
        "params": [[k, *v] for k, v in sorted(records.items()) if k not in mixed],
    }
    if overrides:
        entry["config_overrides"] = overrides
    if variants:
        entry["variants"] = sorted({f for flips, _, _ in found for f in flips})
    if mixed:
        entry["mixed"] = sorted(mixed)
    if peft_error:
        entry["peft_error"] = peft_error
    return entry


def _worker(jobs: Any, results: Any) -> None:
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import transformers

    transformers.logging.set_verbosity_error()
    rules = json.loads(RULES.read_text())
    while True:
        job = jobs.get()
        if job is None:
            return
        cls_name, model_type, variants = job
        try:
            results.put((cls_name, describe(cls_name, model_type, rules, variants), None))
        except BaseException as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            if os.environ.get("GENERATE_DEBUG"):
                import traceback

                traceback.print_exc()
            results.put((cls_name, None, f"{type(e).__name__}: {msg}"[:240]))


def generate(
    classes: Optional[list[str]] = None, log: Any = None, variants: frozenset[str] = frozenset()
) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
    """``(entries by class, failures by class, versions)``; each class is built in a worker
    process that is restarted after a crash or a timeout."""
    import peft
    import transformers

    all_classes = _auto_classes()
    todo = [(c, all_classes[c], c in variants) for c in (classes or list(all_classes))]
    entries: dict[str, Any] = {}
    failures: dict[str, str] = {}
    ctx = mp.get_context("spawn")
    pending = list(todo)
    while pending:
        jobs, results = ctx.Queue(), ctx.Queue()
        proc = ctx.Process(target=_worker, args=(jobs, results), daemon=True)
        proc.start()
        for job in pending:
            jobs.put(job)
        jobs.put(None)
        while pending:
            cls_name = pending[0][0]
            started = time.monotonic()
            try:
                got = results.get(timeout=TIMEOUT + (60 if cls_name == todo[0][0] else 0))
            except queue.Empty:
                failures[cls_name] = f"timeout: not built and wrapped within {TIMEOUT:.0f} s"
                pending.pop(0)
                proc.kill()
                break
            name, entry, error = got
            pending.pop(0)
            if error is None:
                entries[name] = entry
            else:
                failures[name] = error
            if log:
                log(
                    f"{len(todo) - len(pending)}/{len(todo)} {name} {time.monotonic() - started:.1f}s {error or ''}"
                )
            if not proc.is_alive() and pending and results.empty():
                break
        proc.join(timeout=5)
    versions = {"transformers": transformers.__version__, "peft": peft.__version__}
    return entries, failures, versions


def files(
    entries: dict[str, Any],
    failures: dict[str, str],
    versions: dict[str, str],
    classes: list[str],
    variants: frozenset[str] = frozenset(),
) -> dict[str, str]:
    """File name → text of the table directory."""
    by_type: dict[str, dict[str, Any]] = {}
    index: dict[str, str] = {}
    for cls_name in classes:
        if cls_name in entries:
            entry = dict(entries[cls_name])
            model_type = entry.pop("model_type")
            by_type.setdefault(model_type, {})[cls_name] = entry
            index[cls_name] = model_type
    out: dict[str, str] = {}
    for model_type, cls_entries in sorted(by_type.items()):
        out[f"{model_type}.json"] = _render({"classes": cls_entries})
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    base = {mt: c for mt, c in MODEL_MAPPING_NAMES.items() if isinstance(c, str) and c in index}
    out["_index.json"] = _render(
        {
            "generated_by": "scripts/generate_architectures.py",
            "base_classes": dict(sorted(base.items())),
            "versions": versions,
            "categories": list(CATEGORIES),
            "classes": index,
            "failed": dict(sorted(failures.items())),
            "variant_search": sorted(variants & set(classes)),
        }
    )
    return out


def _shipped(out_dir: Path) -> tuple[dict[str, Any], dict[str, str], frozenset[str]]:
    """Entries (with their model type), failures and variant-searched classes of a table dir."""
    index_path = out_dir / "_index.json"
    if not index_path.exists():
        return {}, {}, frozenset()
    index = json.loads(index_path.read_text())
    entries: dict[str, Any] = {}
    for path in out_dir.glob("*.json"):
        if path.name != "_index.json":
            for cls_name, entry in json.loads(path.read_text())["classes"].items():
                entries[cls_name] = {**entry, "model_type": path.stem}
    return entries, dict(index.get("failed", {})), frozenset(index.get("variant_search", []))


def _render(doc: dict[str, Any]) -> str:
    """One parameter record per line: small, stable, readable in a diff."""
    text = json.dumps(doc, indent=1, sort_keys=True)
    # Fold the innermost lists (records) onto one line.
    return (
        re.sub(
            r"\[\n\s+([^\[\]{}]*?)\n\s+\]",
            lambda m: "[" + re.sub(r",\n\s+", ", ", m.group(1)) + "]",
            text,
        )
        + "\n"
    )


def _without_versions(text: str) -> str:
    doc = json.loads(text)
    doc.pop("versions", None)
    return json.dumps(doc, indent=1, sort_keys=True)


def diff(expected: dict[str, str], shipped_dir: Path, partial: bool) -> list[str]:
    """Readable differences between generated files and the shipped ones (versions ignored;
    with ``partial``, only the generated classes are compared)."""
    import difflib

    lines: list[str] = []
    for name, text in sorted(expected.items()):
        path = shipped_dir / name
        if name == "_index.json":
            new, old = json.loads(text), json.loads(path.read_text()) if path.exists() else {}
            for key in ("classes", "failed", "base_classes", "variant_search"):
                if key == "variant_search":
                    if not partial and new.get(key) != old.get(key):
                        lines.append(f"_index.json variant_search: {old.get(key)} → {new.get(key)}")
                    continue
                want = new.get(key, {})
                have = old.get(key, {})
                for cls_name in sorted(set(want) | (set() if partial else set(have))):
                    if want.get(cls_name) != have.get(cls_name):
                        lines.append(
                            f"_index.json {key}[{cls_name}]: shipped {have.get(cls_name)!r}, generated {want.get(cls_name)!r}"
                        )
            continue
        new_doc = json.loads(text)["classes"]
        old_doc = json.loads(path.read_text())["classes"] if path.exists() else {}
        for cls_name in sorted(set(new_doc) | (set() if partial else set(old_doc))):
            a = json.dumps(old_doc.get(cls_name), indent=1, sort_keys=True).splitlines()
            b = json.dumps(new_doc.get(cls_name), indent=1, sort_keys=True).splitlines()
            if a != b:
                lines.append(f"--- {name} {cls_name}")
                lines.extend(difflib.unified_diff(a, b, "shipped", "generated", n=1, lineterm=""))
    if not partial:
        for path in sorted(shipped_dir.glob("*.json")):
            if path.name not in expected:
                lines.append(f"{path.name}: shipped but no longer generated")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="print differences instead of writing")
    parser.add_argument("--classes", help="comma-separated classes (implies --check)")
    parser.add_argument(
        "--sample", type=int, help="--check on this many more classes, seeded (--seed)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument(
        "--out", type=Path, default=OUT, help="directory to write (default: shipped)"
    )
    parser.add_argument(
        "--variants",
        default="",
        help="comma-separated classes whose config flags are searched for optional modules "
        "(added to the shipped list, which every run keeps)",
    )
    parser.add_argument(
        "--merge", action="store_true", help="regenerate --classes into the shipped tables"
    )
    args = parser.parse_args()
    log = None if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    all_classes = list(_auto_classes())
    chosen = None
    if args.classes or args.sample:
        chosen = args.classes.split(",") if args.classes else []
        if args.sample:
            rest = [c for c in all_classes if c not in chosen]
            chosen += sorted(random.Random(args.seed).sample(rest, args.sample))
    old_entries, old_failures, old_variants = _shipped(args.out)
    variants = old_variants | frozenset(filter(None, args.variants.split(",")))
    started = time.monotonic()
    entries, failures, versions = generate(chosen, log, variants)
    if log:
        log(f"{len(entries)} classes, {len(failures)} failed, {time.monotonic() - started:.0f} s")
    if args.merge and chosen:
        for cls_name in chosen:
            old_entries.pop(cls_name, None)
            old_failures.pop(cls_name, None)
        entries, failures = {**old_entries, **entries}, {**old_failures, **failures}
        chosen = None
    out = files(entries, failures, versions, chosen or all_classes, variants)
    if args.check or (chosen and args.out == OUT):
        lines = diff(out, OUT, partial=chosen is not None)
        print("\n".join(lines) if lines else "up to date")
        return 1 if lines else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("*.json"):
        if old.name not in out:
            old.unlink()
    for name, text in out.items():
        tmp = args.out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(args.out / name)
    print(f"wrote {len(out)} files to {args.out} ({sum(len(t) for t in out.values()):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
