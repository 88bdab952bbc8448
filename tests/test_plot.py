"""Figures of lora_rank.plot, checked in-process through the returned matplotlib Figure (axes,
labels, tick labels, colour bar, plotted data), not by pixels. The plotted values are compared
with spectra computed independently by numpy (float64 SVD of the stored weights)."""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable
from pathlib import Path

import lora_rank
import numpy as np
import pytest
from checkpoints import ARCHS, save_checkpoint
from lora_rank.report import Spectrum

pytest.importorskip("matplotlib")

from lora_rank.render import plot


def _numpy_spectrum(w: np.ndarray, top_k: int = 16) -> Spectrum:
    s = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    energy = np.cumsum(s**2) / np.sum(s**2)

    def rank(q: float) -> int:
        return int(np.searchsorted(energy, q) + 1)

    fro = float(np.sqrt(np.sum(s**2)))
    return Spectrum(
        singular_values=tuple(float(v) for v in s[:top_k]),
        frobenius_norm=fro,
        spectral_norm=float(s[0]),
        stable_rank=fro**2 / float(s[0]) ** 2,
        energy_rank_90=rank(0.9),
        energy_rank_95=rank(0.95),
        energy_rank_99=rank(0.99),
        energy_rank_exact=True,
        alpha=float("nan"),
        nonfinite=0,
        method="numpy",
    )


def numpy_spectra(report: lora_rank.Report) -> lora_rank.Report:
    """``report`` with the spectrum of every 2-D LoRA-target weight computed by numpy."""
    from safetensors.numpy import load_file

    weights: dict[str, np.ndarray] = {}
    for shard in report.shards:
        weights.update(load_file(shard))
    for m in report.lora_targets:
        key = next((k for k in m.checkpoint_keys if k.endswith("weight")), None)
        if key is not None and weights[key].ndim == 2:
            m.spectrum = _numpy_spectrum(weights[key])
    report.spectral_settings = {"method": "numpy"}
    return report


@pytest.fixture(scope="module")
def minilm_spectra(minilm: Path) -> lora_rank.Report:
    return numpy_spectra(lora_rank.analyze(minilm))


def _image(fig: object) -> np.ndarray:
    ax = fig.axes[0]  # type: ignore[attr-defined]
    return np.ma.filled(ax.images[0].get_array(), np.nan)


def test_heatmap_axes_labels_and_values(minilm_spectra: lora_rank.Report) -> None:
    fig = plot.heatmap(minilm_spectra, "stable_rank")
    ax, cbar_ax = fig.axes
    assert fig.get_suptitle() == "bert (BertModel): stable rank per layer and module kind"
    assert "higher" in ax.get_title()
    assert ax.get_xlabel() == "module kind"
    assert ax.get_ylabel() == "layer"
    kinds = ["attn_q", "attn_k", "attn_v", "attn_o", "mlp_up", "mlp_down"]
    assert [t.get_text() for t in ax.get_xticklabels()] == kinds
    assert [t.get_text() for t in ax.get_yticklabels()] == [str(i) for i in range(6)]
    assert "stable rank" in cbar_ax.get_ylabel()
    # Cell (layer, kind) = the module's stable rank as numpy computes it.
    data = _image(fig)
    assert data.shape == (6, 6)
    for m in minilm_spectra.lora_targets:
        if m.kind in kinds and m.layer is not None:
            assert m.spectrum is not None
            assert data[m.layer, kinds.index(m.kind)] == pytest.approx(m.spectrum.stable_rank)
    # Real MiniLM (NOTES.md): layer-0 query stable rank 35.82.
    assert data[0, 0] == pytest.approx(35.82, abs=0.01)
    # Every cell is annotated with its value.
    assert len(ax.texts) == 36


