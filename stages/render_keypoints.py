"""Stage `render_keypoints`: OpenPose files -> 20-channel labels cached at data.load_size."""

from __future__ import annotations

from cocosnet.data.steps import render_keypoints
from stages.common import run_stage


def main(cfg, args) -> None:
    print(render_keypoints(cfg))


if __name__ == "__main__":
    run_stage(__doc__, main)
