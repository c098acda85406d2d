"""Experiment comparison: evaluate runs from MLflow, ranked by a metric, with the params that differ.

Works on the DataFrame `mlflow.search_runs` returns (columns run_id, start_time,
tags.*, params.*, metrics.*), so it is a pure pandas function; fetching runs
is `cocosnet.tracking.search_runs`.
"""

from __future__ import annotations

import math

import pandas as pd

from cocosnet.metrics.schema import DEFAULT_RANKING, SUMMARY_METRICS, better

# Characters that would change how a copied MLflow value renders in Markdown.
_MARKDOWN = str.maketrans({c: "\\" + c for c in "\\`*_[]<>|#"} | {"\n": " ", "\r": " "})


def higher_is_better(metric: str) -> bool:
    try:
        return better(metric) == "higher"
    except ValueError as exc:
        raise ValueError(f"{exc}; say which way is better with --direction higher|lower") from None


def escape(text: str) -> str:
    """`text` as literal Markdown table-cell text."""
    return str(text).translate(_MARKDOWN)


def differing_params(runs: pd.DataFrame) -> list[str]:
    """params.* columns whose values are not all equal across `runs` (a missing value counts as a value)."""
    cols = [c for c in runs.columns if c.startswith("params.")]
    return sorted(c for c in cols if runs[c].fillna("<unset>").astype(str).nunique() > 1)


def rank_runs(runs: pd.DataFrame, metric: str = DEFAULT_RANKING, *, higher: bool | None = None) -> pd.DataFrame:
    """Evaluate runs sorted best first by `metrics.<metric>`; runs without it go last."""
    column = f"metrics.{metric}"
    if column not in runs.columns:
        known = sorted(c.removeprefix("metrics.") for c in runs.columns if c.startswith("metrics."))
        raise ValueError(f"no run has the metric {metric!r}; the runs have: {known}")
    if "tags.stage" in runs.columns:
        runs = runs[runs["tags.stage"] == "evaluate"]
    higher = higher_is_better(metric) if higher is None else higher
    return runs.sort_values([column, "start_time"], ascending=[not higher, True], na_position="last",
                            kind="stable").reset_index(drop=True)


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    if value == "":
        return '""'
    return escape(value)


def run_label(run: pd.Series) -> str:
    """The name a person knows a run by: its DVC experiment (`dvc exp show`), else the pipeline run
    (`make pipeline`, the flow) it belongs to; "" for a run with neither tag."""
    for tag in ("tags.dvc_experiment", "tags.pipeline"):
        value = run.get(tag)
        if isinstance(value, str) and value:
            return value
    return ""


def to_markdown(ranked: pd.DataFrame, metric: str, *, higher: bool | None = None,
                experiment_names: dict[str, str] | None = None) -> str:
    higher = higher_is_better(metric) if higher is None else higher
    if ranked.empty:
        return f"# Experiment comparison\n\nNo evaluate runs with `{metric}` were found.\n"
    params = differing_params(ranked)
    metrics = [metric] + [m for m in SUMMARY_METRICS if m != metric and f"metrics.{m}" in ranked.columns]
    header = ["rank", "run", "DVC experiment / pipeline run", "experiment", "started"] + [escape(m) for m in metrics] + [
        escape(p.removeprefix("params.")) for p in params]
    rows = []
    for i, run in ranked.iterrows():
        experiment = (experiment_names or {}).get(run.get("experiment_id"), run.get("experiment_id", ""))
        started = run["start_time"].strftime("%Y-%m-%d %H:%M") if pd.notna(run.get("start_time")) else "—"
        rows.append([str(i + 1), f"`{str(run['run_id'])[:8]}`", _cell(run_label(run)), _cell(experiment), started]
                    + [_cell(run.get(f"metrics.{m}")) for m in metrics] + [_cell(run.get(p)) for p in params])
    lines = [
        "# Experiment comparison", "",
        f"{len(ranked)} evaluate runs ranked by {escape(metric)} ({'higher' if higher else 'lower'} is better). "
        + (f"Params that differ between them: {len(params)}." if params else "All their params are equal."), "",
        "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