def test_heatmap_integer_metric_and_ranks(minilm_spectra: lora_rank.Report) -> None:
    fig = plot.heatmap(minilm_spectra, "energy_rank_90")
    assert "energy rank 90%" in fig.axes[1].get_ylabel()
    cell_texts = [t.get_text() for t in fig.axes[0].texts]
    assert len(cell_texts) == 36 and all(t.isdigit() for t in cell_texts), cell_texts
    # metric="rank": the values given (here: 8 on queries, 4 on values); the other LoRA
    # candidates are grey (NaN): not adapted.
    ranks = {
        m.name: 8 if m.kind == "attn_q" else 4
        for m in minilm_spectra.modules
        if m.kind in ("attn_q", "attn_v")
    }
    fig = plot.heatmap(minilm_spectra, "rank", ranks=ranks)
    ax = fig.axes[0]
    kinds = [t.get_text() for t in ax.get_xticklabels()]
    assert kinds == ["attn_q", "attn_k", "attn_v", "attn_o", "mlp_up", "mlp_down"]
    expected = np.full((6, 6), np.nan)
    expected[:, 0], expected[:, 2] = 8, 4
    assert np.array_equal(_image(fig), expected, equal_nan=True)
    assert "grey: not adapted" in ax.get_xlabel()
    assert "LoRA rank" in fig.axes[1].get_ylabel()
    assert all(float(t).is_integer() for t in fig.axes[1].get_yticks())


def test_heatmap_of_a_recommendation(minilm: Path) -> None:
    rec = lora_rank.analyze(minilm).recommend("attention8-mlp4")
    report = lora_rank.analyze(minilm)
    g = plot.grid(report, "rank", rec.module_ranks())
    for t in rec.targets:
        if t.layer is not None:
            assert g.values[t.layer][g.kinds.index(t.kind)] == t.rank
    adapted = {(t.layer, t.kind) for t in rec.targets}
    for i, row in enumerate(g.values):
        for j, v in enumerate(row):
            assert np.isnan(v) == ((i, g.kinds[j]) not in adapted)


def test_heatmap_errors(minilm: Path, minilm_spectra: lora_rank.Report) -> None:
    with pytest.raises(lora_rank.ConfigError, match="spectral=True"):
        plot.heatmap(lora_rank.analyze(minilm), "stable_rank")
    with pytest.raises(lora_rank.ConfigError, match="unknown metric"):
        plot.heatmap(minilm_spectra, "nonsense")
    with pytest.raises(lora_rank.ConfigError, match="needs the ranks"):
        plot.heatmap(minilm_spectra, "rank")


def test_heatmap_encoder_decoder_rows(checkpoint: Callable[[str], Path]) -> None:
    report = numpy_spectra(lora_rank.analyze(checkpoint("t5")))
    g = plot.grid(report, "stable_rank")
    assert g.rows == ["encoder 0", "encoder 1", "decoder 0", "decoder 1"]
    # Decoder layers hold self- and cross-attention: their attn_q cell is the median of two.
    q = g.kinds.index("attn_q")
    assert [row[q] for row in g.counts] == [1, 1, 2, 2]
    by_name = {m.name: m.spectrum for m in report.modules if m.spectrum is not None}
    both = [
        by_name[f"decoder.block.1.layer.{i}.{a}.q"].stable_rank  # type: ignore[union-attr]
        for i, a in ((0, "SelfAttention"), (1, "EncDecAttention"))
    ]
    assert g.values[3][q] == pytest.approx(statistics.median(both))
    fig = plot.heatmap(report, "stable_rank")
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == g.rows
    assert "median" in fig.axes[1].get_ylabel()


def test_heatmap_many_layers_readable(tmp_path: Path) -> None:
    """80 layers: the layer axis is labelled in order, thinned so labels never overlap."""
    arch = ARCHS["llama"]
    arch = dataclasses.replace(
        arch, kwargs={**arch.kwargs, "num_hidden_layers": 80, "hidden_size": 16, "head_dim": 4}
    )
    save_checkpoint(arch, tmp_path / "llama80")
    report = numpy_spectra(lora_rank.analyze(tmp_path / "llama80"))
    fig = plot.heatmap(report, "stable_rank")
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[0] == "0" and 20 <= len(labels) <= 80
    step = int(labels[1])
    assert labels == [str(i) for i in range(0, 80, step)]
    # Labels at least the font size apart (in points).
    height_pt = ax.get_position().height * fig.get_figheight() * 72
    font = ax.get_yticklabels()[0].get_fontsize()
    assert height_pt / 80 * step >= font
    assert _image(fig).shape == (80, 7)
    assert not ax.texts  # too many cells to annotate


