"""The evaluate stage end to end on the tiny set: JPG outputs, metrics.json schema, the offline report,
staged resume, MLflow logging, and the experiment comparison."""

import dataclasses
import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from cocosnet import evaluate as evaluation
from cocosnet.compare import differing_params, rank_runs, to_markdown
from cocosnet.evaluation_run import run_evaluation
from cocosnet.metrics.images import load_folder_pair
from cocosnet.metrics.scoring import score_folders
from cocosnet.models.cocosnet import CoCosNet
from cocosnet.tracking import PIPELINE_ENV, search_runs
from cocosnet.train.checkpoint import load_model, save_model
from tests.helpers import prepare_data, random_pytorch_fid_state, tiny_training_config


@pytest.fixture(scope="module")
def setup(tiny_raw, tmp_path_factory):
    processed = tmp_path_factory.mktemp("processed")
    prepare_data(tiny_raw, processed)
    cfg = tiny_training_config(tiny_raw, processed)
    cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, max_pairs=6, batch_size=2))
    torch.manual_seed(0)
    model_path = tmp_path_factory.mktemp("model") / "train.pt"
    save_model(model_path, CoCosNet.from_config(cfg), config=dataclasses.asdict(cfg), stage="train", step=4, inputs={})
    return cfg, processed, model_path


def run_stage(cfg, model_path, reports, monkeypatch, uri):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv(PIPELINE_ENV, "eval-test")
    reports.mkdir(parents=True, exist_ok=True)
    run_evaluation(cfg, model_path, reports, reports / "eval" / "outputs")
    return json.loads((reports / "metrics.json").read_text())


def test_evaluate_stage_writes_outputs_metrics_report_and_mlflow(setup, tmp_path, monkeypatch):
    cfg, processed, model_path = setup
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    metrics = run_stage(cfg, model_path, tmp_path / "reports", monkeypatch, uri)
    assert metrics["pairs"] == 6 and metrics["ref_pairs"] == 6
    for name in ("l1", "psnr", "ssim"):
        assert set(metrics["paired"][name]) == {"model", "finest_warp", "copy_exemplar"}
    assert "unavailable" in metrics["paired"]["lpips"]
    assert metrics["fid"] == {"unavailable": metrics["fid"]["unavailable"]}
    assert "eval.inception_weights" in metrics["fid"]["unavailable"]
    swd = metrics["swd"]
    assert set(swd["per_level"]["model"]) == {"64", "32", "16", "avg"}
    assert swd["model"] == swd["per_level"]["model"]["avg"]
    corr = metrics["correspondence"]
    assert set(corr["per_level"]) == {"trained", "untrained", "identity"}
    assert set(corr["per_level"]["identity"]) == {"0", "1", "2", "3"}
    assert set(corr["epe_px"]) == {"trained", "untrained", "identity"}

    outputs = tmp_path / "reports" / "eval" / "outputs"
    table = pd.read_csv(outputs / "ref" / "pairs.csv")
    assert list(table.columns) == ["name", "target", "exemplar"] and list(table["name"]) == [
        f"{i:05d}.jpg" for i in range(6)]
    real, fake = load_folder_pair(outputs / "ref" / "real", outputs / "ref" / "fake")
    assert real.shape == fake.shape == (6, 64, 64, 3)
    assert not (outputs / "ref" / "corr").exists() and not (outputs / "self.partial").exists()
    assert not (outputs.parent / "outputs.partial").exists()
    # The metrics are those of the files on disk: re-scoring the folders gives the same numbers.
    rescored = score_folders(outputs / "ref" / "real", outputs / "ref" / "fake", paired=False, swd_size=0,
                     inception_weights="", seed=cfg.eval.seed)
    assert rescored["swd"]["avg"] == pytest.approx(swd["model"]) and "unavailable" in rescored["fid"]
    rescored = score_folders(outputs / "self" / "real", outputs / "self" / "fake", paired=True, swd_size=32,
                     inception_weights="", seed=0)
    assert rescored["paired"]["ssim"] == pytest.approx(metrics["paired"]["ssim"]["model"], rel=1e-5)
    assert set(rescored["swd"]) == {"32", "16", "avg"}

    report = (tmp_path / "reports" / "eval" / "report.html").read_text()
    assert not re.search(r"(src|href)=['\"](https?:|file:|//)", report)  # self-contained
    assert report.count("data:image/png;base64,") >= 3  # correspondence plot + two sample grids
    assert "copy exemplar" in report and "FID unavailable" in report and "randomly initialised VGG19" in report
    assert "finest warp" in report
    assert re.search(r"The model (beats|does not beat) the finest warp on ", report)

    runs = search_runs(uri, ["cocosnet-demo"], "tags.stage = 'evaluate'")
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["metrics.swd.model"] == pytest.approx(swd["model"])
    assert run["metrics.paired.ssim.model"] == pytest.approx(metrics["paired"]["ssim"]["model"])
    assert run["metrics.correspondence.level0.epe_px.identity"] == pytest.approx(
        corr["per_level"]["identity"]["0"]["epe_px"])
    assert run["tags.fid"] == "unavailable"
    assert run["metrics.swd.shared_draws.model"] == pytest.approx(swd["shared_draws"]["model"])
    assert run["metrics.paired.l1.finest_warp"] == pytest.approx(metrics["paired"]["l1"]["finest_warp"])
    assert run["metrics.swd.finest_warp"] == pytest.approx(swd["finest_warp"])

    # A second run writes the same bytes: no timestamps or run ids in the report, metrics or images.
    run_stage(cfg, model_path, tmp_path / "again", monkeypatch, uri)
    for rel in ("metrics.json", "eval/report.html", "eval/samples.png", "eval/correspondence.png",
                "eval/outputs/ref/fake/00000.jpg"):
        assert (tmp_path / "again" / rel).read_bytes() == (tmp_path / "reports" / rel).read_bytes(), rel


