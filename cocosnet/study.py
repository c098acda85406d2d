"""The studies' bookkeeping: their runs, one result file per finished run, the summaries.

A run is a name and `-S` overrides of study/params.yaml (study/runs.yaml for the correspondence
study, study/gan_runs.yaml for the generation study). `python -m stages.study` (`make study`,
`make study-gan`) runs each as a DVC experiment and files its result under
reports/study/runs/<name>.json (reports/study/gan_runs/ for the generation study); this module
decides what is finished, and builds reports/study/correspondence.json and generation.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cocosnet.config import ConfigError

BASELINES = ("identity", "untrained")  # taken from the `full` run's score
# Also from the `full` run's score: its trained weights evaluated with the GRU update off (search only).
GRU_OFF_AT_EVAL = "full_gru_off_at_eval"
PER_LEVEL_KEYS = ("epe_px", "acc_1px", "acc_3px")
BOUND_KEYS = ("best_of_k_epe_px", "rank_acc")  # in runs scored since the score stage reports them


@dataclass(frozen=True)
class StudyRun:
    name: str
    overrides: dict[str, Any]  # dotted params key -> value
    note: str = ""

    def cli(self, params: str) -> list[str]:
        """`dvc exp run` -S arguments, values in YAML flow style (lists as [a,b])."""
        out = []
        for key, value in sorted(self.overrides.items()):
            text = yaml.safe_dump(value, default_flow_style=True).strip()
            text = text.removesuffix("...").strip().replace(", ", ",")
            out += ["-S", f"{params}:{key}={text}"]
        return out


def read_runs(path: Path) -> list[StudyRun]:
    """study/runs.yaml: `runs: {name: {set: {key: value}, note: ...}}`, in order; `full` first."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the study's runs ({exc})") from None
    runs = raw.get("runs") if isinstance(raw, dict) else None
    if not isinstance(runs, dict) or "full" not in runs:
        raise ConfigError(f"{path}: expected a mapping `runs:` with a run named `full`")
    out = []
    for name, spec in runs.items():
        spec = spec or {}
        if not isinstance(spec, dict) or not isinstance(spec.get("set", {}), dict):
            raise ConfigError(f"{path}: runs.{name}: expected `set: {{key: value}}` and an optional `note`")
        if name in BASELINES or name == GRU_OFF_AT_EVAL:
            raise ConfigError(f"{path}: runs.{name}: the name is reserved for a baseline")
        out.append(StudyRun(str(name), dict(spec.get("set") or {}), str(spec.get("note", ""))))
    return out


def result_path(folder: Path, run: StudyRun) -> Path:
    return folder / f"{run.name}.json"


def is_finished(folder: Path, run: StudyRun) -> bool:
    """A result exists for exactly this run's overrides (changed overrides mean a rerun)."""
    path = result_path(folder, run)
    if not path.exists():
        return False
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return saved.get("overrides") == run.overrides


def run_result(run: StudyRun, score: dict, minutes: float) -> dict:
    return {"name": run.name, "overrides": run.overrides, "note": run.note, "minutes": round(minutes, 1),
            **{k: score[k] for k in ("steps", "pairs", "crop_size", "per_level")}}


def _levels(per_level: dict) -> dict:
    return {level: {k: d[k] for k in PER_LEVEL_KEYS + BOUND_KEYS if k in d} for level, d in per_level.items()}


def summary(runs: list[StudyRun], folder: Path, *, profile: str) -> dict:
    """reports/study/correspondence.json from the finished runs' files."""
    done = {r.name: json.loads(result_path(folder, r).read_text(encoding="utf-8"))
            for r in runs if is_finished(folder, r)}
    out: dict = {"profile": profile, "crop_size": None, "minutes": {}, "steps": {}, "runs": {}, "overrides": {},
                 "missing": [r.name for r in runs if r.name not in done]}
    for name, res in done.items():
        out["crop_size"] = res["crop_size"]
        out["pairs"] = res["pairs"]
        out["minutes"][name] = res["minutes"]
        out["steps"][name] = res["steps"]
        out["overrides"][name] = res["overrides"]
        out["runs"][name] = {"per_level": _levels(res["per_level"]["trained"])}
    if "full" in done:
        for who in BASELINES:
            out["runs"][who] = {"per_level": _levels(done["full"]["per_level"][who])}
        if "trained_gru_off" in done["full"]["per_level"]:
            out["runs"][GRU_OFF_AT_EVAL] = {"per_level": _levels(done["full"]["per_level"]["trained_gru_off"])}
        out["targets"] = targets(out["runs"])
    return out


