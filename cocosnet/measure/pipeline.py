"""Timing `make` targets stage by stage, and what the demo's metrics must show (bench/pipeline.py)."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

STAGE_LINE = re.compile(r"^Running stage '([^']+)'")


def timed_make(target: str, cwd: Path, env: dict) -> tuple[float, dict[str, float]]:
    """Seconds for `make target` and seconds per DVC stage it ran; a failure raises with the output's tail."""
    start = time.perf_counter()
    stages: dict[str, float] = {}
    current, since, tail = None, start, []
    proc = subprocess.Popen(["make", target], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    assert proc.stdout is not None
    for line in proc.stdout:
        tail = (tail + [line.rstrip()])[-20:]
        match = STAGE_LINE.match(line)
        if match:
            now = time.perf_counter()
            if current:
                stages[current] = now - since
            current, since = match.group(1), now
    proc.wait()
    end = time.perf_counter()
    if current:
        stages[current] = end - since
    if proc.returncode:
        raise RuntimeError(f"make {target} failed in {cwd} (exit {proc.returncode}):\n" + "\n".join(tail))
    return end - start, stages


def demo_checks(metrics: dict) -> dict:
    """What the demo must show, from its reports/metrics.json."""
    levels = metrics["correspondence"]["per_level"]
    beats_identity = {level: levels["trained"][level]["epe_px"] < levels["identity"][level]["epe_px"]
                      for level in levels["trained"]}
    l1 = metrics["paired"]["l1"]
    return {"correspondence_beats_identity_every_level": all(beats_identity.values()),
            "epe_px": {who: [levels[who][k]["epe_px"] for k in sorted(levels[who], key=int)]
                       for who in ("trained", "identity")},
            "l1": {who: l1[who] for who in ("model", "finest_warp", "copy_exemplar") if who in l1},
            "output_beats_copy_on_l1": l1["model"] < l1["copy_exemplar"],
            "output_beats_finest_warp_on_l1": l1["model"] < l1["finest_warp"] if "finest_warp" in l1 else None}