def test_spectra_plot(minilm_spectra: lora_rank.Report) -> None:
    fig = plot.spectra(minilm_spectra, ["encoder.layer.0.attention.self.query", "pooler.dense"])
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert "singular value" in ax.get_ylabel() and "index" in ax.get_xlabel()
    lines = [ln for ln in ax.get_lines() if len(ln.get_xdata()) > 1]
    assert [ln.get_label() for ln in lines] == [
        "encoder.layer.0.attention.self.query",
        "pooler.dense",
    ]
    q = minilm_spectra.module("encoder.layer.0.attention.self.query").spectrum
    assert q is not None
    assert list(lines[0].get_ydata()) == list(q.singular_values)
    # NOTES.md: layer-0 query σ1..5 = 6.125, 6.066, 5.203, 5.176, 4.991.
    assert list(lines[0].get_ydata()[:5]) == pytest.approx(
        [6.125, 6.066, 5.203, 5.176, 4.991], abs=2e-3
    )
    legend = ax.get_legend()
    assert legend is not None and len(legend.get_texts()) == 2

    # Many modules: coloured by layer (integer colour bar), one line style per kind.
    fig = plot.spectra(minilm_spectra, ["*.dense"])
    ax, cbar = fig.axes
    assert cbar.get_ylabel() == "layer (grey: outside numbered layers)"  # pooler.dense
    assert [t.get_text() for t in cbar.get_yticklabels()] == [str(i) for i in range(6)]
    legend = ax.get_legend()
    assert legend is not None
    assert [t.get_text() for t in legend.get_texts()] == [
        "attn_o",
        "mlp_up",
        "mlp_down",
        "other_linear",
    ]
    styles = {ln.get_linestyle() for ln in ax.get_lines() if len(ln.get_xdata()) > 1}
    assert len(styles) == 4


def test_select_modules(minilm_spectra: lora_rank.Report) -> None:
    names = [m.name for m in plot.select_modules(minilm_spectra, ["*.self.query", "query"])]
    assert names == [f"encoder.layer.{i}.attention.self.query" for i in range(6)]
    names = [m.name for m in plot.select_modules(minilm_spectra, ["layer.5.*.LayerNorm"])]
    assert names == [
        "encoder.layer.5.attention.output.LayerNorm",
        "encoder.layer.5.output.LayerNorm",
    ]
    with pytest.raises(lora_rank.ConfigError, match="no module matches 'q_proj'") as e:
        plot.select_modules(minilm_spectra, ["q_proj"])
    assert "did you mean" not in str(e.value)  # no piece of the names is near 'q_proj'
    assert "named like encoder.layer.0.attention.output.dense, " in str(e.value)
    # Llama's 'layers.0.*' (the README's pattern once) is 'layer.0.*' here: said, not guessed.
    with pytest.raises(lora_rank.ConfigError, match=r"did you mean 'layer\.0\.\*'\?"):
        plot.select_modules(minilm_spectra, ["query", "layers.0.*"])
    assert len(plot.select_modules(minilm_spectra, ["layer.0.*"])) == 8  # 6 linears, 2 norms


@pytest.mark.parametrize(("fmt", "magic"), [("png", b"\x89PNG\r\n\x1a\n"), ("svg", b"<?xml")])
def test_figure_bytes(minilm_spectra: lora_rank.Report, fmt: str, magic: bytes) -> None:
    data = plot.figure_bytes(plot.heatmap(minilm_spectra), fmt)
    assert data.startswith(magic)
    if fmt == "svg":
        assert b"<svg" in data[:2000]
