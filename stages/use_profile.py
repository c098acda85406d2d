"""Apply a profile (profiles/<name>.yaml) to params.yaml, keeping its comments.

    python -m stages.use_profile paper
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cocosnet.config import ConfigError
from cocosnet.profiles import apply_profile


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
