import math

import cv2
import numpy as np
import pytest

from cocosnet.data.pose import (
    COLORS,
    LIMBS,
    PoseFileError,
    label_to_input,
    read_openpose,
    render_label_resized,
    render_pose_label,
    resize_label,
    write_openpose,
)


def official_label(candidate: np.ndarray, subset: np.ndarray) -> np.ndarray:
    """A direct transcription of the official get_label_tensor drawing (reference §1.4),
    with its variable naming (X holds y values) and whole-image operations."""
    stickwidth, radius = 20, 20
    limb_seq = [[a + 1, b + 1] for a, b in LIMBS]
    canvas = np.zeros((1024, 1024, 3), dtype=np.uint8)
    for i in range(18):
        index = int(subset[i])
        if index == -1:
            continue
        x, y = candidate[index][0:2]
        cv2.circle(canvas, (int(x), int(y)), radius, COLORS[i], thickness=-1)
    joints = []
    for i in range(17):
        index = subset[np.array(limb_seq[i]) - 1]
        cur_canvas = canvas.copy()
        if -1 in index:
            joints.append(np.zeros_like(cur_canvas[:, :, 0]))
            continue
        Y = candidate[index.astype(int), 0]
        X = candidate[index.astype(int), 1]
        mX, mY = np.mean(X), np.mean(Y)
        length = ((X[0] - X[1]) ** 2 + (Y[0] - Y[1]) ** 2) ** 0.5
        angle = math.degrees(math.atan2(X[0] - X[1], Y[0] - Y[1]))
        polygon = cv2.ellipse2Poly((int(mY), int(mX)), (int(length / 2), stickwidth), int(angle), 0, 360, 1)
        cv2.fillConvexPoly(cur_canvas, polygon, COLORS[i])
        canvas = cv2.addWeighted(canvas, 0.4, cur_canvas, 0.6, 0)
        joint = np.zeros_like(cur_canvas[:, :, 0])
        cv2.fillConvexPoly(joint, polygon, 255)
        joint = cv2.addWeighted(joint, 0.4, joint, 0.6, 0)
        joints.append(joint)
    rgb = cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB)
    dists = [np.clip(cv2.distanceTransform(255 - j, cv2.DIST_L1, 3) / 3, 0, 255).astype(np.uint8) for j in joints]
    return np.concatenate([rgb, np.stack(dists, axis=2)], axis=2)


def random_pose(rng, missing=0.15, margin=0):
    kp = np.column_stack([rng.uniform(-margin, 1024 + margin, 18), rng.uniform(-margin, 1024 + margin, 18)])
    kp[rng.random(18) < missing] = np.nan
    return kp


def to_official(kp):
    present = np.flatnonzero(~np.isnan(kp[:, 0]))
    candidate = np.column_stack([kp[present], np.ones(len(present)), np.arange(len(present))])
    subset = np.full(20, -1.0)
    subset[present] = np.arange(len(present))
    return candidate, subset


@pytest.mark.parametrize("seed", range(4))
def test_label_is_bit_exact_with_the_official_construction(seed):
    rng = np.random.default_rng(seed)
    kp = random_pose(rng, margin=60 if seed % 2 else 0)
    expected = official_label(*to_official(kp))
    got = render_pose_label(kp)
    assert got.dtype == np.uint8 and got.shape == (1024, 1024, 20)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("ends", [
    ((-500.0, 300.0), (-300.0, 420.0)),   # the whole limb off the canvas: its distance map is all 255
    ((-40.0, 10.0), (60.0, -30.0)),       # across a corner: the blend region is clipped to the canvas
    ((1000.0, 1030.0), (1090.0, 900.0)),  # across the far corner
    ((512.0, 512.0), (512.0, 512.0)),     # a zero-length limb
])
def test_limbs_off_and_across_the_border_are_bit_exact(ends):
    kp = random_pose(np.random.default_rng(7), missing=0.0)
    kp[1], kp[2] = ends  # limb 0 (neck - right shoulder)
    np.testing.assert_array_equal(render_pose_label(kp), official_label(*to_official(kp)))


def horizontal_limb_pose():
    kp = np.full((18, 2), np.nan)
    kp[1] = (400.0, 500.0)  # neck
    kp[2] = (600.0, 500.0)  # right shoulder: limb 0 (neck - r_shoulder) is horizontal
    return kp


