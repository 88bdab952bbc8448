"""The ``lora-rank`` command line. A few tests run the real console script in a subprocess
(exit codes, one-line errors, ``python -m lora_rank``); the rest call ``cli.main`` in-process,
which is the same code without the interpreter start-up."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import lora_rank
import pytest
from lora_rank import cli

LORA_RANK = Path(sys.executable).parent / "lora-rank"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed console script, as a user runs it (no terminal: no progress bar)."""
    return subprocess.run(
        [str(LORA_RANK), *args], capture_output=True, text=True, timeout=300, check=False
    )


def main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = cli.main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


# -- subprocess: the real entry points -------------------------------------------------------


def test_console_script_json_equals_analyze(checkpoint: Callable[[str], Path]) -> None:
    path = checkpoint("llama")
    proc = run("analyze", str(path), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == json.loads(lora_rank.analyze(path).to_json())


def test_python_dash_m_and_help() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "lora_rank", "analyze", "--demo", "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "bert (BertModel)" in proc.stdout and "attn_q" in proc.stdout
    assert proc.stderr == ""
    proc = run("--help")
    assert proc.returncode == 0
    assert all(c in proc.stdout for c in ("analyze", "recommend", "plot"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["analyze", "/nonexistent/model"], "/nonexistent/model: No such file or directory"),
        (["recommend", "--demo", "--budget", "half"], "invalid budget 'half'"),
    ],
)
def test_console_script_user_errors(args: list[str], message: str) -> None:
    proc = run(*args)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert lines[0].startswith(f"lora-rank {args[0]}: error: ")


# -- in-process ------------------------------------------------------------------------------


def test_analyze_table(capsys: pytest.CaptureFixture[str], minilm: Path) -> None:
    status, out, err = main(capsys, "analyze", str(minilm))
    assert status == 0
    assert err == (
        "next: lora-rank analyze PATH --spectral (spectra); "
        "lora-rank recommend PATH --budget 0.5% --out adapter/\n"
    )
    report = lora_rank.analyze(minilm)
    for label, value in (
        ("model", "bert (BertModel)"),
        ("layers", "6"),
        ("hidden size", "384"),
        ("parameters", "22,713,728"),
        ("dtypes", "F32 100%, I64 <0.1%"),
    ):
        line = next(ln for ln in out.splitlines() if ln.startswith(label + " "))
        assert value in line, line
    # One row per kind with its module count and parameter sum.
    for kind, n in report.kind_counts().items():
        params = sum(m.params for m in report.modules if m.kind == kind)
        row = next(ln for ln in out.splitlines() if ln.startswith(f"│ {kind} "))
        cells = [c.strip() for c in row.split("│")[1:-1]]
        assert cells[0] == kind and int(cells[2]) == n and cells[-1] == f"{params:,}"


def test_analyze_per_module_lists_every_module(
    capsys: pytest.CaptureFixture[str], checkpoint: Callable[[str], Path]
) -> None:
    path = checkpoint("llama")
    status, out, _ = main(capsys, "analyze", str(path), "--per-module")
    assert status == 0
    report = lora_rank.analyze(path)
    # Rows sit under a heading per layer ("model.layers.0"), named relative to it.
    lines = out.splitlines()
    body = lines[next(i for i, ln in enumerate(lines) if set(ln.strip()) == {"─"}) + 1 :]
    names, heading = [], ""
    for line in body:
        cells = line.split()
        if len(cells) == 1:
            heading = cells[0]
        elif cells:
            names.append(f"{heading}.{cells[0]}" if line.startswith("    ") else cells[0])
            module = report.module(names[-1])
            assert cells[1:] == [
                module.kind,
                "×".join(map(str, module.shape)),
                f"{module.params:,}",
                "yes" if module.is_lora_target else "no",
            ]
    assert names == [m.name for m in report.modules]


def test_analyze_csv(capsys: pytest.CaptureFixture[str], checkpoint: Callable[[str], Path]) -> None:
    path = checkpoint("qwen2")
    report = lora_rank.analyze(path)
    status, out, _ = main(capsys, "analyze", str(path), "--format", "csv")
    assert status == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert {r["kind"]: int(r["modules"]) for r in rows} == report.kind_counts()
    assert sum(int(r["params"]) for r in rows) == sum(m.params for m in report.modules)

    status, out, _ = main(capsys, "analyze", str(path), "--format", "csv", "--per-module")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["name"] for r in rows] == [m.name for m in report.modules]
    assert [r["lora_target"] == "True" for r in rows] == [m.is_lora_target for m in report.modules]


