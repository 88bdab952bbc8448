"""The package's structure as tests: the import graph of ``python/lora_rank`` has no cycle
besides the commented lazy imports listed here, and the ``Spectrum`` and ``SpectralSettings``
contracts between Rust and Python agree in the binding, the stub and the dataclasses
(``docs/architecture.md``)."""

from __future__ import annotations

import ast
import dataclasses
import types
import typing
from pathlib import Path

import lora_rank
import pytest
from lora_rank import _core
from lora_rank.report import Spectrum
from lora_rank.spectral.jobs import Plan, shard_files
from lora_rank.spectral.settings import SpectralSettings

PACKAGE = Path(lora_rank.__file__).parent
STUB = PACKAGE / "_core.pyi"

#: Imports allowed to close a cycle (importer → imported): each is inside a function and the
#: line before it says why (a comment starting "Lazy import (deliberate cycle)").
ALLOWED_LAZY = {
    # Report.recommend / Report.rank_targets: recommend reads reports, a report offers it.
    ("lora_rank.report", "lora_rank.recommend.strategies"),
    # Report._repr_html_: render reads reports; notebooks display them.
    ("lora_rank.report", "lora_rank.render.html"),
    # Report.select_unfrozen: export (Spectrum's selection) reads reports, a report offers it.
    ("lora_rank.report", "lora_rank.export.spectrum"),
    # Recommendation._repr_html_: render reads recommendations; notebooks display them.
    ("lora_rank.peft.recommendation", "lora_rank.render.html"),
    # compare() reads both checkpoints with analyze(); analyze dispatches adapters to deltas.
    ("lora_rank.deltas.compare", "lora_rank.analysis"),
    # Comparison.extract: extraction (torch) builds on comparisons; compare() needs no torch.
    ("lora_rank.deltas.compare", "lora_rank.deltas.extract"),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(name: str, path: Path, known: set[str]) -> list[tuple[str, int, bool]]:
    """``(imported module, line, inside a function)`` of every runtime import of ``name``
    that targets this package (``if TYPE_CHECKING:`` blocks never run and are left out)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub, in_function)
                continue
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                for alias in child.names:
                    sub = f"{base}.{alias.name}"
                    found.append((sub if sub in known else base, child.lineno, in_function))
            visit(child, nested)

    visit(tree, False)
    return [(m, line, lazy) for m, line, lazy in found if m in known and m != name]


def _graph() -> tuple[dict[str, set[str]], dict[tuple[str, str], list[tuple[int, bool]]]]:
    modules = _modules()
    known = set(modules) | {"lora_rank._core"}
    edges: dict[str, set[str]] = {m: set() for m in known}
    where: dict[tuple[str, str], list[tuple[int, bool]]] = {}
    for name, path in modules.items():
        for target, line, lazy in _imports(name, path, known):
            edges[name].add(target)
            where.setdefault((name, target), []).append((line, lazy))
    return edges, where


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            strong(v)
    return out


def test_import_graph_has_no_cycle_but_the_commented_lazy_imports() -> None:
    edges, where = _graph()
    # The top-level package is the public API: it imports everything, nothing imports it.
    importers_of_top = sorted(m for m, targets in edges.items() if "lora_rank" in targets)
    assert importers_of_top == []
    pruned = {m: {t for t in ts if (m, t) not in ALLOWED_LAZY} for m, ts in edges.items()}
    assert _cycles(pruned) == []
    assert _cycles(edges), "the allow-list is stale: no lazy import closes a cycle any more"
    for importer, imported in ALLOWED_LAZY:
        sites = where.get((importer, imported))
        assert sites, f"{importer} no longer imports {imported}: drop it from ALLOWED_LAZY"
        lines = _modules()[importer].read_text().splitlines()
        for line, lazy in sites:
            assert lazy, f"{importer}:{line} imports {imported} at module level"
            before = lines[line - 2].strip()
            assert before.startswith("# Lazy import (deliberate cycle)"), (
                f"{importer}:{line}: the lazy import of {imported} needs its comment"
            )


def test_cycle_check_sees_a_cycle() -> None:
    """The checker itself: a two-module circle is found, a chain is not."""
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def _stub_function(name: str) -> ast.FunctionDef:
    tree = ast.parse(STUB.read_text())
    return next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)


def test_spectrum_contract_binding_and_dataclass_agree(minilm: Path) -> None:
    """The binding's result dicts have the dataclass's fields, in order, with values of the
    declared types; the stub declares no second copy of the field list."""
    hints = typing.get_type_hints(Spectrum)
    fields = [f.name for f in dataclasses.fields(Spectrum)]
    assert "_SpectrumDict" not in STUB.read_text()
    report = lora_rank.analyze(minilm)
    plan = Plan(report)
    results = _core.spectra(shard_files(report), plan.jobs[:2], SpectralSettings())
    for got in results:
        assert list(got) == fields
        for key, value in got.items():
            expected = hints[key]
            if typing.get_origin(expected) is tuple:
                assert isinstance(value, list) and all(type(v) is float for v in value), key
            else:
                assert type(value) is expected, (key, value, expected)
        spectrum = Spectrum.from_core(got)
        assert spectrum.iterations == got["iterations"] and spectrum.converged is got["converged"]
        assert spectrum.singular_values == tuple(got["singular_values"])
    # A field the binding lacks, or one it adds, is caught by the conversion too.
    with pytest.raises(KeyError):
        Spectrum.from_core({k: v for k, v in results[0].items() if k != "converged"})


def test_binding_reads_exactly_the_settings_fields() -> None:
    """``_core.spectra`` takes one settings object and reads every field of
    ``SpectralSettings`` from it by name (a field Rust does not read fails here, and so does
    one it reads that the dataclass lacks); the stub declares no solver keyword of its own."""
    for name in ("spectra", "spectra_in_memory"):
        stub = _stub_function(name)
        assert [a.arg for a in stub.args.args][-1] == "settings", name
        assert [a.arg for a in stub.args.kwonlyargs] in (
            ["progress", "quant", "minus"],
            ["progress"],
        )
    fields = dataclasses.asdict(SpectralSettings())
    assert _core.spectra([], [], SpectralSettings()) == []
    assert _core.spectra([], [], types.SimpleNamespace(**fields)) == []  # type: ignore[arg-type]
    for missing in fields:
        partial = types.SimpleNamespace(**{k: v for k, v in fields.items() if k != missing})
        with pytest.raises(AttributeError, match=missing):
            _core.spectra([], [], partial)  # type: ignore[arg-type]
        with pytest.raises(AttributeError, match=missing):
            _core.spectra_in_memory([], [], partial)  # type: ignore[arg-type]


def test_rust_refuses_invalid_settings_it_is_given() -> None:
    """Rust validates what Python passes, even when the dataclass is bypassed."""
    fields = dataclasses.asdict(SpectralSettings())
    for bad in ({"top_k": 0}, {"rtol": 0.0}, {"max_iter": 0}, {"method": "svd"}):
        given = types.SimpleNamespace(**{**fields, **bad})
        with pytest.raises(ValueError):
            _core.spectra([], [], given)  # type: ignore[arg-type]
