"""The In-shop layout (`data.source: inshop`): the synthetic set written in it, read back through the same
data stages, messy rows accepted, bad ones refused with the file and line."""

import dataclasses
import shutil

import numpy as np
import pandas as pd
import pytest

from cocosnet.config import config_from_dict
from cocosnet.data import steps
from cocosnet.data.deepfashion import SquareFrame, load_image, pose_paths
from cocosnet.data.inshop import INSHOP, convert_to_inshop, inshop_name
from cocosnet.data.keypoints import read_keypoints
from cocosnet.data.layouts import DEEPFASHION_HD, listed_images
from cocosnet.data.pair_table import pair_table
from cocosnet.data.pairs import build_pairs
from cocosnet.data.pose import PoseFileError, render_label_resized, render_pose_label
from cocosnet.data.processing import image_file, label_file, load_cached_image, load_label
from cocosnet.data.sources import layout_for
from cocosnet.data.synthetic import generate, surface_path
from cocosnet.errors import DataError
from tests.helpers import TINY, tiny_params

SPEC = dataclasses.replace(TINY, image_width=88, image_height=128)  # In-shop's aspect, 176 x 256 halved


@pytest.fixture(scope="module")
def inshop_raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("inshop") / "synthetic"
    generate(SPEC, root, workers=1, show_progress=False, layout="inshop")
    return root


def messy_copy(root, tmp_path):
    copy = tmp_path / "inshop"
    shutil.copytree(root, copy)
    return copy


def test_the_synthetic_set_is_written_in_the_benchmarks_layout(inshop_raw):
    names = {p.name for p in inshop_raw.iterdir()}
    assert {"train", "test", "train.lst", "test.lst", "fasion-resize-annotation-train.csv",
            "fasion-resize-annotation-test.csv", "fasion-resize-pairs-train.csv", "fasion-resize-pairs-test.csv"} <= names
    assert not {"img", "pose", "train.txt", "val.txt"} & names
    lists = INSHOP.lists(inshop_raw)
    assert sum(len(v) for v in lists.values()) == SPEC.num_identities * SPEC.views_per_identity
    for entries in lists.values():
        for entry in entries:
            rel = entry.paths[0]
            assert load_image(inshop_raw / rel).shape == (SPEC.image_height, SPEC.image_width, 3)
            assert surface_path(inshop_raw, rel).is_file()  # the ground truth moved with its image
    header = (inshop_raw / "fasion-resize-pairs-test.csv").read_text().splitlines()[0]
    assert header == "from,to"


def test_in_shop_names_and_identities():
    assert inshop_name("img/WOMEN/Blouses_Shirts/id_00006370/03_1_front.jpg") == \
        "fashionWOMENBlouses_Shirtsid0000637003_1front.jpg"
    assert INSHOP.identity("test/fashionWOMENBlouses_Shirtsid0000637003_1front.jpg") == \
        INSHOP.identity("train/fashionWOMENBlouses_Shirtsid0000637003_7additional.jpg") == \
        "fashionWOMENBlouses_Shirtsid0000637003"
    with pytest.raises(DataError, match="expected img/"):
        inshop_name("train/x.jpg")


def test_keypoints_are_the_same_person_as_the_deepfashion_layout_holds(tiny_raw, tmp_path):
    """Converting the HD tree moves each image and re-expresses its keypoints in the photo's pixels, rounded to
    integers as the benchmark's files hold them: within half a pixel of the HD keypoints mapped to the photo,
    and the label rendered from them in the HD frame differs from the HD label only along stroke edges."""
    spec_root = tmp_path / "hd"
    shutil.copytree(tiny_raw, spec_root)
    rel = DEEPFASHION_HD.lists(spec_root)["val"][0].paths[0]
    hd_label = DEEPFASHION_HD.label(spec_root, rel, 64)
    frame = SquareFrame(TINY.image_width, TINY.image_height)
    hd_photo = frame.from_frame(read_keypoints(pose_paths(spec_root, rel)[0]))
    moved = convert_to_inshop(spec_root)
    kp = INSHOP.keypoints(spec_root, moved[rel])
    assert np.array_equal(np.isnan(kp), np.isnan(hd_photo))
    assert np.nanmax(np.abs(kp - hd_photo)) <= 0.5
    diff = np.abs(render_label_resized(frame.to_frame(kp), 64).astype(int) - hd_label)
    assert diff.mean() < 1.5 and (diff[..., :3] > 0).mean() < 0.02
    assert read_keypoints(spec_root / "fasion-resize-annotation-test.csv", name=moved[rel].split("/")[-1]).shape == (18, 2)


