"""`cocosnet generate`: own photos of any size, keypoints in any supported format, batches, bad input."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from cocosnet.cli import main as cli
from cocosnet.data.keypoints import write_openpose_json
from tests.helpers import png_header, tiny_model_file, tiny_photos


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return tiny_model_file(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def photos(tiny_raw, tmp_path_factory):
    return tiny_photos(tiny_raw, tmp_path_factory.mktemp("photos"))


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
    assert run("--model", model_file, "--pairs", pairs, "--out-dir", out_dir) == 2
    said = capsys.readouterr().out
    assert "2 written, 0 kept" in said and "1 failed" in said
    assert "pairs.csv:3:" in said and "only 5 of 18 joints present" in said
    assert (out_dir / "a.png").exists() and (out_dir / "sub" / "b.png").exists() and not (out_dir / "bad.png").exists()
    before = (out_dir / "a.png").stat().st_mtime_ns
    run("--model", model_file, "--pairs", pairs, "--out-dir", out_dir)
    said = capsys.readouterr().out
    assert "0 written, 2 kept" in said and "0 made again" in said and "1 failed" in said
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


def _pairs_csv(path, rows, header=("exemplar", "exemplar_pose", "pose", "out"), bom=False):
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_pairs_outputs_never_leave_the_out_dir(model_file, photos, tmp_path, capsys):
    (ex, ex_pose, _), (_, pose, _) = photos
    out_dir = tmp_path / "outputs"
    (out_dir / "sub").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (out_dir / "link").symlink_to(outside)
    (out_dir / "file_link.png").symlink_to(outside / "target.png")
    targets = ["../escape.png", "sub/../../x.png", str(tmp_path / "abs.png"), "link/through.png", "file_link.png",
               "/etc/passwd", "sub/../ok.png"]
    pairs = _pairs_csv(tmp_path / "pairs.csv", [(ex, ex_pose, pose, t) for t in targets])
    assert run("--model", model_file, "--pairs", pairs, "--out-dir", out_dir) == 2
    said = capsys.readouterr().out
    assert "1 written" in said and "6 failed" in said and "0 kept" in said
    for lineno in range(2, 8):
        assert f"pairs.csv:{lineno}: `out`" in said, said
    assert "outside --out-dir" in said and "is absolute" in said
    assert sorted(p.name for p in tmp_path.rglob("*.png") if p.is_file()) == ["ok.png"]
    assert (out_dir / "ok.png").is_file() and not list(outside.iterdir())


def test_pairs_outputs_are_keyed_by_what_made_them(model_file, photos, tmp_path, capsys):
    """A rerun keeps an output only when the model, the size and the inputs are the same; another size is
    made again; a file there that the command did not write is left alone and its row fails."""
    (ex, ex_pose, _), (_, pose, _) = photos
    out_dir = tmp_path / "outputs"
    pairs = _pairs_csv(tmp_path / "pairs.csv", [(ex, ex_pose, pose, "a.png"), (ex, ex_pose, pose, "mine.png")])
    out_dir.mkdir()
    Image.new("RGB", (5, 5)).save(out_dir / "mine.png")
    assert run("--model", model_file, "--pairs", pairs, "--out-dir", out_dir) == 2
    said = capsys.readouterr().out
    assert "1 written" in said and "mine.png exists and was not written by `cocosnet generate`" in said
    assert Image.open(out_dir / "mine.png").size == (5, 5)
    run("--model", model_file, "--pairs", pairs, "--out-dir", out_dir)
    assert "0 written, 1 kept" in capsys.readouterr().out
    run("--model", model_file, "--pairs", pairs, "--out-dir", out_dir, "--size", 40, 30)
    assert "1 made again" in capsys.readouterr().out
    assert Image.open(out_dir / "a.png").size == (40, 30)


def test_a_bom_csv_named_entries_and_jpg_outputs(model_file, photos, tmp_path, capsys):
    """A CSV saved by a spreadsheet (UTF-8 BOM); COCO files with several entries, chosen by column or by the
    exemplar's file name; a .jpg output gets JPEG bytes."""
    (ex, ex_pose, _), (_, pose, _) = photos
    both = {"images": [], "annotations": []}
    for i, source in enumerate((ex_pose, pose)):
        people = json.loads(source.read_text())["people"][0]["pose_keypoints_2d"]
        coco = np.zeros((17, 3))
        openpose = np.asarray(people).reshape(18, 3)
        for joint, src in enumerate((0, 15, 14, 17, 16, 5, 2, 6, 3, 7, 4, 11, 8, 12, 9, 13, 10)):
            coco[joint] = (*openpose[src, :2], 2.0 if openpose[src, 2] > 0 else 0.0)
        both["images"].append({"id": i, "file_name": [ex.name, "target.png"][i]})
        both["annotations"].append({"image_id": i, "keypoints": coco.reshape(-1).tolist()})
    coco_file = tmp_path / "coco.json"
    coco_file.write_text(json.dumps(both))
    rows = [(ex, coco_file, coco_file, "a.jpg", "", "target.png"), (ex, coco_file, coco_file, "b.png", "", "")]
    pairs = _pairs_csv(tmp_path / "pairs.csv", rows, bom=True,
                       header=("exemplar", "exemplar_pose", "pose", "out", "exemplar_pose_name", "pose_name"))
    assert run("--model", model_file, "--pairs", pairs, "--out-dir", tmp_path / "o") == 2
    said = capsys.readouterr().out
    assert "1 written" in said and "pairs.csv:3: " in said and "holds 2 annotations; choose one" in said
    assert (tmp_path / "o" / "a.jpg").read_bytes()[:3] == b"\xff\xd8\xff"
    assert run("--model", model_file, "--exemplar", ex, "--exemplar-pose", coco_file, "--pose", coco_file,
               "--pose-name", "target.png", "--out", tmp_path / "single.jpg") == 0
    assert Image.open(tmp_path / "single.jpg").format == "JPEG"


