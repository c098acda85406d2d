"""Input that is small on disk and huge in memory, or shaped to crash a reader: every case is a one-line
error naming the file, line or key, found before the cost is paid (issue 26, findings 3 and 4)."""

import json
import os
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest
import torch
from PIL import Image

from cocosnet.config import ConfigError, load_config, read_yaml
from cocosnet.data.deepfashion import load_image
from cocosnet.data.keypoints import read_keypoints
from cocosnet.data.pose import PoseFileError
from cocosnet.errors import CheckpointError, DataError
from cocosnet.generate import load_model_file
from cocosnet.models.cocosnet import CoCosNet
from cocosnet.train.checkpoint import save_model
from tests.helpers import ROOT, png_header, tiny_training_config


def one_line_exit_2(proc, *expected):
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], err[-2000:])
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for text in expected:
        assert text in err, err


def python(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


# Images: the longest side and the pixel count, from the header, before decoding.

def test_a_long_thin_jpeg_is_refused_by_its_side_before_the_pad_to_a_square(tmp_path):
    path = tmp_path / "thin.jpg"
    Image.new("RGB", (65000, 4), (200, 10, 10)).save(path, quality=90)
    assert path.stat().st_size < 64_000  # a few KB that would pad to 65000 x 65000 x 3 = 11.8 GiB
    with pytest.raises(DataError, match=r"thin\.jpg: the image is 65000x4 .*over the cap of 10000 px a side"):
        load_image(path)


@pytest.mark.parametrize("side, message", [(9000, r"9000x9000 \(81\.0 MP\), over the cap"),
                                           (20000, r"declares more than 200 MP, over the cap of 40 MP")])
def test_a_huge_png_header_is_refused_before_decoding(tmp_path, side, message):
    path = png_header(tmp_path / "big.png", side, side)
    with pytest.raises(DataError, match=r"big\.png: .*" + message):
        load_image(path)


def test_the_caps_can_be_raised(tmp_path, monkeypatch):
    path = tmp_path / "wide.png"
    Image.new("RGB", (300, 20)).save(path)
    monkeypatch.setenv("COCOSNET_MAX_IMAGE_SIDE", "100")
    with pytest.raises(DataError, match="over the cap of 100 px a side; raise it with COCOSNET_MAX_IMAGE_SIDE"):
        load_image(path)
    monkeypatch.setenv("COCOSNET_MAX_IMAGE_SIDE", "300")
    assert load_image(path).shape == (20, 300, 3)


def test_score_folders_refuses_huge_images_in_one_line(tmp_path):
    for folder in ("real", "fake"):
        (tmp_path / folder).mkdir()
        png_header(tmp_path / folder / "a.png", 9000, 9000)
    args = ["-m", "stages.score_folders", "--real", tmp_path / "real", "--fake", tmp_path / "fake", "--paired"]
    one_line_exit_2(python(*args), "a.png: the image is 9000x9000", "--max-image-pixels")
    # raised, the cap lets the file through to the decoder, which finds its pixels missing
    one_line_exit_2(python(*args, "--max-image-pixels", 100_000_000), "a.png: cannot read image")


# Params: aliases, duplicate keys, bad bytes, non-finite numbers, deep nesting, long values.

def _params_with(tmp_path, old, new, name="params.yaml"):
    text = (ROOT / "params.yaml").read_text()
    assert old in text
    path = tmp_path / name
    path.write_text(text.replace(old, new, 1))
    return path


def test_a_yaml_alias_bomb_is_refused_at_once_with_a_short_message(tmp_path):
    bomb = "".join(f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 9))
    text = "bombs:\n  l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + bomb
    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text() + text)
    with pytest.raises(ConfigError, match=r"params\.yaml:\d+: YAML aliases \(\*l0\) are not accepted") as err:
        load_config(path)
    assert len(str(err.value)) < 300


def test_duplicate_keys_are_refused_by_line(tmp_path):
    path = _params_with(tmp_path, "  steps:", "  steps: 3\n  steps:")
    with pytest.raises(ConfigError, match=r"params\.yaml:\d+: key 'steps' appears twice in one mapping \(first on"):
        read_yaml(path)


@pytest.mark.parametrize("content, message", [
    (b"profile: demo\xff\xfe\n", r"not UTF-8 text"),
    (("a: " + "[" * 200_000 + "]" * 200_000).encode(), r"nested too deeply|invalid YAML"),
    (("a: " + "7" * 5000).encode(), r"invalid value|expected"),
])
def test_unreadable_params_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "params.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=r"params\.yaml: .*(" + message + ")") as err:
        load_config(path)
    assert "\n" not in str(err.value) and len(str(err.value)) < 600


def test_a_long_bad_value_is_shortened_in_the_message(tmp_path):
    path = _params_with(tmp_path, "  load_size: ", "  load_size: " + "x" * 100_000 + "  #")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "data.load_size" in str(err.value) and len(str(err.value)) < 400


def test_a_stage_given_a_bad_params_file_says_one_line(tmp_path):
    path = _params_with(tmp_path, "  steps:", "  steps: 3\n  steps:")
    one_line_exit_2(python("-m", "stages.evaluate", "--params", path), "appears twice")


# Keypoint files: regular files only, up to a byte cap; any content gives a result or one error.

