"""The data stages end to end on a tiny synthetic set, with good and bad inputs."""

import json
import shutil

import pandas as pd
import pytest
import yaml

from cocosnet.config import config_from_dict, read_yaml
from cocosnet.data import steps
from cocosnet.data.pair_table import pair_table
from cocosnet.data.processing import MANIFEST, Manifest, image_file, label_file, load_label
from cocosnet.errors import DataError
from tests.helpers import ROOT


def config(tmp_path, root, **data):
    raw = read_yaml(ROOT / "params.yaml")
    raw["data"].update(root=str(root), processed=str(tmp_path / "processed"), load_size=40,
                       crop_size=32, workers=1, **data)
    return config_from_dict(raw)


def run_all(cfg, tmp_path):
    steps.prepare(cfg)
    steps.render_keypoints(cfg)
    pair_table(cfg, tmp_path / "reports")


def test_data_stages_end_to_end(tiny_raw, tmp_path):
    cfg = config(tmp_path, tiny_raw)
    run_all(cfg, tmp_path)
    processed = tmp_path / "processed"
    table = pd.read_parquet(processed / "pairs.parquet")
    assert list(table.columns) == ["target", "exemplar", "kind", "split"] and len(table) > 0
    rel = table.iloc[0]["target"]
    label = load_label(label_file(processed / "label", rel))
    assert label.shape == (40, 40, 20) and label.dtype.name == "uint8"
    assert image_file(processed / "img", rel).is_file()
    summary = json.loads((tmp_path / "reports" / "summary.json").read_text())
    assert summary["pairs"]["val/ref"] > 0 and summary["skipped_count"] == 0
    assert (tmp_path / "reports" / "contact_sheet.png").stat().st_size > 1000
    assert not list(tmp_path.glob("processed/*.partial"))


def test_bad_samples_error_or_skip_with_a_count(tiny_raw, tmp_path):
    root = tmp_path / "raw"
    shutil.copytree(tiny_raw, root)
    rels = [line for line in (root / "train.txt").read_text().splitlines()]
    jpeg = root / rels[0]
    jpeg.write_bytes(jpeg.read_bytes()[:200])  # truncated JPEG
    cand = (root / rels[1].replace("img/", "pose/", 1)).with_name(rels[1].split("/")[-1][:-4] + "_candidate.txt")
    cand.write_text(cand.read_text().splitlines()[0][:20] + "\n" + cand.read_text())  # truncated row

    with pytest.raises(DataError, match=rels[0].split("/")[-1]):
        steps.prepare(config(tmp_path, root))
    assert not (tmp_path / "processed" / "img").exists()  # nothing half-written where DVC looks

    cfg = config(tmp_path, root, on_bad_sample="skip")
    with pytest.warns(UserWarning):
        run_all(cfg, tmp_path)
    images = Manifest.read(tmp_path / "processed" / "img" / MANIFEST)
    labels = Manifest.read(tmp_path / "processed" / "label" / MANIFEST)
    assert list(images.skipped) == [rels[0]] and list(labels.skipped) == [rels[1]]
    summary = json.loads((tmp_path / "reports" / "summary.json").read_text())
    assert summary["skipped_count"] == 2
    table = pd.read_parquet(tmp_path / "processed" / "pairs.parquet")
    used = set(table["target"]) | set(table["exemplar"])
    assert rels[0] not in used and rels[1] not in used


def test_dvc_yaml_declares_the_data_stages():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert {"synthesize", "prepare", "render_keypoints", "build_pairs"} <= set(stages)
    for name, stage in stages.items():
        assert f"stages/{name}.py" in stage["deps"]
