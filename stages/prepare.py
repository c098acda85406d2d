"""Stage `prepare`: pad (232) and resize every listed image to data.load_size."""

from __future__ import annotations

from cocosnet.data.steps import prepare
from stages.common import run_stage


def main(cfg, args) -> None:
    print(prepare(cfg))


if __name__ == "__main__":
    run_stage(__doc__, main)
