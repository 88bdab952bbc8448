"""What every exporter shares: refusals as one-line :class:`~lora_rank.errors.ConfigError`\\ s
naming what the target format would lose, the exactness check of a translated config against
the report (PEFT's matching replayed by :mod:`lora_rank.peft.rules`), and a small YAML writer
(every string JSON-quoted, which YAML reads back unchanged).

Example:
    >>> print(to_yaml({"lora_r": 8, "lora_target_modules": ["query", "value"]}), end="")
    lora_r: 8
    lora_target_modules:
    - "query"
    - "value"
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Optional, Union

from ..errors import ConfigError, PeftEmulationError
from ..peft import patterns, rules

if TYPE_CHECKING:  # pragma: no cover
    from ..peft.recommendation import Recommendation
    from ..report import Report


def refuse(fmt: str, lost: str, instead: str = "") -> ConfigError:
    """The one-line error of an exporter that cannot express ``lost``.

    Example:
        >>> str(refuse("trl 1.16.0", "rank_pattern (4 keys)", "use --export peft"))
        'trl 1.16.0 cannot express rank_pattern (4 keys); use --export peft'
    """
    return ConfigError(f"{fmt} cannot express {lost}" + (f"; {instead}" if instead else ""))


def pattern_summary(rec: Recommendation) -> str:
    """``rank_pattern``/``alpha_pattern`` of ``rec`` in a few words (what a refusal loses).

    Example:
        >>> import lora_rank
        >>> rec = lora_rank.analyze(lora_rank.demo_checkpoint()).recommend("attention-qv")
        >>> pattern_summary(rec)
        'one rank and alpha'
    """
    ranks = sorted({t.rank for t in rec.targets})
    alphas = sorted({float(t.alpha) for t in rec.targets})
    if len(ranks) <= 1 and len(alphas) <= 1:
        return "one rank and alpha"
    return (
        f"per-module ranks {ranks} / alphas {[_num(a) for a in alphas]} over "
        f"{len(rec.targets)} targets (rank_pattern: {_keys(rec.rank_pattern)}, "
        f"alpha_pattern: {_keys(rec.alpha_pattern)})"
    )


def _keys(d: Mapping[str, Any]) -> str:
    return f"{len(d)} key" + ("" if len(d) == 1 else "s")


def _num(x: float) -> Union[int, float]:
    return int(x) if float(x).is_integer() else float(x)


def integer_alpha(fmt: str, value: float, what: str = "lora_alpha") -> int:
    """``value`` as the int a tool's ``lora_alpha`` field takes, or a refusal.

    Example:
        >>> integer_alpha("axolotl 0.19.0", 16.0)
        16
    """
    if not float(value).is_integer():
        raise refuse(fmt, f"the non-integer {what} {value} (its field is an int)")
    return int(value)


def intended(rec: Recommendation) -> dict[str, tuple[int, float]]:
    """``{PEFT key: (rank, alpha)}`` the recommendation adapts."""
    return {t.key: (t.rank, float(t.alpha)) for t in rec.targets}


def check_equivalent(
    fmt: str, rec: Recommendation, config: Mapping[str, Any], report: Optional[Report]
) -> None:
    """Raise unless the ``LoraConfig`` keywords ``config`` (what the tool builds from the
    exported keys) adapt exactly ``rec``'s targets with their ranks and alphas, and so give
    PEFT's trainable count ``rec.trainable_params``. Needs the report (its module names).

    Example:
        >>> import lora_rank
        >>> report = lora_rank.analyze(lora_rank.demo_checkpoint())
        >>> rec = report.recommend("attention-qv")
        >>> check_equivalent("x", rec, {"r": 8, "lora_alpha": 16, "target_modules": ["query", "value"]}, report)
        >>> check_equivalent("x", rec, {"r": 8, "lora_alpha": 16, "target_modules": ["query"]}, report)
        Traceback (most recent call last):
        ...
        lora_rank.errors.ConfigError: x: the translated config adapts 6 modules, not the recommendation's 12
    """
    if report is None:
        raise ConfigError(
            f"{fmt}: translating this recommendation needs the report it was made from "
            "(export(..., report=report); the CLI passes it) to check the translation is exact"
        )
    universe = rules.Universe.of(report)
    try:
        got = rules.applied(config, universe)
    except PeftEmulationError as e:
        raise ConfigError(f"{fmt}: the translated config cannot be checked ({e})") from e
    want = intended(rec)
    if got != want:
        raise ConfigError(
            f"{fmt}: the translated config adapts {len(got)} modules, not the "
            f"recommendation's {len(want)}"
        )
    count = rules.trainable(got, universe)
    if count != rec.trainable_params:  # pragma: no cover - same targets, same count
        raise ConfigError(f"{fmt}: trainable {count:,} != {rec.trainable_params:,}")


def explicit_targets(fmt: str, rec: Recommendation, report: Optional[Report]) -> list[str]:
    """A plain list of dot-suffixes that selects exactly ``rec``'s module targets, for tools
    that take no ``"all-linear"``, regex or ``exclude_modules`` (checked against the report).

    Example:
        >>> import lora_rank
        >>> report = lora_rank.analyze(lora_rank.demo_checkpoint())
        >>> explicit_targets("x", report.recommend("all-linear"), report)
        ['dense', 'key', 'query', 'value']
    """
    tm = rec.target_modules
    if isinstance(tm, list) and not rec.exclude_modules:
        return list(tm)
    if report is None:
        check_equivalent(fmt, rec, {}, None)
    assert report is not None
    mods = [t.key for t in rec.targets if not t.is_parameter]
    universe = rules.Universe.of(report)
    listed = patterns.suffix_list(mods, universe.modules)
    if not listed:
        what = "exclude_modules" if rec.exclude_modules else f"the regex target_modules {tm!r}"
        raise refuse(fmt, f"{what}: no list of module-name suffixes selects the same modules")
    return listed


def plain_suffixes(fmt: str, names: list[str]) -> list[str]:
    """``names`` when each is a plain module-name suffix (no regex, no comma).

    Example:
        >>> plain_suffixes("x", ["q_proj", "v_proj"])
        ['q_proj', 'v_proj']
    """
    for n in names:
        if "," in n or re.escape(n).replace("\\.", ".") != n:
            raise refuse(fmt, f"the target name {n!r} (not a plain module-name suffix)")
    return names


def count_line(rec: Recommendation, tool: str) -> str:
    """The sentence stating the trainable count the exported config gives.

    Example:
        >>> import lora_rank
        >>> rec = lora_rank.analyze(lora_rank.demo_checkpoint()).recommend("attention-qv")
        >>> count_line(rec, "axolotl 0.19.0")
        'trainable parameters: 73,728 (what PEFT reports for the LoraConfig axolotl 0.19.0 builds from these keys)'
    """
    return (
        f"trainable parameters: {rec.trainable_params:,} (what PEFT reports for the "
        f"LoraConfig {tool} builds from these keys)"
    )


_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _scalar(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"no YAML for {v}")
        return repr(v)
    return json.dumps(str(v), ensure_ascii=False)


def _key(k: str) -> str:
    return k if _PLAIN_KEY.match(k) else json.dumps(k, ensure_ascii=False)


def to_yaml(data: Mapping[str, Any], comments: Optional[Mapping[str, str]] = None) -> str:
    """Block YAML of a flat mapping whose values are scalars, lists of scalars or mappings
    of scalars; ``comments[key]`` is written as ``# ...`` above that key.

    Example:
        >>> print(to_yaml({"lora_rank_pattern": {r".*\\.0\\.q": 4}}), end="")
        lora_rank_pattern:
          ".*\\\\.0\\\\.q": 4
    """
    lines: list[str] = []
    for k, v in data.items():
        for c in (comments or {}).get(k, "").splitlines():
            lines.append(f"# {c}")
        if isinstance(v, Mapping):
            if not v:
                lines.append(f"{_key(k)}: {{}}")
                continue
            lines.append(f"{_key(k)}:")
            lines += [f"  {_key(str(kk))}: {_scalar(vv)}" for kk, vv in v.items()]
        elif isinstance(v, (list, tuple)):
            if not v:
                lines.append(f"{_key(k)}: []")
                continue
            lines.append(f"{_key(k)}:")
            lines += [f"- {_scalar(x)}" for x in v]
        else:
            lines.append(f"{_key(k)}: {_scalar(v)}")
    return "\n".join(lines) + "\n"
