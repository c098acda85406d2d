"""Property-based tests of the readers of untrusted files: whatever the bytes, the result is a value or one
CocosnetError of one line, and neither time nor memory runs away (10 s a case; 64 MiB of Python
allocations, which numpy reports too). The examples are derandomised, so CI sees the same ones."""

import json
import math
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cocosnet.config import load_config, read_yaml
from cocosnet.data.deepfashion import load_image
from cocosnet.data.keypoints import POSE_TRANSFER_HEADER, read_keypoints
from cocosnet.errors import CocosnetError
from cocosnet.generate import read_pairs
from tests.helpers import ROOT, png_header

CASES = settings(max_examples=120, deadline=10_000, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MEMORY = 64 * 2**20


def outcome(read, *args, **kwargs):
    """`read(...)`'s value, or its CocosnetError's message; any other exception fails the test."""
    tracemalloc.start()
    try:
        return read(*args, **kwargs)
    except CocosnetError as exc:
        message = str(exc)
        assert "\n" not in message and len(message) < 2000, message[:3000]
        return message
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < MEMORY, f"{peak / 2**20:.0f} MiB"


@pytest.fixture(scope="module")
def folder():
    with tempfile.TemporaryDirectory() as name:
        yield Path(name)


def _write(folder: Path, name: str, data) -> Path:
    path = folder / name
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8", errors="surrogatepass")
    else:
        path.write_bytes(data)
    return path


# Keypoint files: JSON of any shape, pose-transfer CSV rows, OpenPose text tables, raw bytes.
scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-10**30, max_value=10**30),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=60), st.dictionaries(st.sampled_from(
        ["people", "pose_keypoints_2d", "pose_keypoints", "keypoints", "annotations", "images", "id", "image_id",
         "file_name", "x"]), inner, max_size=6)), max_leaves=200)
coordinates = st.floats(allow_nan=True, allow_infinity=True) | st.integers()
person = st.fixed_dictionaries({"pose_keypoints_2d": st.lists(coordinates, min_size=54, max_size=75)})
openpose = st.fixed_dictionaries({"people": st.lists(person | json_values, max_size=3)})
image = st.fixed_dictionaries({"id": json_values, "file_name": st.text(max_size=6)})
annotation = st.fixed_dictionaries({"image_id": json_values, "keypoints": st.lists(scalars, max_size=51)})
coco = st.fixed_dictionaries({"images": st.lists(image, max_size=3), "annotations": st.lists(annotation, max_size=3)})
number_lists = st.lists(st.one_of(st.integers(-5, 2000), st.floats(allow_nan=False), st.just(-1)), max_size=20)
csv_rows = st.lists(st.tuples(st.text(alphabet="abc.jpg_", max_size=6), number_lists, number_lists), max_size=4)


def _csv(rows) -> str:
    return POSE_TRANSFER_HEADER + "\n" + "".join(f"{name}: {json.dumps(y)}: {json.dumps(x)}\n" for name, y, x in rows)


@CASES
@given(doc=st.one_of(openpose, coco, json_values), name=st.one_of(st.none(), st.text(max_size=6), st.integers()))
def test_any_json_gives_keypoints_or_one_error(folder, doc, name):
    path = _write(folder, "pose.json", json.dumps(doc))
    result = outcome(read_keypoints, path, name=name)
    if isinstance(result, np.ndarray):
        assert result.shape == (18, 2) and result.dtype == np.float64
        assert np.all(np.isfinite(result) | np.isnan(result))


@CASES
@given(rows=csv_rows, name=st.one_of(st.none(), st.text(alphabet="abc.jpg_", max_size=6)),
       noise=st.text(max_size=40))
def test_any_pose_transfer_csv_gives_keypoints_or_one_error(folder, rows, name, noise):
    path = _write(folder, "annotations.csv", _csv(rows) + noise)
    result = outcome(read_keypoints, path, name=name)
    assert isinstance(result, str) or result.shape == (18, 2)


@CASES
@given(candidate=st.text(alphabet="0123456789.-e \n\tnaif", max_size=300),
       subset=st.text(alphabet="0123456789.-e \n\tnaif", max_size=300),
       given_file=st.sampled_from(["candidate", "subset"]))