@pytest.mark.parametrize("kind", ["device", "fifo", "folder", "sparse"])
def test_keypoint_files_are_read_only_from_regular_files_under_the_cap(tmp_path, kind):
    """Run in a child process: a FIFO read by today's code blocks forever."""
    path = {"device": "/dev/zero", "fifo": tmp_path / "pose.json", "folder": tmp_path,
            "sparse": tmp_path / "big.json"}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    if kind == "sparse":
        with open(path, "wb") as fh:
            fh.truncate(40 * 2**20)  # 40 MiB of nothing, over the 32 MiB cap
    script = ("from cocosnet.data.keypoints import read_keypoints\nfrom cocosnet.errors import DataError\n"
              f"try:\n    read_keypoints({str(path)!r})\nexcept DataError as exc:\n    print(exc)\n")
    proc = python("-c", script, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = "over the 32 MiB cap" if kind == "sparse" else "not a regular file"
    assert expected in proc.stdout, proc.stdout


def _json(tmp_path, text):
    path = tmp_path / "pose.json"
    path.write_text(text)
    return path


def test_nan_and_infinite_confidences_mark_joints_missing(tmp_path):
    joints = [[100.0 + i, 200.0, 0.9] for i in range(18)]
    joints[3][2], joints[4][2] = float("nan"), float("-inf")
    joints[5][0] = float("inf")
    flat = [v for joint in joints for v in joint]
    kp = read_keypoints(_json(tmp_path, json.dumps({"people": [{"pose_keypoints_2d": flat}]})))
    assert np.isnan(kp[[3, 4, 5]]).all() and np.isfinite(np.delete(kp, [3, 4, 5], axis=0)).all()
    all_nan = json.dumps({"people": [{"pose_keypoints_2d": [float("nan")] * 54}]})
    assert np.isnan(read_keypoints(_json(tmp_path, all_nan))).all()  # a result, not a crash


@pytest.mark.parametrize("text, message", [
    ('{"people": [1]}', r"people\[0\] is a int"),
    ('{"people": ' + "[" * 200_000 + "]" * 200_000 + "}", r"nested too deeply"),
    ('{"people": [{"pose_keypoints_2d": [' + "9" * 5000 + "]}]}", r"invalid JSON"),
    ('{"people": [{"pose_keypoints_2d": [' + "9" * 400 + "] }]}", r"non-numeric value 9999"),
    ('{"images": [{"id": [1], "file_name": "a.jpg"}], "annotations": [{"image_id": 2, "keypoints": []}]}',
     r"0 values, expected 51"),
])
def test_hostile_json_is_a_one_line_pose_error(tmp_path, text, message):
    with pytest.raises(PoseFileError, match=r"pose\.json.*" + message) as err:
        read_keypoints(_json(tmp_path, text))
    assert "\n" not in str(err.value) and len(str(err.value)) < 600


def test_an_unhashable_coco_image_id_still_selects_by_file_name(tmp_path):
    doc = {"images": [{"id": [1], "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
           "annotations": [{"image_id": [1], "keypoints": [10.0, 20.0, 2] * 17},
                           {"image_id": 2, "keypoints": [0.0, 0.0, 0] * 17}]}
    kp = read_keypoints(_json(tmp_path, json.dumps(doc)), name="a.jpg")
    assert kp[0].tolist() == [10.0, 20.0]


# Model files: a checksum anyone can recompute is integrity, not trust.

@pytest.fixture
def tiny_model(tmp_path):
    cfg = tiny_training_config(tmp_path, tmp_path, crop=32)
    torch.manual_seed(0)
    return cfg, CoCosNet.from_config(cfg)


def test_a_forged_config_is_refused_by_key(tmp_path, tiny_model):
    cfg, model = tiny_model
    config = asdict(cfg)
    config["data"].update(load_size=2**20, crop_size=2**20)
    save_model(tmp_path / "forged.pt", model, config=config, stage="train", step=0, inputs={})
    with pytest.raises(CheckpointError, match=r"forged\.pt: not a model of this project .*data\.load_size: "
                                              r"expected in \[8, 4096\]"):
        load_model_file(tmp_path / "forged.pt")


def test_non_finite_and_stride_0_weights_are_refused(tmp_path, tiny_model):
    cfg, model = tiny_model
    state = model.state_dict()
    name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    with torch.no_grad():
        state[name].view(-1)[0] = float("nan")
    save_model(tmp_path / "nan.pt", model, config=asdict(cfg), stage="train", step=0, inputs={})
    with pytest.raises(CheckpointError, match=rf"nan\.pt: .*tensor '{name}' holds NaN or infinite values"):
        load_model_file(tmp_path / "nan.pt")

    # The checksum would read every declared element, so the shape is checked first: a forger need not
    # have computed it (here it is left wrong) for the file to be refused for what it is.
    state = {"format": "cocosnet-v2/1", "stage": "train", "step": 0, "config": asdict(cfg), "inputs": {},
             "model": {**model.state_dict(), "huge": torch.zeros(1).expand(1 << 20, 1 << 20)}, "sha256": "0" * 64}
    torch.save(state, tmp_path / "expanded.pt")
    with pytest.raises(CheckpointError, match=r"expanded\.pt: .*tensor 'model\.huge' declares shape "
                                              r"\(1048576, 1048576\) but its storage holds 4 bytes"):
        load_model_file(tmp_path / "expanded.pt")


@pytest.mark.parametrize("corr", ["/dev/zero", "folder", "nan"])
def test_import_official_refuses_unusable_files_in_one_line(tmp_path, corr):
    gen = tmp_path / "latest_net_G.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, gen)
    if corr == "folder":
        corr = tmp_path
    elif corr == "nan":
        corr = tmp_path / "latest_net_Corr.pth"
        torch.save({"theta_0.weight": torch.full((2, 2), float("nan"))}, corr)
    proc = python("-m", "cocosnet.cli", "import-official", "--corr", corr, "--gen", gen, "--out", tmp_path / "o.pt")
    one_line_exit_2(proc, "holds NaN" if str(corr).endswith(".pth") else "not a regular file")
    assert not (tmp_path / "o.pt").exists()
