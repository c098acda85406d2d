"""Profiles (profiles/<name>.yaml): override files written into params.yaml, its comments kept."""

from __future__ import annotations

import io
from pathlib import Path

from ruamel.yaml import YAML

from cocosnet.config import config_from_dict, merge, read_yaml
from cocosnet.io import atomic_write


def apply_profile(params: Path, profile: Path) -> None:
    """Write the profile's keys into params.yaml and set `profile:`; validates the result."""
    overrides = read_yaml(profile)
    merged = merge(read_yaml(params), overrides) | {"profile": profile.stem}
    config_from_dict(merged)
    yaml = YAML()
    yaml.preserve_quotes = True
    doc = yaml.load(params)

    def assign(node, values):
        for key, value in values.items():
            if isinstance(value, dict):
                assign(node[key], value)
            else:
                node[key] = value

    assign(doc, overrides)
    doc["profile"] = profile.stem
    buf = io.StringIO()
    yaml.dump(doc, buf)
    atomic_write(params, buf.getvalue())
