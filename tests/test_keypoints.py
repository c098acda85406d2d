"""Keypoint files of the common pose estimators (cocosnet/data/keypoints.py) and the photo <-> label frame."""

import json

import numpy as np
import pytest

from cocosnet.data.deepfashion import load_image
from cocosnet.data.keypoints import (
    frame_to_photo,
    photo_to_frame,
    read_keypoints,
    render_keypoints,
    write_openpose_json,
)
from cocosnet.data.pose import PoseFileError, read_openpose, render_label_resized, write_openpose

RNG = np.random.default_rng(0)
TRUTH = RNG.uniform(5, 500, size=(18, 2)).round(3)
TRUTH[[3, 16]] = np.nan  # a missing elbow and ear


def flat_openpose(xy: np.ndarray, body25: bool) -> list[float]:
    """OpenPose triples; BODY_25 puts MidHip at 8 and six foot joints at the end."""
    joints = [[*p, 0.9] if np.isfinite(p).all() else [0.0, 0.0, 0.0] for p in xy]
    if body25:
        joints = joints[:8] + [[250.0, 250.0, 0.8]] + joints[8:] + [[1.0, 2.0, 0.7]] * 6
    return [v for j in joints for v in j]


def write(tmp_path, name, content) -> str:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def same(a, b):
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(a[~np.isnan(a)], b[~np.isnan(b)], rtol=0, atol=1e-9)


@pytest.mark.parametrize("body25", [True, False])
@pytest.mark.parametrize("key", ["pose_keypoints_2d", "pose_keypoints"])
def test_openpose_json_body25_and_coco18_take_the_most_confident_person(tmp_path, body25, key):
    other = flat_openpose(TRUTH + 7, body25)
    other = [v * 0.1 if i % 3 == 2 else v for i, v in enumerate(other)]  # a less confident bystander
    path = write(tmp_path, "pose.json", {"people": [{key: other}, {key: flat_openpose(TRUTH, body25)}]})
    same(read_keypoints(path), TRUTH)


def coco17(xy18: np.ndarray) -> list[float]:
    order = (0, 15, 14, 17, 16, 5, 2, 6, 3, 7, 4, 11, 8, 12, 9, 13, 10)  # COCO-17 joint -> OpenPose-18 joint
    return [v for j in order for v in ([*xy18[j], 2] if np.isfinite(xy18[j]).all() else [0, 0, 0])]


def test_coco_annotation_list_and_file_and_the_neck(tmp_path):
    expected = TRUTH.copy()
    expected[1] = (TRUTH[2] + TRUTH[5]) / 2  # the neck is the midpoint of the shoulders
    ann = {"image_id": 7, "keypoints": coco17(TRUTH)}
    same(read_keypoints(write(tmp_path, "one.json", ann)), expected)
    same(read_keypoints(write(tmp_path, "list.json", [ann])), expected)
    doc = {"images": [{"id": 7, "file_name": "a/b/person.jpg"}, {"id": 8, "file_name": "other.jpg"}],
           "annotations": [ann, {"image_id": 8, "keypoints": coco17(TRUTH + 1)}]}
    path = write(tmp_path, "file.json", doc)
    for name in ("person.jpg", "person", 7, "7"):
        same(read_keypoints(path, name=name), expected)
    no_shoulder = TRUTH.copy()
    no_shoulder[5] = np.nan
    got = read_keypoints(write(tmp_path, "noshoulder.json", {"keypoints": coco17(no_shoulder)}))
    assert np.isnan(got[1]).all() and np.isnan(got[5]).all()


def test_pose_transfer_csv_reads_the_y_list_first(tmp_path):
    ys, xs = np.where(np.isnan(TRUTH), -1, TRUTH).T[::-1]
    rows = [f"{n}: {json.dumps([int(v) for v in y])}: {json.dumps([int(v) for v in x])}"
            for n, y, x in (("fashionWOMENid01_1front.jpg", ys, xs), ("fashionMENid02_2side.jpg", ys + 1, xs))]
    path = write(tmp_path, "fasion-resize-annotation-test.csv", "name:keypoints_y:keypoints_x\n" + "\n".join(rows))
    expected = np.trunc(TRUTH)  # the file holds integers; NaN stays NaN
    same(read_keypoints(path, name="fashionWOMENid01_1front.jpg"), expected)
    got = read_keypoints(path, name="fashionMENid02_2side.jpg")
    assert got[0, 1] == expected[0, 1] + 1 and got[0, 0] == expected[0, 0]  # y is the first list


def test_deepfashion_pair_is_found_from_either_file(tmp_path):
    cand, sub = tmp_path / "x_candidate.txt", tmp_path / "x_subset.txt"
    write_openpose(TRUTH, cand, sub)
    for given in (cand, sub):
        same(read_keypoints(given), read_openpose(cand, sub))
    lonely = tmp_path / "y_subset.txt"
    lonely.write_text(sub.read_text())
    with pytest.raises(PoseFileError, match=r"y_subset\.txt: its partner file .*y_candidate\.txt"):
        read_keypoints(lonely)


