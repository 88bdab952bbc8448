r"""Config emission: :func:`build` turns a plan (one :class:`Target` per adapted module: rank,
alpha) into the :class:`~lora_rank.peft.recommendation.Recommendation` with the fewest
``LoraConfig`` fields that reproduce it:

- ``target_modules``: ``"all-linear"`` when the plan is exactly that (optionally with
  ``exclude_modules``), else the shortest choice among a list of dot-suffixes
  (``["q_proj", "v_proj"]``), the same list with ``layers_to_transform``, or one regex
  grouped by layer (``.*\.(?:(?:0|1)\.self_attn\.q_proj)``; never on model types whose
  ``target_modules`` PEFT rewrites for MoE, where a regex would widen);
- ``target_parameters`` for fused MoE expert tensors and routers (suffixes or full paths);
- ``r`` / ``lora_alpha``: the most common pair; ``rank_pattern`` / ``alpha_pattern``: one regex
  key per other pair, grouped by kind and layer.

Before returning, the config is replayed with PEFT's matching rules
(:func:`lora_rank.rules.applied`): every wrapped module and parameter, its rank and alpha
must equal the plan, and every pattern key must hit exactly the modules it was made for;
otherwise :class:`~lora_rank.rules.PeftEmulationError` is raised.

Example:
    >>> import lora_rank
    >>> rec = lora_rank.analyze(lora_rank.demo_checkpoint()).recommend("attention-qv")
    >>> rec.target_modules, rec.r, rec.trainable_params
    (['query', 'value'], 8, 73728)
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any, Optional

from ..errors import PeftEmulationError
from ..inventory.kinds import CONV1D_MODEL_TYPES, KINDS
from ..report import Report
from . import patterns, rules
from .recommendation import Recommendation, Target, json_number
from .rules import ALL_LINEAR, Universe


def _target_module_options(
    mods: list[str], universe: Universe, allow_all_linear: bool
) -> Iterator[dict[str, Any]]:
    """Candidate ``target_modules`` (+ ``exclude_modules`` / ``layers_to_transform``) fields
    for the module targets ``mods``, most preferred first (not yet checked), made as they are
    asked for: the literal ``"all-linear"`` comes first and, when it is exact, no list or
    regex is worked out."""
    if allow_all_linear and set(mods) <= universe.all_linear:
        drop = [n for n in sorted(universe.all_linear) if n not in set(mods)]
        excl = patterns.suffix_list(drop, universe.all_linear) if drop else None
        if not drop or excl:
            yield {"target_modules": ALL_LINEAR, "exclude_modules": excl}
    if not mods:
        yield {"target_modules": []}
        return
    listed = patterns.suffix_list(mods, universe.modules)
    if listed:
        yield {"target_modules": listed}
    layers = {rules.layer_of(n) for n in mods}
    if None not in layers:
        # Every layer's module of each role targeted, in the targets' (kind) order.
        shapes = list(dict.fromkeys(patterns.template(n) for n in mods))
        pool = sorted(
            (
                r.key
                for r in universe.reach.values()
                if not r.is_parameter and patterns.template(r.key) in shapes
            ),
            key=lambda n: shapes.index(patterns.template(n)),
        )
        pooled = patterns.suffix_list(pool, universe.modules)
        if pooled:
            yield {
                "target_modules": pooled,
                "layers_to_transform": sorted(int(i) for i in layers if i is not None),
            }
    if universe.moe is None:
        rx = patterns.regex(mods, universe.modules)
        if rx:
            # The shorter form unless a piece starts at a top-level name (checked by applied()).
            for prefix in (r".*\.", r"(?:.*\.)?"):
                yield {"target_modules": prefix + patterns.embed(rx)}


#: Lists up to this long are preferred to a regex (PEFT's usual, most readable form).
_MAX_LIST = 16


def _cost(option: dict[str, Any]) -> tuple[int, int]:
    """Preference of an exact option, lowest first: literal "all-linear" (by the length of its
    exclusions), then short lists, then whatever is shortest."""
    tm = option["target_modules"]
    if tm == ALL_LINEAR:
        return (0, len(json.dumps(option.get("exclude_modules"))))
    if isinstance(tm, list) and len(tm) <= _MAX_LIST:
        return (1, len(json.dumps(option)))
    return (2, len(json.dumps(option)))


def _pattern_keys(
    intended: dict[str, tuple[int, float]],
    got: dict[str, tuple[int, float]],
) -> tuple[dict[str, int], dict[str, float], dict[str, list[str]]]:
    """``rank_pattern`` and ``alpha_pattern`` keys for the names whose ``got`` (rank, alpha)
    differs from ``intended``: one regex per intended pair, exact among the targets."""
    need: dict[tuple[int, float], list[str]] = {}
    for name, pair in intended.items():
        if got[name] != pair:
            need.setdefault(pair, []).append(name)
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    groups: dict[str, list[str]] = {}
    for (rank, alpha), names in sorted(need.items(), key=lambda kv: (-kv[0][0], -kv[0][1])):
        key = patterns.regex(names, intended)
        if key is None:
            raise PeftEmulationError(f"no exact rank_pattern key for {names[:3]}")
        groups[key] = names
        if got[names[0]][0] != rank or any(got[n][0] != rank for n in names):
            ranks[key] = rank
        if any(got[n][1] != alpha for n in names):
            alphas[key] = alpha
    return ranks, alphas, groups


def _check_keys(
    patterns_: dict[str, Any], groups: dict[str, list[str]], wrapped: Sequence[str], what: str
) -> None:
    """Every key of ``patterns_`` must be the first match of exactly its group."""
    first = {n: rules.pattern_key(patterns_, n) for n in wrapped}
    for key in patterns_:
        hit = {n for n in wrapped if rules.key_matches(key, n)}
        if not hit or hit != set(groups[key]) or any(first[n] != key for n in hit):
            raise PeftEmulationError(
                f"{what} key {key!r} hits {sorted(hit)[:4]}, meant for {sorted(groups[key])[:4]}"
            )


def build(
    report: Report,
    targets: list[Target],
    *,
    strategy: str,
    allow_all_linear: bool = False,
    task: Optional[str] = None,
    budget: Optional[int] = None,
    warnings: Optional[list[str]] = None,
    rule: str = "",
) -> Recommendation:
    """The :class:`Recommendation` whose PEFT config adapts exactly ``targets`` with their
    ranks and alphas (see the module docstring); ``allow_all_linear`` permits the literal
    ``"all-linear"``.

    Raises:
        PeftEmulationError: when no config reproduces ``targets`` (an internal error).
    """
    universe = Universe.of(report)
    intended = {t.key: (t.rank, float(t.alpha)) for t in targets}
    pairs = Counter(intended.values())
    r0, a0 = max(pairs, key=lambda p: (pairs[p], p)) if pairs else (8, 16.0)
    # Kind order (q, k, v, o, gate, up, down) makes suffix lists read naturally.
    in_order = sorted(targets, key=lambda t: KINDS.index(t.kind) if t.kind in KINDS else len(KINDS))
    mods = [t.key for t in in_order if not t.is_parameter]
    params = [t.key for t in in_order if t.is_parameter]
    tp = patterns.suffix_list(params, universe.parameters) if params else None
    if params and tp is None:
        raise PeftEmulationError(f"no exact target_parameters for {params[:3]}")

    best: Optional[tuple[tuple[int, int], dict[str, Any], dict[str, list[str]]]] = None
    for option in _target_module_options(mods, universe, allow_all_linear):
        size = _cost(option)
        if best is not None and size >= best[0]:
            continue  # cannot be preferred to the exact option found already
        base = {"r": r0, "lora_alpha": a0, **option, "target_parameters": tp}
        literal = option["target_modules"] == ALL_LINEAR
        if literal and universe.moe is not None:
            # PEFT adds the expert tensors and router itself.
            base["target_parameters"] = None
        try:
            got = rules.applied(base, universe)
        except PeftEmulationError:
            continue
        if set(got) != set(intended):
            continue
        ranks, alphas, groups = _pattern_keys(intended, got)
        config = {**base, "rank_pattern": ranks, "alpha_pattern": alphas}
        if rules.applied(config, universe) != intended:
            continue
        best = (size, config, groups)
        if size[0] == 0:
            break  # the literal "all-linear" is preferred to every list and regex
    if best is None:
        raise PeftEmulationError(
            f"no LoraConfig reproduces the {len(targets)} planned targets of {report.path}"
        )
    _, config, groups = best
    literal = config["target_modules"] == ALL_LINEAR
    wrapped = sorted(intended)
    _check_keys(config["rank_pattern"], groups, wrapped, "rank_pattern")
    _check_keys(config["alpha_pattern"], groups, wrapped, "alpha_pattern")
    counted = rules.trainable(rules.applied(config, universe), universe)
    if counted != sum(t.params for t in targets):
        raise PeftEmulationError(
            f"trainable count {counted} != planned {sum(t.params for t in targets)}"
        )

    notes = list(warnings or [])
    peft_keyed = literal and universe.moe is not None and bool(universe.moe.fused)
    if peft_keyed or any(rules.key_matches(k, p) for k in config["rank_pattern"] for p in params):
        notes.append(
            "PEFT warns that rank_pattern/alpha_pattern keys of target_parameters 'did not "
            "match any targeted module'; they do apply (PEFT only checks modules there)"
        )
    conv1d = report.model_type in CONV1D_MODEL_TYPES and bool(mods)
    return Recommendation(
        strategy=strategy,
        target_modules=config["target_modules"],
        exclude_modules=config.get("exclude_modules"),
        layers_to_transform=config.get("layers_to_transform"),
        target_parameters=config.get("target_parameters"),
        r=int(config["r"]),
        lora_alpha=json_number(config["lora_alpha"]),
        rank_pattern={k: int(v) for k, v in config["rank_pattern"].items()},
        alpha_pattern={k: json_number(v) for k, v in config["alpha_pattern"].items()},
        fan_in_fan_out=conv1d,
        trainable_params=counted,
        targets=targets,
        warnings=notes,
        task=task,
        budget=budget,
        total_params=report.total_params,
        base_model_name_or_path=report.path,
        rule=rule,
    )
