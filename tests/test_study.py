"""The correspondence study's bookkeeping: the runs file, skipping finished runs, the summary schema,
its pipeline file and params staying in step with the demo's, and the `make study` driver."""

import json
import os
import sys
import textwrap

import pytest
import yaml

from cocosnet.config import ConfigError, config_from_dict, merge, read_yaml
from cocosnet.study import StudyRun, is_finished, read_runs, result_path, run_result, summary
from tests.helpers import ROOT


def per_level(epes):
    return {str(i): {"epe_px": e, "acc_1px": 0.5, "acc_3px": 0.9, "pixels": 10} for i, e in enumerate(epes)}


def score(trained, identity=(1, 2, 4, 8), untrained=(3, 6, 12, 24), gru_off=(1, 2, 3, 4)):
    return {"steps": 300, "pairs": 120, "crop_size": 128,
            "per_level": {"trained": per_level(trained), "identity": per_level(identity),
                          "untrained": per_level(untrained), "trained_gru_off": per_level(gru_off)}}


def test_the_committed_runs_and_params_are_valid_and_in_step_with_params_yaml():
    runs = read_runs(ROOT / "study/runs.yaml")
    assert runs[0].name == "full" and {"no_gru", "handed_down_1", "no_random_search", "iters_1", "iters_3"} <= {
        r.name for r in runs}
    base = read_yaml(ROOT / "params.yaml")
    expected = merge(base, read_yaml(ROOT / "profiles/study.yaml")) | {"profile": "study"}
    assert read_yaml(ROOT / "study/params.yaml") == expected, "regenerate study/params.yaml (see profiles/study.yaml)"
    cfg = config_from_dict(expected)
    assert cfg.data.crop_size >= 128 and len(cfg.model.align.widths) >= 4
    for run in runs:  # every run's overrides make a valid config
        raw = json.loads(json.dumps(expected))
        for key, value in run.overrides.items():
            node = raw
            *parents, last = key.split(".")
            for p in parents:
                node = node[p]
            assert last in node, f"{run.name}: unknown key {key}"
            node[last] = value
        config_from_dict(raw)


def test_bad_runs_files_name_the_file(tmp_path):
    path = tmp_path / "runs.yaml"
    path.write_text("runs:\n  no_gru: {}\n")
    with pytest.raises(ConfigError, match="runs.yaml.*named `full`"):
        read_runs(path)
    path.write_text("runs:\n  full: {}\n  identity: {}\n")
    with pytest.raises(ConfigError, match="runs.identity: the name is reserved"):
        read_runs(path)
    path.write_text("runs:\n  full: {set: [1]}\n")
    with pytest.raises(ConfigError, match="runs.full: expected `set"):
        read_runs(path)


def test_overrides_become_dvc_set_arguments():
    run = StudyRun("x", {"model.correspondence.gru": [False, False, False], "pretrain.steps": 150,
                         "model.correspondence.pose_geometry": 0.0})
    assert run.cli("study/params.yaml") == [
        "-S", "study/params.yaml:model.correspondence.gru=[false,false,false]",
        "-S", "study/params.yaml:model.correspondence.pose_geometry=0.0",
        "-S", "study/params.yaml:pretrain.steps=150"]


def test_a_run_is_finished_only_for_its_own_overrides(tmp_path):
    run = StudyRun("no_gru", {"model.correspondence.gru": [False, False, False]})
    assert not is_finished(tmp_path, run)
    result_path(tmp_path, run).write_text(json.dumps(run_result(run, score((1, 1, 1, 1)), 3.0)))
    assert is_finished(tmp_path, run)
    assert not is_finished(tmp_path, StudyRun("no_gru", {"model.correspondence.gru": [False, True, True]}))
    result_path(tmp_path, run).write_text("{trunc")
    assert not is_finished(tmp_path, run)