def test_labels_are_drawn_on_the_photos_own_padded_square(inshop_raw):
    rel = INSHOP.lists(inshop_raw)["train"][0].paths[0]
    kp = INSHOP.keypoints(inshop_raw, rel)
    frame = SquareFrame(SPEC.image_width, SPEC.image_height)
    expected = render_pose_label(kp + np.array(frame.offset), frame.side)  # canvas 128: 3 px discs, not 1024's 20
    assert np.array_equal(INSHOP.label(inshop_raw, rel, frame.side), expected)
    label = INSHOP.label(inshop_raw, rel, 64)
    assert label.shape == (64, 64, 20)
    x, y = (kp[1] + frame.offset) * 64 / frame.side  # the neck's disc lands on the neck
    assert label[int(y), int(x), :3].max() > 0


def test_the_data_stages_run_on_the_in_shop_layout(inshop_raw, tmp_path):
    raw = tiny_params(inshop_raw, tmp_path / "processed")
    raw["data"]["source"] = "inshop"
    cfg = config_from_dict(raw)
    steps.prepare(cfg)
    steps.render_keypoints(cfg)
    pair_table(cfg, tmp_path / "reports")
    table = pd.read_parquet(tmp_path / "processed" / "pairs.parquet")
    rels = listed_images(INSHOP, inshop_raw)
    for rel in rels:
        assert load_cached_image(image_file(tmp_path / "processed" / "img", rel)).shape == (72, 72, 3)
        assert load_label(label_file(tmp_path / "processed" / "label", rel)).shape == (72, 72, 20)
    val = table[table["split"] == "val"]
    pairs_test = (inshop_raw / "fasion-resize-pairs-test.csv").read_text().splitlines()[1:]
    assert (val["kind"] == "self").sum() == len(pairs_test)
    first_from, first_to = pairs_test[0].split(",")
    row = val.iloc[0]
    assert (row["exemplar"], row["target"]) == (f"test/{first_from}", f"test/{first_to}")  # from = exemplar
    assert (val["kind"] == "ref").sum() == len(INSHOP.lists(inshop_raw)["val"])  # one ref row per val image
    assert set(table[table["split"] == "train"]["kind"]) == {"self"}


def test_messy_but_valid_files_are_read(inshop_raw, tmp_path):
    root = messy_copy(inshop_raw, tmp_path)
    lst = root / "test.lst"
    lst.write_bytes(b"\xef\xbb\xbf" + lst.read_text().replace("\n", "\r\n\r\n").encode())  # BOM, CRLF, blank lines
    pairs = root / "fasion-resize-pairs-test.csv"
    rows = pairs.read_text().splitlines()
    pairs.write_text(",from,to\r\n" + "".join(f"{i},{r}\r\n\r\n" for i, r in enumerate(rows[1:])))  # index column
    ann = root / "fasion-resize-annotation-test.csv"
    ann.write_text(ann.read_text().replace(": [", ":[") + "\n\n")
    table, summary = build_pairs(root, layout=INSHOP)
    clean, _ = build_pairs(inshop_raw, layout=INSHOP)
    pd.testing.assert_frame_equal(table, clean)
    assert summary["layout"] == "inshop" and summary["source"] == "pose-transfer pair CSVs"
    rel = INSHOP.lists(root)["val"][0].paths[0]
    assert np.array_equal(INSHOP.label(root, rel, 32), INSHOP.label(inshop_raw, rel, 32))


def _line_of(path, needle):
    return next(n for n, line in enumerate(path.read_text().splitlines(), start=1) if needle in line)


def test_a_pairs_row_naming_an_unknown_image_is_refused_with_its_line(inshop_raw, tmp_path):
    root = messy_copy(inshop_raw, tmp_path)
    pairs = root / "fasion-resize-pairs-test.csv"
    lines = pairs.read_text().splitlines()
    lines.insert(2, f"{lines[1].split(',')[0]},fashionMENnobodyid0000000001_1front.jpg")
    pairs.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"fasion-resize-pairs-test\.csv:3: .*fashionMENnobodyid0000000001_1front"):
        build_pairs(root, layout=INSHOP)
    with pytest.warns(UserWarning, match="skipping"):
        table, summary = build_pairs(root, layout=INSHOP, on_bad_sample="skip")
    assert summary["skipped_list_entries"] == 1
    assert len(table) == len(build_pairs(inshop_raw, layout=INSHOP)[0])