def test_analyze_output_file_atomic(
    capsys: pytest.CaptureFixture[str], minilm: Path, tmp_path: Path
) -> None:
    target = tmp_path / "report.json"
    target.write_text("old")
    status, out, err = main(
        capsys, "analyze", "--demo", "--format", "json", "--output", str(target)
    )
    assert status == 0 and out == ""
    assert err.strip() == f"wrote {target}"
    assert json.loads(target.read_text()) == json.loads(lora_rank.analyze(minilm).to_json())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    # A table written to a file is plain text (no colour codes).
    status, _, _ = main(capsys, "analyze", "--demo", "-o", str(tmp_path / "t.txt"), "-q")
    text = (tmp_path / "t.txt").read_text()
    assert status == 0 and "\x1b[" not in text and "Modules by kind" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["analyze"], "missing PATH"),
        (["analyze", "--demo", "x"], "either PATH or --demo"),
        (["analyze", "{tmp}/empty"], "not a safetensors checkpoint"),
        (["analyze", "{tmp}/bad.safetensors"], "bad.safetensors: invalid safetensors header"),
        (["plot", "--demo", "--out", "x.gif"], "must end in .png, .svg or .pdf"),
        (["plot", "--demo", "--out", "{tmp}/no/such/dir/x.png"], "does not exist"),
    ],
)
def test_user_errors_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 8 + b"{}")
    (tmp_path / "empty").mkdir()
    status, out, err = main(capsys, *[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert status == 2 and out == ""
    assert len(err.splitlines()) == 1 and message in err, err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for args in (["bogus"], ["analyze", "--demo", "--top-k", "0"], ["analyze", "--format=xml"]):
        with pytest.raises(SystemExit) as e:
            cli.main(args)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and "error:" in err
    assert cli.main([]) == 2
    assert "analyze" in capsys.readouterr().out


def test_debug_shows_traceback(tmp_path: Path) -> None:
    with pytest.raises(lora_rank.NotACheckpointError):
        cli.main(["analyze", str(tmp_path), "--debug"])


def test_missing_module_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lora_rank part missing from the build (or an optional dependency) is a one-line
    error, not a traceback."""
    monkeypatch.setitem(sys.modules, "lora_rank.recommend.strategies", None)
    status, _, err = main(capsys, "recommend", "--demo", "--strategy", "attention-qv")
    assert status == 2
    assert err.strip() == (
        "lora-rank recommend: error: this lora_rank build has no lora_rank.recommend.strategies "
        "module yet"
    )
    missing = ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")
    assert cli._user_error(missing) == 'this needs matplotlib: pip install "lora-rank[plot]"'
    assert cli._user_error(ModuleNotFoundError("x", name="yaml")) is None  # a bug: traceback


# -- recommend -------------------------------------------------------------------------------


def _field(out: str, label: str) -> str:
    line = next(ln for ln in out.splitlines() if ln.startswith(label + " "))
    return line[len(label) :].strip()


@pytest.mark.parametrize(
    ("arch", "strategy"), [("llama", "attention-mlp"), ("gpt2", "attention8-mlp4")]
)
def test_recommend_writes_config_peft_loads(
    capsys: pytest.CaptureFixture[str],
    checkpoint: Callable[[str], Path],
    tmp_path: Path,
    arch: str,
    strategy: str,
) -> None:
    """The written adapter_config.json loads with PEFT, and the trainable count the command
    prints is what PEFT counts on the real model with that config."""
    import peft
    from peft_oracle import apply_peft

    path = checkpoint(arch)
    out_dir = tmp_path / "adapter"
    status, out, err = main(
        capsys, "recommend", str(path), "--strategy", strategy, "--out", str(out_dir)
    )
    assert status == 0, err
    assert f"wrote {out_dir / 'adapter_config.json'}" in err
    assert sorted(p.name for p in out_dir.iterdir()) == ["adapter_config.json"]
    config = peft.LoraConfig.from_pretrained(str(out_dir))
    oracle = apply_peft(path, config)
    printed = int(_field(out, "trainable params").split()[0].replace(",", ""))
    assert printed == oracle.trainable
    # The total row of the rank table agrees, and counts the wrapped modules.
    total = next(ln for ln in out.splitlines() if ln.startswith("│ total "))
    cells = [c.strip() for c in total.split("│")[1:-1]]
    assert int(cells[2]) == len(oracle.modules) + len(oracle.parameters)
    assert cells[-1] == f"{oracle.trainable:,}"


def test_recommend_json(capsys: pytest.CaptureFixture[str], minilm: Path) -> None:
    status, out, err = main(
        capsys, "recommend", "--demo", "--strategy", "attention-qv", "--format", "json"
    )
    assert status == 0, err
    data = json.loads(out)
    rec = lora_rank.analyze(minilm).recommend("attention-qv")
    assert data == json.loads(json.dumps(rec.to_dict()))
    assert "not written" not in err


# -- spectra and plots -----------------------------------------------------------------------


def _numpy_stable_rank(path: Path, key: str) -> float:
    import numpy as np
    from safetensors.numpy import load_file

    w = load_file(str(path / "model.safetensors"))[key].astype(np.float64)
    s = np.linalg.svd(w, compute_uv=False)
    return float(np.sum(s**2) / s[0] ** 2)


def test_analyze_spectral_csv_against_numpy(
    capsys: pytest.CaptureFixture[str], minilm: Path
) -> None:
    import statistics

    status, out, _ = main(capsys, "analyze", "--demo", "--spectral", "--format", "csv", "-q")
    assert status == 0
    rows = {r["kind"]: r for r in csv.DictReader(io.StringIO(out))}
    ranks = [
        _numpy_stable_rank(minilm, f"encoder.layer.{i}.attention.self.query.weight")
        for i in range(6)
    ]
    q = rows["attn_q"]
    assert float(q["stable_rank_median"]) == pytest.approx(statistics.median(ranks), rel=1e-3)
    assert float(q["stable_rank_min"]) == pytest.approx(min(ranks), rel=1e-3)
    assert float(q["stable_rank_max"]) == pytest.approx(max(ranks), rel=1e-3)
    assert rows["norm"]["stable_rank_median"] == ""  # 1-D: no spectrum


def test_quiet_turns_progress_off(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import lora_rank.analysis

    seen: list[object] = []
    real = lora_rank.analysis.analyze

    def spy(*args: object, **kwargs: object) -> lora_rank.Report:
        seen.append(kwargs["progress"])
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(lora_rank.analysis, "analyze", spy)
    main(capsys, "analyze", "--demo", "--quiet")
    main(capsys, "analyze", "--demo")
    # --quiet: no bar; otherwise the default (a bar only when stderr is a terminal).
    assert seen == [False, None]


@pytest.mark.parametrize(
    ("args", "magic"),
    [
        (["--metric", "alpha"], b"\x89PNG\r\n\x1a\n"),
        (["--spectra", "layer.0.attention.self.query", "pooler.dense"], b"<?xml"),
        (["--metric", "rank", "--strategy", "attention8-mlp4"], b"%PDF"),
    ],
)
def test_plot_writes_image(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], magic: bytes
) -> None:
    pytest.importorskip("matplotlib")
    suffix = {b"\x89PNG\r\n\x1a\n": "png", b"<?xml": "svg", b"%PDF": "pdf"}[magic]
    out = tmp_path / f"figure.{suffix}"
    status, stdout, err = main(capsys, "plot", "--demo", *args, "--out", str(out), "-q")
    assert status == 0, err
    assert stdout == "" and err == ""
    assert out.read_bytes().startswith(magic)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_plot_unknown_module_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pattern matching nothing fails before the spectral scan, in one line naming modules
    that exist (and the near miss corrected: Llama's 'layers.0.*' is 'layer.0.*' on BERT)."""
    pytest.importorskip("matplotlib")
    import lora_rank.spectral.compute as compute

    def no_scan(*_: object, **__: object) -> None:
        raise AssertionError("spectra computed before the patterns were resolved")

    monkeypatch.setattr(compute, "compute_spectra", no_scan)
    examples = (
        "modules are named like encoder.layer.0.attention.output.dense, "
        "encoder.layer.0.attention.self.key, encoder.layer.0.attention.self.query, "
        "encoder.layer.0.attention.self.value, encoder.layer.0.intermediate.dense, ... "
        "(54 modules); give a runtime name, a dot-suffix of one or a glob)"
    )
    for pattern, hint in (("q_proj", ""), ("layers.0.*", "did you mean 'layer.0.*'? ")):
        status, _, err = main(
            capsys, "plot", "--demo", "--spectra", pattern, "--out", str(tmp_path / "x.png")
        )
        assert status == 2
        assert err.strip() == (
            f"lora-rank plot: error: no module matches {pattern!r} ({hint}{examples}"
        )
        assert not (tmp_path / "x.png").exists()


# -- notebook HTML ---------------------------------------------------------------------------


def test_repr_html_escapes_and_lists_kinds(minilm: Path) -> None:
    from html.parser import HTMLParser

    report = lora_rank.analyze(minilm)
    report.model_type = "<script>x</script>"
    html = report._repr_html_()
    assert "<script>" not in html and "&lt;script&gt;" in html

    class Cells(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.cells: list[str] = []

        def handle_data(self, data: str) -> None:
            self.cells.append(data)

    parser = Cells()
    parser.feed(html)
    for kind in report.kind_counts():
        assert kind in parser.cells
    assert f"{report.total_params:,}" in " ".join(parser.cells)

    rec = lora_rank.analyze(minilm).recommend("attention-qv")
    parser = Cells()
    parser.feed(rec._repr_html_())
    assert {"attn_q", "attn_v", f"{rec.trainable_params:,}"} <= set(parser.cells)
    assert "['query', 'value']" in parser.cells


def test_path_after_list_option(capsys: pytest.CaptureFixture[str], minilm: Path) -> None:
    """``--exclude a b PATH``: argparse hands PATH to the list option; it is taken back."""
    status, out, err = main(
        capsys, "recommend", "--strategy", "attention", "--exclude", "key", "query", str(minilm)
    )
    assert status == 0, err
    kinds = [ln.split("│")[1].strip() for ln in out.splitlines() if ln.startswith("│ attn_")]
    assert kinds == ["attn_v", "attn_o"]


def test_recommend_bad_out_dir_fails_before_work(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "file").write_text("x")
    status, out, err = main(
        capsys, "recommend", "--demo", "--strategy", "attention", "--out", str(tmp_path / "file/a")
    )
    assert status == 2 and out == ""
    assert err.strip() == (
        f"lora-rank recommend: error: --out {tmp_path}/file/a: {tmp_path}/file is not a directory"
    )
