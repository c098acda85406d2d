"""Apply a profile (profiles/<name>.yaml) to params.yaml, keeping its comments.

    python -m stages.use_profile paper
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from ruamel.yaml import YAML

from cocosnet.config import ConfigError, config_from_dict, merge, read_yaml
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", help="profile name (a file in profiles/)")
    parser.add_argument("--params", default="params.yaml", type=Path)
    args = parser.parse_args()
    try:
        apply_profile(args.params, Path("profiles") / f"{args.profile}.yaml")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"{args.params} now uses profile {args.profile}")


if __name__ == "__main__":
    main()
