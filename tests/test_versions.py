"""The report records which transformers/PEFT the shipped rules came from and which are
installed; a difference is mentioned only in warnings about guessed modules."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import lora_rank
import peft
import pytest
import transformers
from lora_rank.inventory import naming

DATA = Path(lora_rank.__file__).parent / "_data" / "transformers_rules.json"


def test_report_records_rules_and_installed_versions(minilm: Path) -> None:
    report = lora_rank.analyze(minilm)
    assert report.rules_version == json.loads(DATA.read_text())["versions"]
    assert report.installed_version == {
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }
    d = report.to_dict()
    assert d["rules_version"] == report.rules_version
    assert d["installed_version"]["transformers"] == transformers.__version__


def test_installed_versions_import_nothing() -> None:
    """Read from package metadata in a fresh interpreter: transformers/peft/torch stay unloaded."""
    import subprocess
    import sys

    code = (
        "import sys; from lora_rank.inventory import naming; v = naming.installed_versions(); "
        "assert v['transformers'] and v['peft'], v; "
        "bad = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]; "
        "assert not bad, bad; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


@pytest.fixture
def newer_transformers(monkeypatch: pytest.MonkeyPatch) -> str:
    """Pretend a transformers release other than the shipped rules' one is installed."""
    fake = "99.0.0"
    real = naming.installed_versions()
    monkeypatch.setattr(naming, "installed_versions", lambda: {**real, "transformers": fake})
    return fake


def test_version_difference_alone_does_not_warn(
    checkpoint: Callable[[str], Path], newer_transformers: str
) -> None:
    """A checkpoint resolved wholly from the table gets no warning, whatever is installed."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = lora_rank.analyze(checkpoint("llama"))
    assert report.resolution == "table"
    assert report.installed_version["transformers"] == newer_transformers
    assert report.installed_version["transformers"] != report.rules_version["transformers"]


def test_guessed_modules_warning_names_both_versions(
    checkpoint: Callable[[str], Path], newer_transformers: str, tmp_path: Path
) -> None:
    """Where modules are guessed, the warning says which versions differ."""
    src = checkpoint("llama")
    for f in src.iterdir():
        (tmp_path / f.name).symlink_to(f)
    config = json.loads((src / "config.json").read_text())
    config["architectures"] = ["NoSuchArchitectureForCausalLM"]
    config["model_type"] = "no_such_model_type"
    (tmp_path / "config.json").unlink()
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="guessed") as record:
        report = lora_rank.analyze(tmp_path)
    assert report.resolution == "heuristic"
    text = " ".join(str(w.message) for w in record)
    shipped = report.rules_version["transformers"]
    assert f"transformers {shipped} vs {newer_transformers} installed" in text
