"""`cocosnet generate`: own photos of any size, keypoints in any supported format, batches, bad input."""

import csv
import json
from dataclasses import asdict

import numpy as np
import pytest
import torch
from PIL import Image

from cocosnet.cli import main as cli
from cocosnet.data.keypoints import frame_to_photo, read_keypoints, write_openpose_json
from cocosnet.models.cocosnet import CoCosNet
from cocosnet.train.checkpoint import save_model
from tests.helpers import tiny_training_config


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    cfg = tiny_training_config(folder, folder, crop=32)
    torch.manual_seed(0)
    path = folder / "model.pt"
    save_model(path, CoCosNet.from_config(cfg), config=asdict(cfg), stage="train", step=0, inputs={})
    return path


@pytest.fixture(scope="module")
def photos(tiny_raw, tmp_path_factory):
    """Two synthetic photos of one person, cropped to an odd aspect, with OpenPose JSON in photo pixels."""
    folder = tmp_path_factory.mktemp("photos")
    views = sorted((tiny_raw / "img").rglob("*.jpg"))[:2]
    out = []
    for i, image in enumerate(views):
        rel = image.relative_to(tiny_raw / "img").with_suffix("")
        frame_kp = read_keypoints(tiny_raw / "pose" / f"{rel}_candidate.txt")
        photo = Image.open(image)
        path = folder / f"person{i}.png"
        photo.save(path)
        pose = folder / f"person{i}.json"
        write_openpose_json(frame_to_photo(frame_kp, photo.size), pose)
        out.append((path, pose, photo.size))
    return out


def run(*args):
    try:
        cli(["generate", *map(str, args)])
    except SystemExit as exc:
        return exc.code
    return 0


def test_one_photo_gives_an_output_of_its_size_and_a_panel(model_file, photos, tmp_path):
    (ex, ex_pose, size), (_, pose, _) = photos
    assert run("--model", model_file, "--exemplar", ex, "--exemplar-pose", ex_pose, "--pose", pose,
               "--out", tmp_path / "out.png", "--panel", tmp_path / "panel.png") == 0
    out, panel = Image.open(tmp_path / "out.png"), Image.open(tmp_path / "panel.png")
    assert out.size == size and out.mode == "RGB"
    assert panel.size == (4 * 256, 256)  # four 32 px tiles, enlarged x8
    assert run("--model", model_file, "--exemplar", ex, "--exemplar-pose", ex_pose, "--pose", pose,
               "--out", tmp_path / "sized.png", "--size", 70, 90) == 0
    assert Image.open(tmp_path / "sized.png").size == (70, 90)


def test_pairs_are_resumable_and_a_bad_row_does_not_stop_the_rest(model_file, photos, tmp_path, capsys):
    (ex, ex_pose, _), (_, pose, _) = photos
    few = tmp_path / "few.json"
    write_openpose_json(np.r_[[[10.0, 10.0]] * 5, [[np.nan, np.nan]] * 13], few)
    rows = [(ex, ex_pose, pose, "a.png"), (ex, ex_pose, few, "bad.png"), (ex, ex_pose, pose, "sub/b.png")]
    pairs = tmp_path / "pairs.csv"
    with open(pairs, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["exemplar", "exemplar_pose", "pose", "out"])
        writer.writerows(rows)
    out_dir = tmp_path / "outputs"
    assert run("--model", model_file, "--pairs", pairs, "--out-dir", out_dir) == 1
    said = capsys.readouterr().out
    assert "2 written, 0 kept from an earlier run, 1 failed" in said
    assert "pairs.csv:3:" in said and "only 5 of 18 joints present" in said
    assert (out_dir / "a.png").exists() and (out_dir / "sub" / "b.png").exists() and not (out_dir / "bad.png").exists()
    before = (out_dir / "a.png").stat().st_mtime_ns
    run("--model", model_file, "--pairs", pairs, "--out-dir", out_dir)
    assert "0 written, 2 kept from an earlier run, 1 failed" in capsys.readouterr().out
    assert (out_dir / "a.png").stat().st_mtime_ns == before


@pytest.mark.parametrize("case", ["image", "pose", "model", "flags"])
def test_bad_input_is_one_line_with_status_2_and_nothing_written(model_file, photos, tmp_path, capsys, case):
    (ex, ex_pose, _), (_, pose, _) = photos
    model = model_file
    if case == "image":
        ex = tmp_path / "broken.jpg"
        ex.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    elif case == "pose":
        pose = tmp_path / "few.json"
        pose.write_text(json.dumps({"people": [{"pose_keypoints_2d": [5.0, 5.0, 1.0] * 3 + [0.0] * 45}]}))
    elif case == "model":
        model = tmp_path / "weights.pth"
        torch.save({"fc.weight": torch.zeros(1)}, model)
    args = ["--model", model, "--exemplar", ex, "--exemplar-pose", ex_pose, "--pose", pose, "--out", tmp_path / "o.png"]
    if case == "flags":
        args += ["--pairs", tmp_path / "pairs.csv"]
    assert run(*args) == 2
    err = capsys.readouterr().err.strip()
    expected = {"image": "broken.jpg", "pose": "only 3 of 18 joints present", "model": "weights.pth: not a model file",
                "flags": "--pairs goes with --out-dir only"}[case]
    assert err.startswith("error: ") and "\n" not in err and expected in err, err
    assert "Traceback" not in err and not (tmp_path / "o.png").exists()
