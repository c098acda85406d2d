"""What every stage CLI shares: the --params flag, config loading, clean errors."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable

from cocosnet.config import Config, ConfigError, load_config
from cocosnet.data.errors import DataError


def run_stage(description: str, main: Callable[[Config, argparse.Namespace], None],
              add_args: Callable[[argparse.ArgumentParser], None] | None = None) -> None:
    """Parse `--params` (and stage flags), load the config, run `main`.

    Config and data errors end the process with their message and exit code 2
    instead of a traceback: they name the file, line or key already.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    if add_args:
        add_args(parser)
    args = parser.parse_args()
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"
    try:
        main(load_config(args.params), args)
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
