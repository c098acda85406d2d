"""Plots of benchmark records."""

from __future__ import annotations

import itertools
from pathlib import Path


def plot_levels(records: list[dict], path: Path) -> None:
    """Time and peak memory per level size of bench/correspondence.py's records, one series per kind, device,
    kernel setting and precision."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))

    def series_of(r: dict) -> tuple:
        return r["kind"], r["device"], r.get("cpu_kernels", False), r.get("amp", "off")

    series = sorted({series_of(r) for r in records if "error" not in r})
    styles = itertools.cycle(("o-", "s--", "^-", "d--", "v-", "x--", "*-", "+--"))  # more series than styles
    for (kind, device, fused, amp), style in zip(series, styles):
        rows = sorted((r for r in records if series_of(r) == (kind, device, fused, amp) and "error" not in r),
                      key=lambda r: r["size"])
        if fused:
            device = f"{device}, kernels"
        if amp != "off":
            device = f"{device}, {amp}"
        px = [r["size"] ** 2 for r in rows]
        ax_t.loglog(px, [r["forward_s"] for r in rows], style, label=f"{kind} fwd ({device})")
        if all("forward_backward_s" in r for r in rows):
            ax_t.loglog(px, [r["forward_backward_s"] for r in rows], style, alpha=0.5,
                        label=f"{kind} fwd+bwd ({device})")
        ax_m.loglog(px, [r["peak_mb"] for r in rows], style, label=f"{kind} ({device})")
    ax_t.set(xlabel="pixels (H*W)", ylabel="seconds (median)", title="time per level")
    ax_m.set(xlabel="pixels (H*W)", ylabel="peak MB", title="peak memory (whole run; the search is forward only)")
    for ax in (ax_t, ax_m):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