def test_limb_pixels_colour_quirk_and_distances():
    label = render_pose_label(horizontal_limb_pose())
    # Mid-limb, away from the joint discs: 0.6 * palette (255, 0, 0), drawn as BGR -> blue.
    assert tuple(label[500, 500, :3]) == (0, 0, 153)
    # Joint discs are the raw palette, reversed: neck (255, 85, 0) -> (0, 85, 255) under the blend.
    assert label[500, 400, 2] > label[500, 400, 0]
    assert tuple(label[100, 100, :3]) == (0, 0, 0)
    # Distance map of limb 0: 0 on the limb, L1 distance / 3 away from it, 255 far away.
    dist = label[..., 3]
    assert dist[500, 500] == 0
    edge = max(y for y in range(500, 540) if label[y, 500, 2] == 153)  # last limb row below the axis
    assert abs(edge - 520) <= 1  # stick width 20
    assert dist[edge + 2, 500] == 0 and dist[edge + 3, 500] == 1
    assert dist[edge + 92, 500] == 30 and dist[edge + 93, 500] == 31
    assert dist[1023, 0] == 255  # L1 distance > 765 saturates


def test_missing_limbs_read_all_255_and_missing_joints_have_no_disc():
    label = render_pose_label(horizontal_limb_pose())
    for channel in range(4, 20):
        assert (label[..., channel] == 255).all()
    assert label[..., 3].min() == 0
    kp = horizontal_limb_pose()
    kp[2] = np.nan
    label = render_pose_label(kp)
    assert (label[..., 3:] == 255).all()
    assert label[500, 600, :3].sum() == 0 and label[500, 400, :3].sum() > 0


def test_edge_and_far_away_joints_do_not_crash():
    kp = horizontal_limb_pose()
    kp[1] = (-5.0, 1030.0)
    kp[2] = (1e9, -1e9)
    kp[3] = (1023.9, 0.0)
    label = render_pose_label(kp)
    assert label.shape == (1024, 1024, 20)
    label = render_pose_label(random_pose(np.random.default_rng(1), margin=3000))
    assert label.shape == (1024, 1024, 20)


def test_label_to_input_resamples_like_the_official_loader():
    kp = random_pose(np.random.default_rng(5))
    label = render_pose_label(kp)
    x = label_to_input(label, (64, 48))
    assert x.shape == (20, 64, 48) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    # NEAREST: output pixel i reads source floor((i + 0.5) * 1024 / n).
    src_y, src_x = int((10 + 0.5) * 1024 / 64), int((7 + 0.5) * 1024 / 48)
    np.testing.assert_allclose(x[:3, 10, 7], label[src_y, src_x, :3] / 255.0)
    # BILINEAR with antialiasing: a smooth average, not a point sample.
    np.testing.assert_array_equal(resize_label(label, 96), render_label_resized(kp, 96))


def write(path, text):
    path.write_text(text)
    return path


def test_read_openpose_round_trip_and_several_people(tmp_path):
    kp = random_pose(np.random.default_rng(2))
    write_openpose(kp, tmp_path / "c.txt", tmp_path / "s.txt")
    np.testing.assert_array_equal(read_openpose(tmp_path / "c.txt", tmp_path / "s.txt"), kp)
    cand = write(tmp_path / "c2.txt", "10 20 0.9 0\n30 40 0.8 1\n50 60 0.7 2\n")
    low = ["0"] + ["-1"] * 17 + ["1.0", "1"]
    high = ["1", "2"] + ["-1"] * 16 + ["5.0", "2"]
    sub = write(tmp_path / "s2.txt", " ".join(low) + "\n" + " ".join(high) + "\n")
    got = read_openpose(cand, sub)
    assert got.shape == (18, 2) and got.dtype == np.float64
    np.testing.assert_array_equal(got[:2], [[30, 40], [50, 60]])
    assert np.isnan(got[2:]).all()


@pytest.mark.parametrize("cand,sub,needle", [
    ("", "0 " + "-1 " * 17, "empty candidate"),
    ("10 20 1 0\n", "", "empty subset"),
    ("10 abc 1 0\n", "0 " + "-1 " * 17, "non-numeric"),
    ("10\n", "0 " + "-1 " * 17, "columns"),
    ("10 20 1 0\n", "0 -1 -1", "columns"),
    ("10 20 1 0\n", "3 " + "-1 " * 17, "only 1 rows"),
    ("10 20 1 0\n30 40\n", "0 " + "-1 " * 17, "truncated"),
])
def test_bad_keypoint_files_raise_pose_file_error(tmp_path, cand, sub, needle):
    c, s = write(tmp_path / "x_candidate.txt", cand), write(tmp_path / "x_subset.txt", sub)
    with pytest.raises(PoseFileError) as err:
        read_openpose(c, s)
    assert needle in str(err.value) and "x_" in str(err.value)


def test_missing_keypoint_file(tmp_path):
    with pytest.raises(PoseFileError, match="not found"):
        read_openpose(tmp_path / "nope_candidate.txt", tmp_path / "nope_subset.txt")
