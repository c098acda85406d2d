"""The plot of bench/correspondence.py (cocosnet/measure/plots.py): one series per kind, device, kernel
setting and precision, each with its points."""

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure

from cocosnet.measure.plots import plot_levels


def test_every_series_is_drawn_with_its_points(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: figures.append(fig))

    def record(kind, size, amp, fused):
        return {"kind": kind, "size": size, "device": "cpu", "cpu_kernels": fused, "amp": amp,
                "forward_s": size / 100, "forward_backward_s": size / 50, "peak_mb": size * 2.0}

    # 12 series, more than the plot has line styles
    records = [record(kind, size, amp, fused) for kind in ("patchmatch", "search", "dense")
               for amp in ("off", "bfloat16") for fused in (True, False) for size in (64, 128, 256)]
    records.append({"kind": "search", "size": 512, "device": "cpu", "error": "out of memory"})
    plot_levels(records, tmp_path / "plot.png")
    time_axes, memory_axes = figures[0].axes
    lines = {line.get_label(): line for line in time_axes.get_lines()}
    assert set(lines) >= {"patchmatch fwd (cpu, kernels)", "patchmatch fwd (cpu, kernels, bfloat16)",
                          "search fwd+bwd (cpu, kernels, bfloat16)"}
    for label, line in lines.items():
        assert list(line.get_xdata()) == [64**2, 128**2, 256**2], label
    assert len(lines) == 24  # fwd and fwd+bwd per series
    assert len(memory_axes.get_lines()) == 12 and all(len(line.get_xdata()) == 3 for line in memory_axes.get_lines())
