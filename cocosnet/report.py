"""The evaluation report: plots and one self-contained HTML file (every image embedded, no scripts,
no network), so it opens offline and survives being mailed or attached to an MLflow run."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from cocosnet.io import atomic_save, atomic_write  # noqa: E402
from cocosnet.metrics.schema import BASELINES, CORRESPONDENCE_WHO, IMAGE_WHO, LABELS, PAIRED, SET  # noqa: E402

WHO = CORRESPONDENCE_WHO


def correspondence_plot(correspondence: dict, path: Path, *, title: str = "") -> Path:
    """Accuracy within 1 and 3 px and EPE by level, one line per mapping (the known ones of WHO in
    their order, then any other name, e.g. the runs of the correspondence study)."""
    per_level = correspondence["per_level"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for who in [w for w in WHO if w in per_level] + [w for w in per_level if w not in WHO]:
        levels = sorted(per_level[who], key=int)
        xs = [int(level) for level in levels]
        for ax, key in zip(axes, ("acc_1px", "acc_3px", "epe_px")):
            ax.plot(xs, [per_level[who][level][key] for level in levels], marker="o", label=who)
    for ax, name in zip(axes, ("within 1 px", "within 3 px", "end-point error (level px)")):
        ax.set_title(name)
        ax.set_xlabel("level (0 = coarsest)")
        ax.set_xticks(xs)
        ax.grid(alpha=0.3)
    axes[0].set_ylim(0, 1)
    axes[1].set_ylim(0, 1)
    axes[0].legend(fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    atomic_save(path, lambda f: fig.savefig(f, format="png", dpi=90))
    plt.close(fig)
    return path


def loss_plot(tables: dict[str, pd.DataFrame], path: Path) -> Path | None:
    """One panel per training stage; every loss column against step, on a log axis (symlog when a
    column goes negative, as the hinge GAN terms do; totals are ~100x the terms)."""
    tables = {k: v for k, v in tables.items() if v is not None and len(v)}
    if not tables:
        return None
    fig, axes = plt.subplots(1, len(tables), figsize=(6 * len(tables), 3.6), squeeze=False)
    for ax, (stage, table) in zip(axes[0], tables.items()):
        for column in table.columns:
            if column != "step":
                ax.plot(table["step"], table[column], label=column, linewidth=1)
        if (table.drop(columns="step") > 0).all().all():
            ax.set_yscale("log")
        else:
            ax.set_yscale("symlog", linthresh=1e-2)
        ax.set_title(stage)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    atomic_save(path, lambda f: fig.savefig(f, format="png", dpi=90))
    plt.close(fig)
    return path


def read_losses(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path, sep="\t") if path.is_file() else None


def _img_tag(image: Path | Image.Image, alt: str, *, zoom: int = 1) -> str:
    """An embedded PNG; small sample grids are shown `zoom` times larger (pixelated, not blurred)."""
    image = Image.open(image) if isinstance(image, Path) else image
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    width = min(image.width * zoom, 1150)
    return f'<img alt="{html.escape(alt)}" width="{width}" src="data:image/png;base64,{data}">'


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else html.escape(str(value))


def _fmt_pair(a: float, b: float) -> tuple[str, str]:
    """Two values with enough significant digits to tell them apart (up to 8): a verdict must
    never read "24.59 against 24.59"."""
    for digits in range(4, 9):
        x, y = f"{a:.{digits}g}", f"{b:.{digits}g}"
        if x != y:
            break
    return x, y


BASELINE_NAMES = {"finest_warp": "the finest warp", "copy_exemplar": "copying the exemplar"}
HEADERS = {"model": "model", "finest_warp": "finest warp", "copy_exemplar": "copy exemplar"}


def _image_metrics(metrics: dict) -> list[tuple[str, str | None, str, dict]]:
    """(title, headline, better, {who: value} or {"unavailable": reason}) for every image metric of
    metrics.json; `headline` is the metric's short name where it is one the verdicts speak of (the paired
    metrics and the SWD and FID averages), else None."""
    out = []
    for name, values in metrics.get("paired", {}).items():
        out.append((f"{LABELS[name]} (self pairs)", LABELS[name], PAIRED[name], values))
    swd = metrics.get("swd", {})
    if "unavailable" in swd:
        out.append((f"{LABELS['swd']} (ref pairs)", LABELS["swd"], SET["swd"], swd))
    elif swd:
        out.append((f"{LABELS['swd']}, avg (ref pairs)", LABELS["swd"], SET["swd"], swd))
        for level in swd["per_level"]["model"]:
            if level != "avg":
                out.append((f"{LABELS['swd']} at {level} px", None, SET["swd"],
                            {who: v[level] for who, v in swd["per_level"].items()}))
        if "shared_draws" in swd:
            out.append((f"{LABELS['swd']}, avg, shared draws (not the protocol)", None, SET["swd"],
                        swd["shared_draws"]))
    fid = metrics.get("fid", {})
    if fid:
        out.append((f"{LABELS['fid']} (ref pairs)", LABELS["fid"], SET["fid"], fid))
    return out


def metrics_rows(metrics: dict) -> list[list[str]]:
    """[metric, better, one cell per IMAGE_WHO] rows for the table (escaped HTML); an unavailable metric shows
    its reason."""
    rows = []
    for title, _, better, values in _image_metrics(metrics):
        if "unavailable" in values:
            cells = ["unavailable", html.escape(values["unavailable"])] + [""] * (len(IMAGE_WHO) - 2)
        else:
            cells = [_fmt(values[who]) if who in values else "-" for who in IMAGE_WHO]
        rows.append([html.escape(title), better, *cells])
    return rows


def verdicts(metrics: dict) -> list[str]:
    """One sentence per baseline: on which headline metrics (the paired ones, SWD and FID averages) the model
    beats it and on which it does not, with the values."""
    headline = [(name, better, values) for _, name, better, values in _image_metrics(metrics)
                if name is not None and "model" in values]
    sentences = []
    for who in BASELINES:
        wins, losses = [], []
        for name, better, values in headline:
            if who not in values:
                continue
            model, base = values["model"], values[who]
            beats = model < base if better == "lower" else model > base
            shown_model, shown_base = _fmt_pair(model, base)
            (wins if beats else losses).append(f"{name} ({shown_model} against {shown_base})")
        if wins:
            sentence = f"The model beats {BASELINE_NAMES[who]} on {', '.join(wins)}"
            sentences.append(sentence + (f"; but not on {', '.join(losses)}." if losses else "."))
        elif losses:
            sentences.append(f"The model does not beat {BASELINE_NAMES[who]} on {', '.join(losses)}.")
    return sentences


def correspondence_rows(correspondence: dict) -> list[list[str]]:
    rows = []
    per_level = correspondence["per_level"]
    for level in sorted(per_level["trained"], key=int):
        for key in ("epe_px", "acc_1px", "acc_3px"):
            rows.append([f"level {level}", key] + [_fmt(per_level[w][level][key]) if w in per_level else "-"
                                                     for w in WHO])
    return rows


def _table(header: list[str], rows: list) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = """body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:8px 0 20px}td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}
th{background:#f0f0f0}td:first-child{white-space:nowrap}
img{max-width:100%;image-rendering:pixelated;border:1px solid #ddd}
.note{background:#fff6d6;border:1px solid #e5c96b;padding:8px 12px;margin:12px 0}
.meta{color:#555;font-size:90%}"""


PROTOCOL_TEXT = {
    "cocosnet": "CoCosNet protocol: paired metrics on val self pairs (the true target exists); SWD and FID on val "
                "ref pairs against their targets (pytorch-fid Inception); outputs and targets scored as JPG.",
    "pose_transfer": "Pose-transfer protocol (docs/evaluation.md): outputs cropped back to the photo's size and "
                     "scored as PNG against the dataset's own photos; paired metrics (SSIM as GFLA's ssim_256, "
                     "LPIPS AlexNet v0.1) on val self pairs; FID of the same outputs against the whole training "
                     "split (torchvision's ImageNet Inception); SWD on val ref pairs.",
}


def write_report(path: Path, metrics: dict, *, figures: dict[str, Path], grids: dict[str, Path | Image.Image],
                 info: dict[str, str], notes: list[str]) -> Path:
    """figures (plots) and grids (sample grids, shown 2x): title -> image, embedded as base64 PNG."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>CoCosNet v2 evaluation</title>"
             f"<style>{STYLE}</style></head><body><h1>CoCosNet v2 evaluation</h1>"]
    parts.append("<p class='meta'>" + " · ".join(f"{html.escape(k)}: {html.escape(str(v))}"
                                                  for k, v in info.items()) + "</p>")
    parts += [f"<p class='verdict'><b>{html.escape(v)}</b></p>" for v in verdicts(metrics)]
    parts += [f"<div class='note'>{html.escape(n)}</div>" for n in notes]
    parts.append("<h2>Image metrics</h2><p>The model against two baselines: the finest level's warp of the "
                 "exemplar (what the generator is given) and the exemplar copied as the output. "
                 + html.escape(PROTOCOL_TEXT.get(metrics.get("protocol", {}).get("name", "cocosnet"), "")) + "</p>")
    parts.append(_table(["metric", "better", *(HEADERS[w] for w in IMAGE_WHO)], metrics_rows(metrics)))
    if "correspondence" in metrics:
        parts.append("<h2>Correspondence accuracy</h2><p>Top-1 match against the synthetic ground truth, in each "
                     "level's own pixels: the trained model, the same architecture untrained, and the identity "
                     "mapping.</p>")
        parts.append(_table(["level", "metric", *WHO], correspondence_rows(metrics["correspondence"])))
    for title, image in figures.items():
        parts.append(f"<h2>{html.escape(title)}</h2>{_img_tag(image, title)}")
    for title, image in grids.items():
        parts.append(f"<h2>{html.escape(title)}</h2>{_img_tag(image, title, zoom=2)}")
    parts.append("</body></html>")
    atomic_write(path, "\n".join(parts))
    return path