@pytest.mark.parametrize("content, name, message", [
    ({"people": []}, None, r"no person"),
    ({"people": [{"pose_keypoints_2d": [1.0] * 30}]}, None, r"30 values, expected 75 .* or 54"),
    ({"people": [{"pose_keypoints_2d": [1.0] * 53 + ["a"]}]}, None, r"non-numeric value 'a'"),
    ({"people": [{"face": []}]}, None, r"people\[0\] has no pose_keypoints_2d"),
    ({"keypoints": [0] * 50}, None, r"50 values, expected 51"),
    ({"annotations": [{"image_id": 1, "keypoints": [0] * 51}, {"image_id": 2, "keypoints": [0] * 51}]}, None,
     r"holds 2 annotations; choose one by its image name"),
    ({"annotations": [{"image_id": 1, "keypoints": [0] * 51}]}, "nobody.jpg", r"no annotation named 'nobody.jpg'"),
    ({"annotations": [{"image_id": 1, "keypoints": [0] * 51}, {"image_id": 1, "keypoints": [0] * 51}]}, 1,
     r"name 1 is ambiguous \(2 annotations match\)"),
    ({"something": 1}, None, r"neither OpenPose .* nor COCO"),
    ("{not json", None, r"bad\.json:1: invalid JSON"),
    ("name:keypoints_y:keypoints_x\na.jpg: [1, 2]: [3, 4]\n", "a.jpg", r"bad\.json:2: the y list has 2 joints"),
    ("name:keypoints_y:keypoints_x\na.jpg: [1, 2]\n", None, r"bad\.json:2: expected `name: \[y, \.\.\.\]"),
    ("name:keypoints_y:keypoints_x\na.jpg: [1]: [2]\nb.jpg: [1]: [2]\n", "c.jpg", r"no row named 'c.jpg'"),
    ("name:keypoints_y:keypoints_x\na.jpg: [1, x]: [2]\n", "a.jpg", r"bad\.json:2: the y list is not a list"),
    ("just some words\n", None, r"unknown keypoint format"),
])
def test_every_error_names_the_file_and_the_problem(tmp_path, content, name, message):
    path = write(tmp_path, "bad.json", content)
    with pytest.raises(PoseFileError, match=r"bad\.json") as err:
        read_keypoints(path, name=name)
    assert err.match(message)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(PoseFileError, match=r"nothing\.json: keypoint file not found"):
        read_keypoints(tmp_path / "nothing.json")


@pytest.mark.parametrize("size", [(750, 1101), (1101, 750), (333, 333), (64, 97)])
def test_frames_round_trip_for_any_photo_size(size):
    pts = np.random.default_rng(1).uniform(0, min(size), size=(18, 2))
    pts[4] = np.nan
    same(frame_to_photo(photo_to_frame(pts, size), size), pts)
    # the photo's longer side spans the frame edge to edge; the shorter one is padded on both sides
    w, h = size
    edges = photo_to_frame(np.array([[-0.5, -0.5], [w - 0.5, h - 0.5]]), size)
    long_axis = 0 if w >= h else 1
    np.testing.assert_allclose(edges[:, long_axis], [-0.5, 1023.5], atol=1e-9)
    short = edges[:, 1 - long_axis]
    if w != h:  # both pads within one photo pixel of each other (the odd one goes right/bottom)
        assert short[0] > 0 and short[1] < 1023
        assert abs((short[0] + 0.5) - (1023.5 - short[1])) <= 1024 / max(size) + 1e-6


def test_openpose_json_in_the_photo_frame_renders_the_label_of_the_deepfashion_files(tiny_raw, tmp_path):
    for image in sorted((tiny_raw / "img").rglob("*.jpg"))[:3]:
        rel = image.relative_to(tiny_raw / "img").with_suffix("")
        cand = tiny_raw / "pose" / f"{rel}_candidate.txt"
        frame_kp = read_keypoints(cand)  # DeepFashion-HD files: the padded 1024 frame
        height, width = load_image(image).shape[:2]
        json_path = tmp_path / f"{image.stem}.json"
        write_openpose_json(frame_to_photo(frame_kp, (width, height)), json_path)
        photo_kp = read_keypoints(json_path)
        for size in (64, 256):
            subset = cand.with_name(cand.name.replace("candidate", "subset"))
            expected = render_label_resized(read_openpose(cand, subset), size)
            assert np.array_equal(render_keypoints(photo_kp, size, photo_size=(width, height)), expected), image
            assert np.array_equal(render_keypoints(frame_kp, size), expected)
