import numpy as np
import pytest
from PIL import Image

from cocosnet.data.deepfashion import (
    SquareFrame,
    load_image,
    normalise_relpath,
    pad_to_square,
    pose_paths,
    preprocess_image,
    read_pair_list,
    read_split_list,
)
from cocosnet.errors import DataError


def test_official_padding_of_750_by_1101():
    image = np.zeros((1101, 750, 3), np.uint8)
    square = pad_to_square(image)
    assert square.shape == (1101, 1101, 3)
    assert (square[:, :175] == 232).all() and (square[:, 175:925] == 0).all() and (square[:, 925:] == 232).all()
    assert SquareFrame(750, 1101).offset == (175, 0)


def test_other_sizes_pad_the_short_side_and_keypoint_frames_round_trip():
    wide = pad_to_square(np.zeros((40, 61, 3), np.uint8))
    assert wide.shape == (61, 61, 3) and (wide[:10] == 232).all() and (wide[10:50] == 0).all()
    frame = SquareFrame(204, 300)
    xy = np.array([[0.0, 0.0], [203.0, 299.0], [101.5, 17.25]])
    np.testing.assert_allclose(frame.from_frame(frame.to_frame(xy)), xy)
    # The padded square's centre maps to the 1024 frame's centre.
    np.testing.assert_allclose(frame.to_frame(np.array([[101.5, 149.5]])), [[511.5, 511.5]])
    out = preprocess_image(np.full((300, 204, 3), 7, np.uint8), 64)
    assert out.shape == (64, 64, 3) and out[32, 0, 0] == 232 and out[32, 32, 0] == 7


@pytest.mark.parametrize("raw,needle", [("/abs/img/x.jpg", "absolute"), ("img/../x.jpg", "'..'"),
                                        ("C:\\img\\x.jpg", "absolute"), ("  ", "empty")])
def test_bad_relative_paths_are_refused(raw, needle):
    with pytest.raises(DataError, match=needle) as err:
        normalise_relpath(raw, "list.txt:7")
    assert "list.txt:7" in str(err.value)


def test_lists_with_backslashes_and_crlf(tmp_path):
    (tmp_path / "pairs.txt").write_bytes(b"img\\WOMEN\\A\\id_1\\01_1_front.jpg,img\\WOMEN\\A\\id_1\\01_2_side.jpg\r\n\r\n")
    (tmp_path / "train.txt").write_bytes(b"img/WOMEN/A/id_1/01_1_front.jpg\r\n")
    [entry] = read_pair_list(tmp_path / "pairs.txt")
    assert entry.paths == ("img/WOMEN/A/id_1/01_1_front.jpg", "img/WOMEN/A/id_1/01_2_side.jpg")
    assert entry.source.endswith("pairs.txt:1")
    assert read_split_list(tmp_path / "train.txt")[0].paths == ("img/WOMEN/A/id_1/01_1_front.jpg",)
    (tmp_path / "bad.txt").write_text("img/a/id_1/x.jpg\n")
    with pytest.raises(DataError, match="bad.txt:1"):
        read_pair_list(tmp_path / "bad.txt")


def test_pose_paths_follow_the_official_mapping(tmp_path):
    cand, sub = pose_paths(tmp_path, "img/WOMEN/Dresses/id_00000244/02_1_front.jpg")
    assert cand == tmp_path / "pose/WOMEN/Dresses/id_00000244/02_1_front_candidate.txt"
    assert sub == tmp_path / "pose/WOMEN/Dresses/id_00000244/02_1_front_subset.txt"


def test_corrupt_and_truncated_images_raise_naming_the_file(tmp_path):
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 48, 3), dtype=np.uint8)).save(good)
    assert load_image(good).shape == (64, 48, 3)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not a jpeg at all")
    for path in (truncated, garbage):
        with pytest.raises(DataError) as err:
            load_image(path)
        assert path.name in str(err.value)
    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((8, 8), 9, np.uint8)).save(gray)
    assert load_image(gray).shape == (8, 8, 3)
