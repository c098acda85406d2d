import dataclasses
import json

import numpy as np
from PIL import Image
from scipy.ndimage import maximum_filter, minimum_filter

from cocosnet.data.deepfashion import SquareFrame, identity_of, pose_paths, read_split_list
from cocosnet.data.pose import read_openpose
from cocosnet.data.synthetic import correspondence, generate, load_surface, surface_path, warp_by_correspondence
from tests.helpers import TINY


def images(root):
    return [e.paths[0] for name in ("train.txt", "val.txt") for e in read_split_list(root / name)]


def test_layout_matches_deepfashion_hd(tiny_raw):
    rels = images(tiny_raw)
    assert len(rels) == TINY.num_identities * TINY.views_per_identity
    for rel in rels:
        parts = rel.split("/")
        assert parts[0] == "img" and parts[1] in ("MEN", "WOMEN") and parts[3].startswith("id_")
        assert parts[4].split("_")[0] == "01" and parts[4].endswith(".jpg")
        with Image.open(tiny_raw / rel) as im:
            assert im.size == (TINY.image_width, TINY.image_height) and im.format == "JPEG"
        kp = read_openpose(*pose_paths(tiny_raw, rel))
        assert kp.shape == (18, 2) and np.isfinite(kp[1]).all()  # the neck is always there
        assert (kp[np.isfinite(kp)] > -1).all() and (kp[np.isfinite(kp)] < 1024).all()
    train = {identity_of(r) for r in (e.paths[0] for e in read_split_list(tiny_raw / "train.txt"))}
    val = {identity_of(r) for r in (e.paths[0] for e in read_split_list(tiny_raw / "val.txt"))}
    assert train and val and not train & val
    for name in ("deepfashion_ref.txt", "deepfashion_ref_test.txt", "deepfashion_self_pair.txt"):
        assert "\\" in (tiny_raw / name).read_text()


def test_keypoints_sit_on_the_rendered_body(tiny_raw):
    frame = SquareFrame(TINY.image_width, TINY.image_height)
    for rel in images(tiny_raw)[:6]:
        kp = frame.from_frame(read_openpose(*pose_paths(tiny_raw, rel)))
        part = load_surface(surface_path(tiny_raw, rel)).part
        for x, y in kp[np.isfinite(kp).all(axis=1)]:
            xi, yi = int(round(x)), int(round(y))
            window = part[max(0, yi - 2):yi + 3, max(0, xi - 2):xi + 3]
            assert (window > 0).any(), (rel, x, y)


def test_generation_is_deterministic_and_resumable(tiny_raw, tmp_path):
    out = tmp_path / "again"
    staging = tmp_path / "again.partial"
    # Simulate an interrupted run: one identity finished in the staging directory.
    generate(dataclasses.replace(TINY, num_identities=1), out, show_progress=False)
    out.rename(staging)
    (staging / "_spec.json").write_text(json.dumps(dataclasses.asdict(TINY), sort_keys=True))
    (staging / "_done").mkdir()
    rels = images(staging)
    (staging / "_done" / "00000000.json").write_text(json.dumps(rels))
    marker = staging / rels[0]
    marker.write_bytes(marker.read_bytes())  # finished files are kept, not re-rendered
    generate(TINY, out, workers=2, show_progress=False)
    assert not staging.exists()
    for rel in images(tiny_raw):
        assert (out / rel).read_bytes() == (tiny_raw / rel).read_bytes()
        for a, b in zip(pose_paths(out, rel), pose_paths(tiny_raw, rel)):
            assert a.read_text() == b.read_text()
    assert (out / "deepfashion_ref.txt").read_text() == (tiny_raw / "deepfashion_ref.txt").read_text()


def test_gt_warp_reproduces_visible_textured_pixels(tiny_raw):
    rels = images(tiny_raw)
    checked = 0
    for i in range(0, len(rels), TINY.views_per_identity):
        for a, b in ((0, 1), (1, 0), (0, 2), (1, 2)):
            target, exemplar = rels[i + a], rels[i + b]
            st, se = load_surface(surface_path(tiny_raw, target)), load_surface(surface_path(tiny_raw, exemplar))
            coords, valid = correspondence(st, se)
            assert valid.sum() <= (st.part > 0).sum()
            t_img = np.asarray(Image.open(tiny_raw / target)).astype(float)
            e_img = np.asarray(Image.open(tiny_raw / exemplar))
            flat = (maximum_filter(t_img, size=(3, 3, 1)) - minimum_filter(t_img, size=(3, 3, 1))).max(-1) < 40
            sel = valid & flat
            if sel.sum() < 30:
                continue
            warped = warp_by_correspondence(e_img, coords, valid).astype(float)
            err = np.abs(warped - t_img).max(-1)[sel]
            # A wrong map would not match: shuffle the valid coordinates as a control.
            shuffled = coords.copy()
            shuffled[valid] = coords[valid][np.random.default_rng(0).permutation(int(valid.sum()))]
            control = np.abs(warp_by_correspondence(e_img, shuffled, valid).astype(float) - t_img).max(-1)[sel]
            assert np.median(err) <= 10 and (err < 25).mean() > 0.85, (target, exemplar)
            assert control.mean() > 3 * err.mean()
            checked += 1
    assert checked >= 5


def test_self_correspondence_is_the_identity(tiny_raw):
    surf = load_surface(surface_path(tiny_raw, images(tiny_raw)[0]))
    coords, valid = correspondence(surf, surf)
    np.testing.assert_array_equal(valid, surf.part > 0)
    ys, xs = np.nonzero(valid)
    np.testing.assert_array_equal(coords[ys, xs], np.stack([xs, ys], 1))
