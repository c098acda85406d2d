import dataclasses
import re
import shutil
import typing

import pytest
import yaml

from cocosnet.config import Config, ConfigError, config_from_dict, flatten, load_config, read_yaml
from cocosnet.profiles import apply_profile
from tests.helpers import ROOT


def schema_keys(cls, prefix=""):
    keys = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            keys |= schema_keys(hints[f.name], name + ".")
        else:
            keys.add(name)
    return keys


def test_params_yaml_and_dataclasses_agree():
    raw = read_yaml(ROOT / "params.yaml")
    assert set(flatten(raw)) == schema_keys(Config)
    cfg = load_config(ROOT / "params.yaml")
    assert cfg.profile == "demo" and cfg.data.source == "synthetic"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.data.load_size = 3


def mutated(**changes):
    raw = read_yaml(ROOT / "params.yaml")
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        raw[section][key] = value
    return raw


@pytest.mark.parametrize("changes,needle", [
    ({"data__load_sizee": 3}, "data.load_sizee"),
    ({"data__load_size": "136"}, "data.load_size: expected int"),
    ({"synthetic__val_fraction": "1e-1"}, "1.0e-4"),
    ({"data__on_bad_sample": "ignore"}, "data.on_bad_sample"),
    ({"data__crop_size": 200}, "data.crop_size"),
    ({"synthetic__seed": True}, "synthetic.seed: expected int"),
])
def test_bad_params_name_the_key(changes, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        config_from_dict(mutated(**changes))


def test_missing_and_unknown_sections(tmp_path):
    raw = read_yaml(ROOT / "params.yaml")
    del raw["synthetic"]
    with pytest.raises(ConfigError, match="missing key.*synthetic"):
        config_from_dict(raw)
    bad = tmp_path / "p.yaml"
    bad.write_text(yaml.safe_dump(read_yaml(ROOT / "params.yaml") | {"extra": {"a": 1}}))
    with pytest.raises(ConfigError, match=f"{bad}.*unknown key.*extra"):
        load_config(bad)


def test_profiles_are_override_files(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    demo, paper = (read_yaml(ROOT / "profiles" / f"{p}.yaml") for p in ("demo", "paper"))
    assert set(flatten(demo)) == set(flatten(paper))  # switching back and forth is lossless
    apply_profile(params, ROOT / "profiles" / "demo.yaml")
    assert read_yaml(params) == read_yaml(ROOT / "params.yaml")  # params.yaml ships at the demo profile
    apply_profile(params, ROOT / "profiles" / "paper.yaml")
    cfg = load_config(params)
    assert (cfg.profile, cfg.data.source, cfg.data.crop_size) == ("paper", "deepfashion", 512)
    assert "# Single source of defaults" in params.read_text()  # comments survive
    apply_profile(params, ROOT / "profiles" / "demo.yaml")
    assert load_config(params) == load_config(ROOT / "params.yaml")
    typo = tmp_path / "typo.yaml"
    typo.write_text("data:\n  crop_sise: 3\n")
    with pytest.raises(ConfigError, match="data.crop_sise"):
        apply_profile(params, typo)


def _with(dotted: str, value):
    raw = read_yaml(ROOT / "params.yaml")
    node = raw
    *parents, key = dotted.split(".")
    for name in parents:
        node = node[name]
    node[key] = value
    return raw


@pytest.mark.parametrize("dotted,value,expected", [
    ("eval.max_pairs", -1, ">= 0"), ("eval.batch_size", 0, ">= 1"), ("eval.jpeg_quality", 500, "in [1, 100]"),
    ("train.lr", -1.0, "> 0"), ("train.ema_decay", 1.5, "in [0, 1)"), ("train.beta2", 2.0, "in [0, 1)"),
    ("model.correspondence.iters", [3, 0, 3], "in [1, 100]"), ("model.correspondence.temperature", 0.0, "> 0"),
    ("data.workers", -3, ">= 0"), ("eval.swd_size", -1, ">= 16 or 0"), ("eval.swd_size", 8, ">= 16 or 0"),
    ("pretrain.lr", 0.0, "> 0"), ("model.align.widths", [16, 0, 8, 8], "in [1, 2048]"),
    ("loss_weights.warp_self", -1.0, ">= 0"), ("synthetic.jpeg_quality", 0, "in [1, 100]"),
    ("vgg.weights", "", "a non-empty string"), ("train.decay_start", 500, "must be < train.steps"),
    ("train.lr", float("inf"), "a finite number"), ("train.grad_clip", float("nan"), "a finite number"),
    ("loss_weights.gan", float("inf"), "a finite number"), ("data.crop_size", 2 ** 20, "in [8, 4096]"),
    ("model.generator.ngf", 10 ** 6, "in [1, 2048]"), ("train.lr", 10 ** 400, "a finite number"),
    ("refine.patch", -1, ">= 0"), ("refine.patch", 65, "must not exceed data.crop_size (64)"),
])
def test_each_out_of_range_param_is_refused_by_name_before_any_work(dotted, value, expected):
    with pytest.raises(ConfigError, match=re.escape(dotted) + ".*" + re.escape(expected)):
        config_from_dict(_with(dotted, value))


def test_every_numeric_and_path_param_has_a_stated_range():
    def walk(cls, prefix=""):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                yield from walk(tp, f"{prefix}{f.name}.")
            elif tp in (int, float) or (typing.get_origin(tp) is tuple and typing.get_args(tp)[0] in (int, float)):
                yield f"{prefix}{f.name}", f.metadata.get("check")

    unchecked = [key for key, rule in walk(Config) if rule is None]
    assert not unchecked, f"params without a range: {unchecked}"
    config_from_dict(_with("eval.swd_size", 0))  # 0 = as generated, outside the range but allowed