@pytest.mark.parametrize("flags, expected", [
    (["--size", 0, 0], "--size 0 0: expected two positive integers"),
    (["--device", "meta"], "--device 'meta': expected cpu or cuda"),
    (["--device", "nonsense"], "--device 'nonsense': expected cpu or cuda"),
    (["--out", "out.webp"], "out.webp: expected an output name ending in .png, .jpg or .jpeg"),
])
def test_bad_flags_are_refused_before_the_model_runs(model_file, photos, tmp_path, capsys, flags, expected):
    (ex, ex_pose, _), (_, pose, _) = photos
    args = ["--model", model_file, "--exemplar", ex, "--exemplar-pose", ex_pose, "--pose", pose]
    if "--out" not in flags:
        args += ["--out", tmp_path / "o.png"]
    assert run(*args, *[tmp_path / f if f == "out.webp" else f for f in flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and expected in err, err


def test_joints_outside_the_photo_do_not_count(model_file, photos, tmp_path, capsys):
    (ex, ex_pose, size), _ = photos
    far = tmp_path / "far.json"
    write_openpose_json(np.r_[[[50_000.0, 10.0]] * 12, [[10.0, 10.0]] * 6], far)
    assert run("--model", model_file, "--exemplar", ex, "--exemplar-pose", ex_pose, "--pose", far,
               "--out", tmp_path / "o.png") == 2
    err = capsys.readouterr().err
    assert "far.json: only 6 of 18 joints present in the picture" in err and "outside the photo: nose" in err


def test_a_rotated_photo_is_read_upright(tmp_path):
    from cocosnet.data.deepfashion import load_image

    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 10, 20))  # blue on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display it turned 90 degrees clockwise
    image.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    upright = load_image(tmp_path / "phone.jpg")
    assert upright.shape == (40, 20, 3)
    assert upright[2, 10, 2] > 200 and upright[-3, 10, 0] > 200  # the blue band is now on top


def test_every_bad_row_of_a_batch_is_reported_and_the_rest_go_on(model_file, photos, tmp_path, capsys):
    (ex, ex_pose, _), (_, pose, _) = photos
    deep = tmp_path / "deep.json"
    deep.write_text('{"people": ' + "[" * 100_000 + "]" * 100_000 + "}")
    nan = tmp_path / "nan.json"
    nan.write_text(json.dumps({"people": [{"pose_keypoints_2d": [float("nan")] * 54}]}))
    bomb = png_header(tmp_path / "bomb.png", 20000, 20000)
    rows = [(ex, ex_pose, deep, "1.png"), (ex, ex_pose, nan, "2.png"), (bomb, ex_pose, pose, "3.png"),
            (ex, ex_pose, pose, "4.png"), (ex, "/dev/zero", pose, "5.png")]
    pairs = _pairs_csv(tmp_path / "pairs.csv", rows)
    assert run("--model", model_file, "--pairs", pairs, "--out-dir", tmp_path / "o") == 2
    said = capsys.readouterr().out
    assert "1 written" in said and "4 failed" in said and (tmp_path / "o" / "4.png").exists()
    for lineno, text in ((2, "nested too deeply"), (3, "only 0 of 18 joints"), (4, "bomb.png: the image declares"),
                         (6, "not a regular file")):
        assert f"pairs.csv:{lineno}: " in said and text in said, (lineno, said)