def targets(runs: dict) -> dict:
    """The issue's two targets at the finest level: full <= identity / 2, and the GRU's gain >= 20%."""
    finest = str(max(int(k) for k in runs["full"]["per_level"]))
    epe = {name: r["per_level"][finest]["epe_px"] for name, r in runs.items()}
    out = {"level": finest, "full_over_identity": epe["full"] / epe["identity"]}
    out["full_at_most_half_identity"] = out["full_over_identity"] <= 0.5
    if "no_gru" in epe:
        out["gru_gain"] = 1 - epe["full"] / epe["no_gru"]
        out["gru_gain_at_least_20pct"] = out["gru_gain"] >= 0.2
    if GRU_OFF_AT_EVAL in epe:  # the same weights: what the GRU's update itself adds
        out["gru_gain_at_eval"] = 1 - epe["full"] / epe[GRU_OFF_AT_EVAL]
    return out


CANDIDATES = ("model", "finest_warp", "copy_exemplar")


def gan_run_result(run: StudyRun, metrics: dict, *, steps: int, crop_size: int, minutes: float) -> dict:
    """One generation-study run from the evaluate stage's metrics.json: paired metrics on the val self
    pairs and SWD on the val ref pairs, per candidate."""
    paired = {m: {who: metrics["paired"][m][who] for who in CANDIDATES} for m in ("l1", "psnr", "ssim")}
    return {"name": run.name, "overrides": run.overrides, "note": run.note, "minutes": round(minutes, 1),
            "steps": steps, "crop_size": crop_size, "pairs": metrics["pairs"], "ref_pairs": metrics["ref_pairs"],
            "metrics": {**paired, "swd": {who: metrics["swd"][who] for who in CANDIDATES}}}


def gan_targets(metrics: dict) -> dict:
    """The generation study's targets: SSIM at least 0.03 above the finest warp's, L1 at most 0.85 of
    the warp's (val self pairs), SWD below the warp's (val ref pairs)."""
    ssim_gain = metrics["ssim"]["model"] - metrics["ssim"]["finest_warp"]
    l1_ratio = metrics["l1"]["model"] / metrics["l1"]["finest_warp"]
    swd_ratio = metrics["swd"]["model"] / metrics["swd"]["finest_warp"]
    return {"ssim_gain": ssim_gain, "ssim_gain_at_least_0.03": ssim_gain >= 0.03, "l1_ratio": l1_ratio,
            "l1_ratio_at_most_0.85": l1_ratio <= 0.85, "swd_ratio": swd_ratio, "swd_below_warp": swd_ratio < 1}


def gan_summary(runs: list[StudyRun], folder: Path, *, profile: str) -> dict:
    """reports/study/generation.json from the finished runs' files; targets from the `full` run."""
    done = {r.name: json.loads(result_path(folder, r).read_text(encoding="utf-8"))
            for r in runs if is_finished(folder, r)}
    out: dict = {"profile": profile, "crop_size": None, "minutes": {}, "steps": {}, "runs": {}, "overrides": {},
                 "notes": {}, "missing": [r.name for r in runs if r.name not in done]}
    for name, res in done.items():
        out["crop_size"], out["pairs"], out["ref_pairs"] = res["crop_size"], res["pairs"], res["ref_pairs"]
        out["minutes"][name] = res["minutes"]
        out["steps"][name] = res["steps"]
        out["overrides"][name] = res["overrides"]
        out["notes"][name] = res["note"]
        out["runs"][name] = res["metrics"]
    if "full" in done:
        out["targets"] = gan_targets(done["full"]["metrics"])
    return out