def test_a_killed_evaluation_reuses_its_finished_batches(setup, tmp_path):
    cfg, processed, model_path = setup
    out = tmp_path / "outputs"  # the staging folder is outputs.partial/<set>, beside it
    pairs = pd.read_parquet(processed / "pairs.parquet")
    table = evaluation.eval_pairs(pairs, 6, "ref")
    torch.manual_seed(0)
    model = CoCosNet.from_config(cfg)
    calls = []
    original = model.forward

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed during the third batch
        return original(*args, **kwargs)

    model.forward = failing
    with pytest.raises(KeyboardInterrupt):
        evaluation.generate(cfg, model, None, table, out / "ref", device=torch.device("cpu"), with_gt=False,
                            fingerprint="m1")
    assert (tmp_path / "outputs.partial" / "ref" / "fake" / "00003.jpg").exists() and not (out / "ref").exists()
    calls.clear()
    model.forward = lambda *a, **k: calls.append(1) or original(*a, **k)
    done = evaluation.generate(cfg, model, None, table, out / "ref", device=torch.device("cpu"),
                               with_gt=False, fingerprint="m1")
    assert len(calls) == 2  # batch 0 again (it draws the sample grid), batch 1 reused, batch 2 new
    clean = evaluation.generate(cfg, model, None, table, out / "clean", device=torch.device("cpu"),
                                with_gt=False, fingerprint="m1")
    a, b = load_folder_pair(done.folder / "fake", clean.folder / "fake")
    assert np.array_equal(a, b)
    # A different model does not reuse anything.
    calls.clear()
    (tmp_path / "outputs.partial" / "again").mkdir(parents=True)  # stale, without a spec
    evaluation.generate(cfg, model, None, table, out / "again", device=torch.device("cpu"), with_gt=False,
                        fingerprint="m2")
    assert len(calls) == 3