def test_any_openpose_tables_give_keypoints_or_one_error(folder, candidate, subset, given_file):
    paths = {"candidate": _write(folder, "x_candidate.txt", candidate),
             "subset": _write(folder, "x_subset.txt", subset)}
    result = outcome(read_keypoints, paths[given_file])
    assert isinstance(result, str) or result.shape == (18, 2)


@CASES
@given(data=st.binary(max_size=400))
def test_any_bytes_give_keypoints_or_one_error(folder, data):
    outcome(read_keypoints, _write(folder, "raw.json", data))


# Pairs CSVs.
cells = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)


@CASES
@given(header=st.lists(st.sampled_from(["exemplar", "exemplar_pose", "pose", "out", "pose_name", "x", ""]), max_size=6),
       rows=st.lists(st.lists(cells, max_size=6), max_size=5), bom=st.booleans(), tail=st.binary(max_size=20))
def test_any_pairs_csv_gives_rows_or_one_error(folder, header, rows, bom, tail):
    text = ("\ufeff" if bom else "") + ",".join(header) + "\n" + "\n".join(",".join(r) for r in rows)
    path = _write(folder, "pairs.csv", text.encode("utf-8") + tail)
    result = outcome(read_pairs, path)
    if isinstance(result, list):
        assert result and all(isinstance(row, dict) for row in result)
        assert {"exemplar", "exemplar_pose", "pose", "out"} <= set(result[0])


# Image headers: any declared size, any bytes after the header.

@pytest.fixture(scope="module")
def small_image_cap():
    """A 1 MP cap: it bounds the memory a header can make the decoder ask for."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COCOSNET_MAX_IMAGE_PIXELS", "1000000")
        yield


@CASES
@given(width=st.integers(1, 2**31 - 1), height=st.integers(1, 2**31 - 1), tail=st.binary(max_size=64),
       kind=st.sampled_from(["png", "bytes"]))
def test_any_image_header_gives_pixels_or_one_error(folder, small_image_cap, width, height, tail, kind):
    path = folder / "photo.png"
    if kind == "png":
        png_header(path, width, height)
        path.write_bytes(path.read_bytes()[:-12] + tail)  # the pixels, if any, are whatever follows
    else:
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + tail)
    result = outcome(load_image, path)
    if isinstance(result, np.ndarray):
        assert result.dtype == np.uint8 and result.ndim == 3 and result.shape[2] == 3
    elif kind == "png" and (max(width, height) > 10_000 or width * height > 1_000_000):
        assert "over the cap" in result, result


# Params files: a known key given any YAML value, aliases and all; or any text at all.
yaml_values = st.one_of(
    st.integers(min_value=-10**20, max_value=10**20).map(str), st.floats().map(lambda f: repr(f).replace("inf", ".inf")
                                                                              .replace("nan", ".nan")),
    st.sampled_from(["true", "~", "[]", "{}", "&a [1, 2]", "*a", "[*a, *a]", "1e-4", "'x'", "[1, [2, [3]]]",
                     "!!python/object:os.system {}", "{a: 1, a: 2}", "\"\\x00\""]),
    st.text(alphabet="[]{}:,&*!'\"-? 0123456789abc\n", max_size=40))
KEYS = ["  load_size: ", "  crop_size: ", "  steps: ", "  lr: ", "    widths: ", "    temperature: ", "profile: "]


@CASES
@given(key=st.sampled_from(KEYS), value=yaml_values)
def test_any_value_of_a_known_key_gives_a_config_or_one_error(folder, key, value):
    text = (ROOT / "params.yaml").read_text()
    line = next(line for line in text.splitlines() if line.startswith(key))
    path = _write(folder, "params.yaml", text.replace(line, key + value.replace("\n", " "), 1))
    result = outcome(load_config, path)
    if not isinstance(result, str):
        for number in (result.train.lr, result.pretrain.lr, result.model.correspondence.temperature):
            assert math.isfinite(number)


@CASES
@given(data=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_any_bytes_give_params_or_one_error(folder, data):
    outcome(read_yaml, _write(folder, "params.yaml", data))