def test_summary_schema_baselines_and_targets(tmp_path):
    runs = [StudyRun("full", {}), StudyRun("no_gru", {"g": 1}), StudyRun("iters_1", {"i": 1})]
    for run, trained in zip(runs[:2], [(1, 1.5, 2, 3), (1, 2, 3, 5)]):
        result_path(tmp_path, run).write_text(json.dumps(run_result(run, score(trained), 10.0)))
    out = summary(runs, tmp_path, profile="study")
    assert out["profile"] == "study" and out["crop_size"] == 128 and out["missing"] == ["iters_1"]
    assert set(out["runs"]) == {"full", "no_gru", "identity", "untrained", "full_gru_off_at_eval"}
    assert list(out["runs"]["full"]["per_level"]) == ["0", "1", "2", "3"]
    assert out["runs"]["full"]["per_level"]["3"] == {"epe_px": 3, "acc_1px": 0.5, "acc_3px": 0.9}
    assert out["runs"]["identity"]["per_level"]["3"]["epe_px"] == 8
    assert out["minutes"] == {"full": 10.0, "no_gru": 10.0} and out["steps"]["full"] == 300
    t = out["targets"]
    assert t["level"] == "3" and t["full_over_identity"] == pytest.approx(3 / 8) and t["full_at_most_half_identity"]
    assert t["gru_gain"] == pytest.approx(1 - 3 / 5) and t["gru_gain_at_least_20pct"]
    assert t["gru_gain_at_eval"] == pytest.approx(1 - 3 / 4)
    scored = score((1, 1.5, 2, 3))  # a run scored with the bounds carries its best-of-k floor and ranking accuracy
    scored["per_level"]["trained"]["3"].update(best_of_k_epe_px=2.0, rank_acc=0.4, epe_beyond_3px=1.0)
    result_path(tmp_path, runs[0]).write_text(json.dumps(run_result(runs[0], scored, 10.0)))
    assert summary(runs, tmp_path, profile="study")["runs"]["full"]["per_level"]["3"] == {
        "epe_px": 3, "acc_1px": 0.5, "acc_3px": 0.9, "best_of_k_epe_px": 2.0, "rank_acc": 0.4}


FAKE_DVC = textwrap.dedent("""\
    import json, pathlib, sys
    args = sys.argv[1:]
    sets = [a for a, prev in zip(args[1:], args) if prev == "-S"]
    pathlib.Path("study/params.yaml").write_text("changed: true\\n")  # dvc exp run edits the params file
    log = pathlib.Path("calls.txt")
    log.write_text(log.read_text() + " ".join(sets) + "\\n" if log.exists() else " ".join(sets) + "\\n")
    targets = pathlib.Path("targets.txt")
    targets.write_text((targets.read_text() if targets.exists() else "") + args[2] + "\\n")
    if any("fail" in s for s in sets):
        sys.exit(3)
    if args[2].endswith(":evaluate"):
        who = {"model": 0.02, "finest_warp": 0.03, "copy_exemplar": 0.05}
        paired = {"l1": who, "psnr": {k: 30 - 100 * v for k, v in who.items()},
                  "ssim": {k: 1 - 5 * v for k, v in who.items()}, "lpips": {"unavailable": "no"}}
        reports = pathlib.Path("study/reports")
        (reports / "eval").mkdir(parents=True, exist_ok=True)
        (reports / "metrics.json").write_text(json.dumps({"pairs": 4, "ref_pairs": 4, "paired": paired,
            "swd": {k: 1000 * v for k, v in who.items()}}))
        (reports / "eval/samples.png").write_bytes(b"grid of " + " ".join(sets).encode())
        sys.exit(0)
    per = {str(i): {"epe_px": 1.0 + i, "acc_1px": 0.5, "acc_3px": 0.9, "pixels": 5} for i in range(4)}
    pathlib.Path("study/score.json").write_text(json.dumps({"steps": 7, "pairs": 3, "crop_size": 128,
        "per_level": {"trained": per, "identity": per, "untrained": per}}))
""")


