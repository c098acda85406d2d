"""CPU allocators side by side: glibc's malloc (PyTorch's default on Linux), jemalloc and tcmalloc through
LD_PRELOAD, on the paper profile's 1024^2 inference and 512^2 training step. Every run is a fresh process
and the allocators take turns in each round (interleaved), so a slow hour weighs on all of them alike.
Writes reports/bench/allocator.json (the committed one also has the project's own caching allocator,
measured before it was removed: docs/decisions/2026-12-06-cpu-allocator.md).

    python -m bench.allocator [--rounds 3] [--configs infer:1024 train:512]

jemalloc and tcmalloc are the Debian packages libjemalloc2 and libtcmalloc-minimal4; an allocator whose
library is absent is recorded as skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from bench.harness import in_fresh_process, machine, write_report

LIBRARIES = {"jemalloc": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
             "tcmalloc": "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"}
ALLOCATORS = ("glibc", "jemalloc", "tcmalloc")


def environment(allocator: str) -> dict | None:
    """The child's environment for `allocator`, or None when its library is not installed."""
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    if allocator in LIBRARIES:
        if not Path(LIBRARIES[allocator]).exists():
            return None
        env["LD_PRELOAD"] = LIBRARIES[allocator]
    return env


def preloaded(allocator: str, env: dict) -> bool:
    """Whether a fresh interpreter with `env` has `allocator`'s library mapped (the preload took effect)."""
    probe = "print(open('/proc/self/maps').read())"
    maps = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True).stdout
    return Path(LIBRARIES[allocator]).name in maps


def summarise(records: list[dict]) -> dict:
    """Median seconds and peak per (config, allocator), and each one's time as a ratio to glibc's."""
    table: dict = {}
    for r in records:
        if "error" in r or "skipped" in r:
            continue
        entry = table.setdefault(f"{r['mode']}:{r['size']}", {}).setdefault(r["allocator"], {"seconds": [], "peak_mb": []})
        entry["seconds"].append(r["seconds"])
        entry["peak_mb"].append(r["peak_mb"])
    out = {}
    for config, by_allocator in table.items():
        medians = {a: {"seconds": statistics.median(v["seconds"]), "peak_mb": statistics.median(v["peak_mb"]),
                       "runs": len(v["seconds"])} for a, v in by_allocator.items()}
        base = medians.get("glibc", {}).get("seconds")
        for value in medians.values():
            value["vs_glibc"] = value["seconds"] / base if base else None
        out[config] = medians
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--configs", nargs="+", default=["infer:1024", "train:512"])
    parser.add_argument("--profile", default="paper")
    parser.add_argument("--out", default="reports/bench/allocator.json")
    args = parser.parse_args()
    records = []
    for round_ in range(args.rounds):
        for config in args.configs:
            mode, _, size = config.partition(":")
            order = ALLOCATORS[round_ % len(ALLOCATORS):] + ALLOCATORS[:round_ % len(ALLOCATORS)]
            for allocator in order:
                describe = {"mode": mode, "size": int(size), "allocator": allocator, "round": round_}
                env = environment(allocator)
                if env is None:
                    record = {**describe, "skipped": f"{LIBRARIES[allocator]} not installed"}
                elif allocator in LIBRARIES and not preloaded(allocator, env):
                    record = {**describe, "error": f"LD_PRELOAD={LIBRARIES[allocator]} did not take effect"}
                else:
                    record = in_fresh_process("bench.matcher", [mode, size, "--profile", args.profile, "--device", "cpu",
                                                                "--batch", "1", "--amp", "off", "--repeats", "1",
                                                                "--warmup", "1"], describe, env=env)
                    record.update(describe)
                print(json.dumps({k: v for k, v in record.items() if k != "runs"}), flush=True)
                records.append(record)
    write_report(Path(args.out), {
        "what": "paper profile, fp32, batch 1: 1024^2 inference of the correspondence network and a 512^2 "
                "pretrain step, one fresh process per run (one untimed warm-up, one timed), allocators "
                "interleaved round by round; seconds = median over rounds, peak_mb = peak RSS",
        "libraries": LIBRARIES, "summary": summarise(records), "machine": machine(), "records": records})


if __name__ == "__main__":
    main()