def _runs(values: dict[str, float], lrs: list[float]) -> pd.DataFrame:
    return pd.DataFrame({
        "run_id": [f"run{i}abcdef" for i in range(len(lrs))],
        "experiment_id": ["1"] * len(lrs),
        "start_time": pd.to_datetime(["2026-01-01 10:00"] * len(lrs)) + pd.to_timedelta(range(len(lrs)), "min"),
        "tags.stage": ["evaluate"] * len(lrs),
        "params.train.lr": [str(x) for x in lrs],
        "params.data.crop_size": ["64"] * len(lrs),
        **{f"metrics.{k}": v for k, v in values.items()},
    })


def test_compare_ranks_runs_and_lists_only_differing_params():
    runs = _runs({"swd.model": [30.0, 10.0, np.nan], "paired.ssim.model": [0.5, 0.7, 0.9]}, [1e-4, 2e-4, 3e-4])
    ranked = rank_runs(runs, "swd.model")
    assert list(ranked["run_id"].str[:4]) == ["run1", "run0", "run2"]  # lower SWD first, missing last
    assert list(rank_runs(runs, "paired.ssim.model")["run_id"].str[:4]) == ["run2", "run1", "run0"]
    assert differing_params(runs) == ["params.train.lr"]
    md = to_markdown(ranked, "swd.model", experiment_names={"1": "cocosnet-demo"})
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| rank"))
    assert "train.lr" in header and "data.crop_size" not in header
    assert lines[lines.index(header) + 2].startswith('| 1 | `run1abcd` | "" | cocosnet-demo')
    runs["tags.dvc_experiment"] = ["exp-a", None, None]
    runs["tags.pipeline"] = ["make-1", "make-2", None]
    lines = to_markdown(rank_runs(runs, "swd.model"), "swd.model").splitlines()
    assert [line.split(" | ")[2] for line in lines if line.startswith("| ") and line[2].isdigit()] == [
        "make-2", "exp-a", '""']  # the DVC experiment first, else the pipeline run
    with pytest.raises(ValueError, match="no run has the metric 'fid.model'"):
        rank_runs(runs, "fid.model")


def test_set_metrics_compute_fid_when_a_weights_file_is_given(setup, tmp_path):
    cfg, _, _ = setup
    weights = tmp_path / "pt_inception.pth"
    torch.save(random_pytorch_fid_state(), weights)
    rng = np.random.default_rng(0)
    for role in evaluation.ROLES:
        (tmp_path / "set" / role).mkdir(parents=True)
        for i in range(4):
            from PIL import Image
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                tmp_path / "set" / role / f"{i:05d}.jpg")
    cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, inception_weights=str(weights), swd_size=16))
    swd, fid = evaluation.set_metrics(cfg, tmp_path / "set", device=torch.device("cpu"))
    assert fid["images"] == 4 and fid["model"] > 1e-3 and fid["copy_exemplar"] > 1e-3 and "unavailable" not in fid
    assert swd["resolution"] == 16 and set(swd["per_level"]["model"]) == {"16", "avg"}


def test_compare_escapes_what_it_copies_from_mlflow():
    runs = _runs({"swd.model": [2.0, 1.0], "loss_g": [3.0, 4.0]}, [1e-4, 2e-4])
    runs["params.vgg.weights"] = ["a|b`c", "x\ny <script>_*"]
    md = to_markdown(rank_runs(runs, "swd.model"), "swd.model", experiment_names={"1": "exp|name"})
    table = [line for line in md.splitlines() if line.startswith("|")]
    widths = {len(re.findall(r"(?<!\\)\|", line)) for line in table}
    assert len(widths) == 1  # no copied value adds or removes a column
    assert "a\\|b\\`c" in md and "x y \\<script\\>\\_\\*" in md and "exp\\|name" in md
    with pytest.raises(ValueError, match="--direction"):
        rank_runs(runs, "loss_g")


