"""What every stage CLI shares: the --params and --debug flags, config loading, the stage lock, clean errors."""

from __future__ import annotations

import argparse
import errno
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from cocosnet.config import Config, load_config
from cocosnet.errors import CocosnetError
from cocosnet.io import storage_error
from cocosnet.stage_run import lock_name, one_line, stage_lock

DEBUG_ENV = "COCOSNET_DEBUG"


def run_stage(description: str, main: Callable[[Config, argparse.Namespace], None],
              add_args: Callable[[argparse.ArgumentParser], None] | None = None) -> None:
    """Parse `--params` (and stage flags), load the config, take the stage's lock (named after the
    script: `python -m stages.evaluate` holds `.locks/evaluate.lock`; with `--params study/params.yaml`,
    `.locks/evaluate@study_params.lock`), run `main`.

    Errors a user can act on (bad params or data, a corrupt file, a full disk, a held lock) end
    the process with one line naming the file or key and exit status 2; `--debug` or
    COCOSNET_DEBUG=1 keeps the traceback.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--debug", action="store_true", help=f"show tracebacks (or set {DEBUG_ENV}=1)")
    if add_args:
        add_args(parser)
    args = parser.parse_args()
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"
    try:
        cfg = load_config(args.params)
        with stage_lock(lock_name(Path(sys.argv[0]).stem, args.params)):
            main(cfg, args)
    except (CocosnetError, OSError) as exc:
        if debug:
            raise
        if isinstance(exc, OSError) and not isinstance(exc, CocosnetError):
            if exc.filename is None:
                raise
            exc = storage_error(Path(exc.filename), exc) if exc.errno == errno.ENOSPC else exc
        print(f"error: {one_line(exc)}", file=sys.stderr)
        sys.exit(2)

