"""Profiles (profiles/<name>.yaml) and `key=value` overrides (as `dvc exp run -S` takes them), written
into params.yaml with its comments kept; the result is validated before anything is written."""

from __future__ import annotations

import io
from pathlib import Path

from ruamel.yaml import YAML

from cocosnet.config import ConfigError, config_from_dict, merge, read_yaml
from cocosnet.io import atomic_write


def apply_profile(params: Path, profile: Path) -> None:
    """Write the profile's keys into params.yaml and set `profile:`; validates the result."""
    write_overrides(params, read_yaml(profile), profile=profile.stem)


def parse_overrides(items: list[str]) -> dict:
    """["train.steps=200", "model.generator.warp_skip=none"] -> nested dict; each value is read as
    YAML (numbers, booleans, lists), as DVC reads `-S` values."""
    out: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
            raise ConfigError(f"override {item!r}: expected <section>.<key>=<value>, e.g. train.steps=200")
        value = YAML(typ="safe").load(text) if text.strip() else ""
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is set both as a value and as a section")
        node[parts[-1]] = value
    return out


def _check_keys(base: dict, overrides: dict, params: Path, prefix: str = "") -> None:
    for key, value in overrides.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if not isinstance(base, dict) or key not in base:
            known = sorted(base) if isinstance(base, dict) else []
            raise ConfigError(f"override {name}: {params} has no such key"
                              + (f" (keys here: {', '.join(map(str, known))})" if known else ""))
        if isinstance(value, dict):
            _check_keys(base[key], value, params, name)


def write_overrides(params: Path, overrides: dict, *, profile: str | None = None) -> None:
    """Write nested `overrides` (keys must exist) into params.yaml, comments kept; `profile` also sets
    `profile:`. Raises ConfigError naming the key before writing anything if the result is invalid."""
    base = read_yaml(params)
    if profile is None:
        _check_keys(base, overrides, params)
    merged = merge(base, overrides)
    if profile is not None:
        merged["profile"] = profile
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
    if profile is not None:
        doc["profile"] = profile
    buf = io.StringIO()
    yaml.dump(doc, buf)
    atomic_write(params, buf.getvalue())
