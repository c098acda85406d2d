import shutil

import pytest

from cocosnet.data.deepfashion import identity_of
from cocosnet.data.pairs import COLUMNS, build_pairs, validate_table
from cocosnet.errors import DataError


def copy_raw(tiny_raw, tmp_path):
    root = tmp_path / "raw"
    shutil.copytree(tiny_raw, root)
    return root


def test_pairs_from_the_official_lists(tiny_raw):
    table, summary = build_pairs(tiny_raw)
    assert list(table.columns) == list(COLUMNS)
    validate_table(table, "pairs")
    assert summary["source"] == "official lists"
    selfs = table[table["kind"] == "self"]
    assert (selfs["target"].map(identity_of) == selfs["exemplar"].map(identity_of)).all()
    assert (selfs["target"] != selfs["exemplar"]).all()
    refs = table[table["kind"] == "ref"]
    assert (refs["target"].map(identity_of) != refs["exemplar"].map(identity_of)).all()
    assert set(refs["split"]) == {"val"}  # train targets all have self pairs; ref rows are the test exemplars
    # Splits are by identity.
    ids = table.groupby(table["target"].map(identity_of))["split"].nunique()
    assert (ids == 1).all()
    # The first self row of a target is the first entry of its self-pair line (the official exemplar).
    first_line = (tiny_raw / "deepfashion_self_pair.txt").read_text().splitlines()[0].split(",")
    target = first_line[0].replace("\\", "/")
    assert table[table["target"] == target].iloc[0]["exemplar"] == first_line[1].replace("\\", "/")


def test_pairs_from_identity_naming_without_lists(tiny_raw, tmp_path):
    root = copy_raw(tiny_raw, tmp_path)
    for name in ("deepfashion_ref.txt", "deepfashion_ref_test.txt", "deepfashion_self_pair.txt"):
        (root / name).unlink()
    table, summary = build_pairs(root, seed=1)
    assert summary["source"] == "identity naming"
    again, _ = build_pairs(root, seed=1)
    assert table.equals(again)
    n_images = sum(summary["images"].values())
    assert summary["pairs"]["train/self"] + summary["pairs"]["val/self"] == n_images * 2  # 3 views -> 2 others
    assert summary["pairs"]["train/ref"] + summary["pairs"]["val/ref"] == n_images
    refs = table[table["kind"] == "ref"]
    assert (refs["target"].map(identity_of) != refs["exemplar"].map(identity_of)).all()


def corrupt_list(root, name, line):
    path = root / name
    path.write_text(path.read_text() + line + "\n")
    return len(path.read_text().splitlines())


@pytest.mark.parametrize("name,line,needle", [
    ("train.txt", "img/MEN/X/id_99999999/01_1_front.jpg", "missing file"),
    ("val.txt", "/etc/passwd", "absolute"),
    ("deepfashion_self_pair.txt", "img/../secret.jpg,img/a.jpg", "'..'"),
])
def test_bad_list_entries_name_file_and_line(tiny_raw, tmp_path, name, line, needle):
    root = copy_raw(tiny_raw, tmp_path)
    lineno = corrupt_list(root, name, line)
    with pytest.raises(DataError) as err:
        build_pairs(root)
    assert needle in str(err.value) and f"{name}:{lineno}" in str(err.value)


def test_duplicates_are_errors_or_counted_skips(tiny_raw, tmp_path):
    root = copy_raw(tiny_raw, tmp_path)
    first = (root / "train.txt").read_text().splitlines()[0]
    lineno = corrupt_list(root, "train.txt", first)
    with pytest.raises(DataError, match=f"train.txt:{lineno}: duplicate"):
        build_pairs(root)
    corrupt_list(root, "deepfashion_self_pair.txt", "img/MEN/X/id_99999999/01_1_front.jpg,img/x.jpg")
    with pytest.warns(UserWarning, match="skipping"):
        table, summary = build_pairs(root, on_bad_sample="skip")
    assert summary["skipped_list_entries"] == 2
    clean, _ = build_pairs(tiny_raw)
    assert len(table) == len(clean)


def test_unusable_images_drop_their_pairs(tiny_raw):
    table, _ = build_pairs(tiny_raw)
    bad = table.iloc[0]["target"]
    usable = set(table["target"]) | set(table["exemplar"])
    pruned, summary = build_pairs(tiny_raw, usable=usable - {bad})
    assert bad not in set(pruned["target"]) | set(pruned["exemplar"])
    assert summary["dropped_pairs_with_unusable_images"] == len(table) - len(pruned) > 0