def test_a_generator_that_returns_its_finest_warp_scores_exactly_as_the_finest_warp(setup, tmp_path, monkeypatch):
    """The warp baseline is the finest level's warp, written and scored like the output: a model whose
    generator hands back that warp gets the warp's numbers, to the last bit, on every image metric."""
    from cocosnet.evaluate import evaluate

    cfg, processed, model_path = setup
    trained, _ = load_model(model_path, cfg)
    monkeypatch.setattr(CoCosNet, "generate", lambda self, warps, label: warps[-1])
    pairs = pd.read_parquet(processed / "pairs.parquet")
    metrics, _ = evaluate(cfg, trained, None, pairs, device=torch.device("cpu"), outputs=tmp_path / "out")
    for name in ("l1", "psnr", "ssim"):
        assert metrics["paired"][name]["model"] == metrics["paired"][name]["finest_warp"], name
        assert metrics["paired"][name]["model"] != metrics["paired"][name]["copy_exemplar"], name
    assert metrics["swd"]["model"] == metrics["swd"]["finest_warp"]
    assert metrics["swd"]["per_level"]["model"] == metrics["swd"]["per_level"]["finest_warp"]
    warp, fake = load_folder_pair(tmp_path / "out" / "self" / "warp", tmp_path / "out" / "self" / "fake")
    assert (warp == fake).all() and warp.shape[1:3] == (cfg.data.crop_size, cfg.data.crop_size)


def test_the_report_says_which_baseline_the_model_beats_on_which_metric():
    from cocosnet.report import verdicts

    metrics = {"paired": {"l1": {"model": 0.05, "finest_warp": 0.03, "copy_exemplar": 0.06},
                          "ssim": {"model": 0.8, "finest_warp": 0.7, "copy_exemplar": 0.5},
                          "lpips": {"unavailable": "no weights"}},
               "swd": {"model": 70.0, "finest_warp": 20.0, "copy_exemplar": 18.0, "shared_draws": {},
                       "per_level": {"model": {"avg": 70.0}}},
               "fid": {"unavailable": "no weights"}}
    warp, copy = verdicts(metrics)
    assert warp == ("The model beats the finest warp on SSIM (0.8 against 0.7); but not on L1 (0.05 against 0.03), "
                    "SWD x1e3 (70 against 20).")
    assert copy == ("The model beats copying the exemplar on L1 (0.05 against 0.06), SSIM (0.8 against 0.5); "
                    "but not on SWD x1e3 (70 against 18).")
    metrics["paired"]["ssim"]["model"] = 0.6
    assert verdicts(metrics)[0].startswith("The model does not beat the finest warp on L1")
    metrics["paired"]["l1"] = {"model": 24.594320, "finest_warp": 24.589919}  # equal to 4 digits: shown with 5
    assert "L1 (24.594 against 24.59)" in verdicts(metrics)[0]


def test_error_maps_are_black_where_equal_and_white_from_a_quarter_of_the_range():
    from cocosnet.evaluate import error_map, evaluation_grid

    target = torch.zeros(3, 2, 3)
    image = target.clone()
    image[:, 0, 1] = 0.5  # |diff| 0.5 of [-1, 1]: a quarter of the range -> white
    image[:, 1, 2] = 0.25  # an eighth -> mid grey
    image[0, 1, 0] = 2.0  # one channel far off: the mean over RGB, clamped at white
    err = error_map(image, target)
    assert err.shape == (3, 2, 3) and (err[0] == err[1]).all()
    assert err[0].tolist() == [[-1.0, 1.0, -1.0], [1.0, -1.0, 0.0]]
    batch = {"image": torch.zeros(2, 3, 8, 8), "exemplar": torch.zeros(2, 3, 8, 8), "label": torch.zeros(2, 20, 8, 8)}
    grid = evaluation_grid(batch, [torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 8, 8)], torch.zeros(2, 3, 8, 8), rows=2)
    assert grid.size == (8 * 8, 16)  # exemplar, pose, 2 warps, output, target, 2 error maps; 2 rows
    pixels = np.asarray(grid)
    assert (pixels[:, 6 * 8:7 * 8] == 255).all() and (pixels[:, 7 * 8:] == 0).all()  # warp all wrong, output right
