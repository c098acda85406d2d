import dataclasses
import shutil
import typing

import pytest
import yaml

from cocosnet.config import Config, ConfigError, config_from_dict, flatten, load_config, read_yaml
from stages.use_profile import apply_profile
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