def test_a_train_image_paired_in_the_test_csv_is_refused(inshop_raw, tmp_path):
    root = messy_copy(inshop_raw, tmp_path)
    train_name = INSHOP.lists(root)["train"][0].paths[0].split("/")[-1]
    pairs = root / "fasion-resize-pairs-test.csv"
    pairs.write_text(pairs.read_text() + f"{train_name},{train_name}\n")
    with pytest.raises(DataError, match=r"fasion-resize-pairs-test\.csv:\d+: names an image that test\.lst"):
        build_pairs(root, layout=INSHOP)


def test_an_annotation_row_with_the_wrong_joint_count_is_refused_with_its_line(inshop_raw, tmp_path):
    root = messy_copy(inshop_raw, tmp_path)
    ann = root / "fasion-resize-annotation-train.csv"
    rel = INSHOP.lists(root)["train"][1].paths[0]
    name = rel.split("/")[-1]
    text = ann.read_text()
    row = next(line for line in text.splitlines() if line.startswith(name))
    ann.write_text(text.replace(row, row.replace("[", "[5, ", 1)))
    with pytest.raises(PoseFileError, match=rf"fasion-resize-annotation-train\.csv:{_line_of(ann, name)}: the y list "
                                            "has 19 joints, expected 18"):
        INSHOP.label(root, rel, 32)


def test_missing_files_and_rows_are_named(inshop_raw, tmp_path):
    root = messy_copy(inshop_raw, tmp_path)
    rel = INSHOP.lists(root)["val"][0].paths[0]
    ann = root / "fasion-resize-annotation-test.csv"
    ann.write_text("\n".join(line for line in ann.read_text().splitlines() if not line.startswith(rel.split("/")[1])))
    with pytest.raises(DataError, match=rf"fasion-resize-annotation-test\.csv: no row for image '{rel.split('/')[1]}'"):
        INSHOP.label(root, rel, 32)
    (root / "fasion-resize-pairs-train.csv").unlink()
    with pytest.raises(DataError, match=r"fasion-resize-pairs-train\.csv: pairs file not found"):
        build_pairs(root, layout=INSHOP)
    (root / "train.lst").unlink()
    with pytest.raises(DataError, match=r"train\.lst: list file not found"):
        INSHOP.lists(root)
    ann.write_text("name,x,y\n")
    with pytest.raises(PoseFileError, match=r"fasion-resize-annotation-test\.csv:1: expected the header"):
        INSHOP.label(root, rel, 32)


def test_a_duplicate_annotation_row_is_refused(inshop_raw, tmp_path):
    root = messy_copy(inshop_raw, tmp_path)
    ann = root / "fasion-resize-annotation-test.csv"
    lines = ann.read_text().splitlines()
    ann.write_text("\n".join(lines + [lines[1]]) + "\n")
    rel = INSHOP.lists(root)["val"][0].paths[0]
    with pytest.raises(PoseFileError, match=rf"fasion-resize-annotation-test\.csv:{len(lines) + 1}: .*listed twice"):
        INSHOP.label(root, rel, 32)


def test_data_source_chooses_the_layout():
    assert layout_for("inshop") is INSHOP
    assert layout_for("deepfashion") is DEEPFASHION_HD and layout_for("synthetic") is DEEPFASHION_HD
    with pytest.raises(ValueError, match="no layout"):
        layout_for("coco")


def test_the_inshop256_profile_sets_the_layout_size_and_protocol(tmp_path):
    from cocosnet.config import load_config
    from cocosnet.profiles import apply_profile
    from tests.helpers import ROOT

    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    apply_profile(params, ROOT / "profiles" / "inshop256.yaml")
    cfg = load_config(params)
    assert (cfg.data.source, cfg.data.load_size, cfg.data.crop_size, cfg.eval.protocol) == ("inshop", 256, 256,
                                                                                          "pose_transfer")
    assert (cfg.synthetic.image_width, cfg.synthetic.image_height) == (176, 256)
