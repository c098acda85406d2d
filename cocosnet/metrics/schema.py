"""The layout of `reports/metrics.json`, in one place.

The evaluate stage builds it, `flat_metrics` turns it into the MLflow metric
names, the report reads its tables and directions from here, and `make compare`
ranks runs by those names with `higher_is_better`. A new metric is added here
once and appears everywhere.

    {"pairs": int, "ref_pairs": int, "jpeg_quality": int, "vgg_weights": str,
     "protocol": {"name": "cocosnet" | "pose_transfer", ...: str},   # cocosnet/metrics/pose_transfer.py
     "paired": {"l1" | "psnr" | "ssim": {who: f}, "lpips": {who: f} | {"unavailable": str}},   # who in IMAGE_WHO
     "swd": {who: f,                                        # avg over levels, PGGAN protocol
             "per_level": {who: {"<px>": f, ..., "avg": f}},
             "shared_draws": {who: f},                      # the common-random-numbers variant
             "images": int, "resolution": int, "seed": int} | {"unavailable": str},
     "fid": {who: f, "images": int, "weights": str} | {"unavailable": str},   # pose_transfer: against the
                                                                             # training split, on the self pairs
     "correspondence": {"epe_px" | "acc_1px" | "acc_3px": {who: f},   # at the finest level
                        "per_level": {who: {"<level>": {"epe_px": f, "acc_1px": f, "acc_3px": f,
                                                         "pixels": int}}}}}
"""

from __future__ import annotations

from typing import Literal

Better = Literal["lower", "higher"]

# The output, and its baselines: the finest level's warp of the exemplar (the generator's own input), and
# the exemplar copied as the output.
IMAGE_WHO = ("model", "finest_warp", "copy_exemplar")
BASELINES = IMAGE_WHO[1:]
CORRESPONDENCE_WHO = ("trained", "untrained", "identity")
PAIRED: dict[str, Better] = {"l1": "lower", "psnr": "higher", "ssim": "higher", "lpips": "lower"}
SET: dict[str, Better] = {"swd": "lower", "fid": "lower"}
CORRESPONDENCE: dict[str, Better] = {"epe_px": "lower", "acc_1px": "higher", "acc_3px": "higher"}
LABELS = {"l1": "L1", "psnr": "PSNR", "ssim": "SSIM", "lpips": "LPIPS", "swd": "SWD x1e3", "fid": "FID",
          "epe_px": "end-point error (px)", "acc_1px": "within 1 px", "acc_3px": "within 3 px"}

# The columns `make compare` shows besides the ranking metric.
SUMMARY_METRICS = ("swd.model", "swd.finest_warp", "fid.model", "paired.ssim.model", "paired.ssim.finest_warp",
                   "paired.psnr.model", "paired.l1.model", "paired.l1.finest_warp",
                   "correspondence.epe_px.trained", "correspondence.acc_3px.trained")
DEFAULT_RANKING = "swd.model"


def better(name: str) -> Better:
    """Which way is better for an MLflow metric name from `flat_metrics` (e.g. `swd.64px.model`)."""
    for part in reversed(name.split(".")):
        for table in (PAIRED, SET, CORRESPONDENCE):
            if part in table:
                return table[part]
    raise ValueError(f"{name!r} is not a metric of reports/metrics.json; known terms: "
                     f"{sorted(PAIRED) + sorted(SET) + sorted(CORRESPONDENCE)}")


def higher_is_better(name: str) -> bool:
    return better(name) == "higher"


def losses_to_baselines(metrics: dict) -> list[str]:
    """Where a baseline scores at least as well as the model, as `<metric> vs <baseline>`: the paired
    metrics (val self pairs) against every baseline, and the set metrics (SWD, FID) against the finest
    warp. The copied exemplar is left out of the set metrics: it is a real photo, so its realism is a
    photo's, in the wrong pose. Empty when the model beats them all: the evaluate stage registers a
    model in MLflow only then (docs/scale.md)."""
    lost = []
    groups = [(metrics.get("paired", {}).get(name, {}), name, direction, BASELINES) for name, direction in PAIRED.items()]
    groups += [(metrics.get(name, {}), name, direction, ("finest_warp",)) for name, direction in SET.items()]
    for scores, name, direction, baselines in groups:
        if "model" not in scores:
            continue
        for who in baselines:
            if who in scores and not (scores["model"] < scores[who] if direction == "lower"
                                      else scores["model"] > scores[who]):
                lost.append(f"{name} vs {who}")
    return lost


def flat_metrics(metrics: dict) -> dict[str, float]:
    """The numeric leaves of metrics.json as MLflow metric names (dots kept, levels as `level<N>`,
    SWD resolutions as `<N>px`)."""
    flat: dict[str, float] = {}
    for name, d in metrics.get("paired", {}).items():
        flat.update({f"paired.{name}.{who}": v for who, v in d.items() if who in IMAGE_WHO})
    for group in SET:
        d = metrics.get(group, {})
        flat.update({f"{group}.{who}": d[who] for who in IMAGE_WHO if who in d})
    swd = metrics.get("swd", {})
    for who, levels in swd.get("per_level", {}).items():
        flat.update({f"swd.{res}px.{who}": v for res, v in levels.items() if res != "avg"})
    flat.update({f"swd.shared_draws.{who}": v for who, v in swd.get("shared_draws", {}).items()})
    corr = metrics.get("correspondence", {})
    for key in CORRESPONDENCE:
        flat.update({f"correspondence.{key}.{who}": v for who, v in corr.get(key, {}).items()})
    for who, levels in corr.get("per_level", {}).items():
        for level, d in levels.items():
            if d["pixels"]:
                flat.update({f"correspondence.level{level}.{key}.{who}": d[key] for key in CORRESPONDENCE})
    return flat