def run_driver(tmp_path, runs_yaml, *args, runs_file="runs.yaml"):
    import subprocess

    (tmp_path / "study").mkdir(exist_ok=True)
    (tmp_path / f"study/{runs_file}").write_text(runs_yaml)
    (tmp_path / "study/params.yaml").write_text("profile: study\ndata: {crop_size: 128}\ntrain: {steps: 40}\n")
    (tmp_path / "dvc.py").write_text(FAKE_DVC)
    fake = tmp_path / "dvc"
    fake.write_text(f"#!/bin/sh\nexec {sys.executable} {tmp_path / 'dvc.py'} \"$@\"\n")
    fake.chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "-m", "stages.study", "--dvc", str(fake), *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True)


def test_the_driver_runs_each_run_once_keeps_results_and_restores_params(tmp_path):
    runs = "runs:\n  full: {}\n  no_gru: {set: {model.correspondence.gru: [false, false, false]}}\n"
    done = run_driver(tmp_path, runs)
    assert done.returncode == 0, done.stderr
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert calls == ["", "study/params.yaml:model.correspondence.gru=[false,false,false]"]
    assert (tmp_path / "study/params.yaml").read_text().startswith("profile: study\n")
    assert (tmp_path / "targets.txt").read_text().splitlines() == ["study/dvc.yaml:score"] * 2
    out = json.loads((tmp_path / "reports/study/correspondence.json").read_text())
    assert set(out["runs"]) == {"full", "no_gru", "identity", "untrained"} and out["missing"] == []
    assert (tmp_path / "reports/study/correspondence.png").stat().st_size > 0
    again = run_driver(tmp_path, runs + "  iters_1: {set: {model.correspondence.iters: [1, 1, 1]}}\n")
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "calls.txt").read_text().splitlines()[2:] == [
        "study/params.yaml:model.correspondence.iters=[1,1,1]"]  # full and no_gru were kept


def test_a_failed_run_keeps_the_finished_ones_and_stops(tmp_path):
    runs = "runs:\n  full: {}\n  bad: {set: {fail: 1}}\n"
    done = run_driver(tmp_path, runs)
    assert done.returncode != 0
    assert (tmp_path / "reports/study/runs/full.json").exists()
    assert not (tmp_path / "reports/study/runs/bad.json").exists()
    assert (tmp_path / "study/params.yaml").read_text().startswith("profile: study\n")
    assert yaml.safe_load((tmp_path / "reports/study/correspondence.json").read_text())["missing"] == ["bad"]


def test_the_generation_study_trains_and_evaluates_each_run_and_files_its_metrics_and_the_full_grid(tmp_path):
    runs = "runs:\n  full: {}\n  no_recon: {set: {loss_weights.recon: 0.0, train.steps: 20}}\n"
    done = run_driver(tmp_path, runs, "--gan", runs_file="gan_runs.yaml")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "targets.txt").read_text().splitlines() == ["study/dvc.yaml:evaluate"] * 2
    out = json.loads((tmp_path / "reports/study/generation.json").read_text())
    assert out["missing"] == [] and out["crop_size"] == 128 and out["steps"] == {"full": 40, "no_recon": 20}
    assert out["runs"]["full"]["l1"] == {"model": 0.02, "finest_warp": 0.03, "copy_exemplar": 0.05}
    assert set(out["runs"]["full"]) == {"l1", "psnr", "ssim", "swd"}
    t = out["targets"]
    assert t["l1_ratio"] == pytest.approx(2 / 3) and t["l1_ratio_at_most_0.85"]
    assert t["ssim_gain"] == pytest.approx(0.05) and t["swd_below_warp"]
    grid = (tmp_path / "reports/study/generation_samples.png").read_bytes()
    assert grid == b"grid of "  # the full run's grid, not the ablation's
    assert not (tmp_path / "reports/study/correspondence.json").exists()
