"""The GPU benchmark run behind bench/gpu.sh: the matcher and training-step benchmarks with AMP at
batch 4 and 512^2, then the tests marked `gpu`; everything lands in reports/bench/gpu.json.

    python -m bench.gpu [--device cuda] [--amp bfloat16] [--batch 4] [--quick] [--out reports/bench/gpu.json]

The training step is timed first and also profiled once (its top ops and kernels, and the device's
busy time against the wall time). --quick runs the same chain at the demo profile and 64^2 (what CI
checks on CPU); on a CPU device the tests marked gpu report as skipped, which the JSON records as such.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.harness import ROOT, machine, write_report

GOAL_STEP_S = 0.5  # a 512^2 training step at batch 4 on one H200-class GPU
REPEATS = 3  # timed runs per configuration (the median is reported), after 2 untimed ones
TOP_OPS = 15  # the training step's profile: this many ops and kernels


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    """Run cmd, then echo the ends of its output (so a log of this script shows any traceback)."""
    print("gpu: " + " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    print(proc.stdout[-6000:], proc.stderr[-3000:], sep="\n", flush=True)
    return proc


def pytest_summary(output: str) -> dict:
    """Counts from pytest's last line ('3 passed, 1 skipped in 2.1s')."""
    return {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", output)}


def _records(value: list | dict) -> list[dict]:
    return value if isinstance(value, list) else [value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--amp", default="bfloat16", choices=["off", "bfloat16", "float16"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="demo profile at 64^2 (checks the chain, not speed)")
    parser.add_argument("--out", default="reports/bench/gpu.json")
    args = parser.parse_args()
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            sys.exit("error: bench/gpu.sh needs a CUDA device (torch.cuda.is_available() is False); "
                     "use DEVICE=cpu bench/gpu.sh --quick to check the chain on CPU")
    profile, size = ("demo", 64) if args.quick else ("paper", 512)
    common = ["--profile", profile, "--device", args.device, "--batch", str(args.batch), "--amp", args.amp,
              "--warmup", "0" if args.quick else "2", "--repeats", "1" if args.quick else str(REPEATS)]
    result: dict = {"what": f"AMP ({args.amp}) at batch {args.batch} and {size}^2, profile {profile}",
                    "machine": machine(), "goal": {"train_step_s": GOAL_STEP_S, "size": 512, "batch": 4}}
    out = ROOT / args.out if not Path(args.out).is_absolute() else Path(args.out)
    # The tests first (quick, and they say whether the benchmarks can be trusted); the report is
    # rewritten after each part, so a run stopped by a time limit keeps what it finished.
    tests = run([sys.executable, "-m", "pytest", "-m", "gpu", "-o", "addopts=", "-q", "-p", "no:cacheprovider",
                 "tests/test_gpu.py"])
    result["tests_gpu"] = {"exit_status": tests.returncode, **pytest_summary(tests.stdout),
                           "last_line": (tests.stdout.strip().splitlines() or [""])[-1]}
    write_report(out, result)
    with tempfile.TemporaryDirectory() as tmp:
        matcher, step = Path(tmp) / "matcher.json", Path(tmp) / "train_step.json"
        configs = [f"train:{size}", f"infer:{size}", f"infer:{2 * size}"]
        for cmd, path, key in (
                ([sys.executable, "-m", "bench.train_step", *common, "--sizes", str(size), "--out", str(step),
                  "--top-ops", str(TOP_OPS)],
                 step, "train_step"),
                ([sys.executable, "-m", "bench.matcher", *common, "--configs", *configs, "--out", str(matcher)],
                 matcher, "matcher")):
            proc = run(cmd)
            if proc.returncode or not path.exists():
                result[key] = {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]}
            else:
                result[key] = json.loads(path.read_text())["records"]
            write_report(out, result)
    steps = [r for r in _records(result["train_step"]) if "step_s" in r]
    if steps and not args.quick:
        result["goal"]["met"] = steps[0]["step_s"] <= GOAL_STEP_S
    write_report(out, result)
    print(json.dumps({k: result[k] for k in ("goal", "tests_gpu")}), flush=True)
    errors = [r for key in ("matcher", "train_step") for r in _records(result[key]) if "error" in r]
    failed = bool(errors) or tests.returncode not in (0, 5)  # 5: no test collected
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
