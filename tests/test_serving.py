"""The model as an MLflow pyfunc model: logged, loaded back and served, it answers what `cocosnet
generate` writes, bit for bit; bad requests name the column."""

import json
import os
import subprocess
import sys
import urllib.request

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cocosnet.cli import main as cli
from cocosnet.errors import DataError
from cocosnet.metrics.schema import losses_to_baselines
from cocosnet.serving import SIGNATURE, decode_image, log_pyfunc, request_json, request_row
from tests.helpers import free_port, stop_process_group, tiny_model_file, tiny_photos, wait_http


@pytest.fixture(scope="module")
def logged(tiny_raw, tmp_path_factory):
    """A tiny model logged (and registered) as a pyfunc model in a SQLite store; the photos; the
    `cocosnet generate` output for the first pair."""
    import mlflow

    folder = tmp_path_factory.mktemp("serving")
    model_file = tiny_model_file(folder)
    photos = tiny_photos(tiny_raw, folder)
    (ex, ex_pose, _), (_, pose, _) = photos
    cli(["generate", "--model", str(model_file), "--exemplar", str(ex), "--exemplar-pose", str(ex_pose),
         "--pose", str(pose), "--out", str(folder / "cli.png")])
    mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
    mlflow.set_experiment(experiment_id=mlflow.create_experiment("serving-test", artifact_location=str(folder / "art")))
    with mlflow.start_run():
        info = log_pyfunc(model_file, registered_name="cocosnet-test")
    return info, photos, np.asarray(Image.open(folder / "cli.png").convert("RGB")), folder


def test_the_loaded_pyfunc_model_answers_what_cocosnet_generate_writes(logged):
    import mlflow

    info, ((ex, ex_pose, size), (_, pose, _)), expected, _ = logged
    assert info.signature == SIGNATURE and info.registered_model_version == 1
    model = mlflow.pyfunc.load_model(info.model_uri)
    row = request_row(ex, ex_pose, pose)
    answer = model.predict(pd.DataFrame([row, {**row, "pose": row["exemplar_pose"]}]))
    assert list(answer.columns) == ["image"] and len(answer) == 2
    image = decode_image(answer["image"][0])
    assert image.size == size
    np.testing.assert_array_equal(np.asarray(image), expected)
    assert not np.array_equal(np.asarray(decode_image(answer["image"][1])), expected)  # the pose matters
    registered = mlflow.pyfunc.load_model("models:/cocosnet-test/1")
    np.testing.assert_array_equal(np.asarray(decode_image(registered.predict(pd.DataFrame([row]))["image"][0])),
                                  expected)


def test_a_bad_request_names_the_column(logged):
    import mlflow

    info, ((ex, ex_pose, _), (_, pose, _)), _, _ = logged
    model = mlflow.pyfunc.load_model(info.model_uri)
    row = request_row(ex, ex_pose, pose)
    with pytest.raises(DataError, match="row 0, column 'pose': expected an OpenPose"):
        model.predict(pd.DataFrame([{**row, "pose": "not keypoints"}]), params=None)
    with pytest.raises(DataError, match="row 0, column 'exemplar': expected base64"):
        model.predict(pd.DataFrame([{**row, "exemplar": "%%%"}]))


def test_losses_to_baselines_lists_every_metric_a_baseline_wins():
    paired = {"l1": {"model": 0.02, "finest_warp": 0.03, "copy_exemplar": 0.05},
              "psnr": {"model": 25.0, "finest_warp": 24.0, "copy_exemplar": 18.0},
              "ssim": {"model": 0.80, "finest_warp": 0.80, "copy_exemplar": 0.5},
              "lpips": {"unavailable": "no weights"}}
    swd = {"model": 25.0, "finest_warp": 29.0, "copy_exemplar": 18.0}  # the copied photo is not a rival here
    metrics = {"paired": paired, "swd": swd, "fid": {"unavailable": "no weights"}}
    assert losses_to_baselines(metrics) == ["ssim vs finest_warp"]  # a tie is not a win
    paired["ssim"]["model"] = 0.81
    assert losses_to_baselines(metrics) == []
    paired["l1"]["model"] = 0.06
    swd["model"] = 31.0
    assert losses_to_baselines(metrics) == ["l1 vs finest_warp", "l1 vs copy_exemplar", "swd vs finest_warp"]


@pytest.mark.servers
def test_mlflow_models_serve_answers_a_request_with_the_image(logged):
    info, ((ex, ex_pose, _), (_, pose, _)), expected, folder = logged
    port = free_port()
    log = folder / "serve.log"
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", info.model_uri, "--env-manager", "local",
           "-h", "127.0.0.1", "-p", str(port)]
    with log.open("w") as out:
        # The scoring server is the venv's `uvicorn`, found on PATH.
        path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db"})
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", proc, timeout=180, log=log)
        body = request_json([request_row(ex, ex_pose, pose)]).encode("utf-8")
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as answer:
            predictions = json.loads(answer.read())["predictions"]
        np.testing.assert_array_equal(np.asarray(decode_image(predictions[0]["image"])), expected)
    finally:
        stop_process_group(proc)
