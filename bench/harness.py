"""What the benchmarks share: a model config at a named profile, synthetic inputs, timing with device
sync, peak memory, and running each configuration in a fresh process (so peaks do not mix)."""

from __future__ import annotations

import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bench_config(profile: str, **model: dict):
    """params.yaml with `profiles/<profile>.yaml` applied, random VGG weights (timing only), and
    `model` sections merged on top (e.g. align={"widths": [...]})."""
    from cocosnet.config import config_from_dict, merge, read_yaml

    raw = merge(read_yaml(ROOT / "params.yaml"), read_yaml(ROOT / "profiles" / f"{profile}.yaml"))
    raw["vgg"]["weights"] = "random"
    raw = merge(raw, {"model": model}) if model else raw
    return config_from_dict(raw)


def inputs(batch: int, size: int, device: str, *, label_nc: int = 20, seed: int = 0) -> dict:
    """One training batch of the shape the data loader gives: labels in [0, 1], images in [-1, 1]."""
    import torch

    g = torch.Generator().manual_seed(seed)

    def image():
        return (torch.rand(batch, 3, size, size, generator=g) * 2 - 1).to(device)

    def label():
        return torch.rand(batch, label_nc, size, size, generator=g).to(device)

    return {"label": label(), "exemplar": image(), "exemplar_label": label(), "image": image(),
            "self_ref": torch.ones(batch, dtype=torch.bool, device=device), "index": torch.arange(batch)}


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def median_time(fn: Callable[[], object], device: str, repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    runs = [timed(fn, device) for _ in range(repeats)]
    return statistics.median(runs), runs


def reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_mb(device: str) -> float:
    """CUDA: max allocated since the last reset. CPU: the process's peak resident set."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def autocast(device: str, amp: str):
    """bf16/fp16 autocast on the device's type (the CPU's too, as `amp_cpu` gives it); nothing with amp 'off'."""
    import torch

    if amp == "off":
        return nullcontext()
    return torch.autocast(device.split(":")[0], dtype=getattr(torch, amp))


def in_fresh_process(module: str, child_args: list[str], describe: dict, *, launcher: list[str] | None = None,
                     env: dict | None = None) -> dict:
    """Run `python [launcher] -m module --child ...` and read the JSON record on its last JSON stdout line; a
    failure (out of memory, an exception) becomes a record with `error`, so one configuration cannot stop the
    rest. `launcher`: e.g. `-m torch.distributed.run --nproc_per_node=2`; `env`: the child's environment."""
    proc = subprocess.run([sys.executable, *(launcher or []), "-m", module, "--child", *child_args],
                          capture_output=True, text=True, cwd=ROOT, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        reason = proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        if proc.returncode in (-9, 137):
            reason = ["killed (out of memory?)"]
        return {**describe, "error": reason[0][:300], "stderr_tail": proc.stderr.strip().splitlines()[-12:]}
    return json.loads(lines[-1])


def preloaded_allocator() -> str:
    """The allocator the process runs with: the library LD_PRELOAD names (e.g. libtcmalloc_minimal.so.4), or
    glibc's malloc (docs/performance.md compares them)."""
    import os

    return Path(os.environ.get("LD_PRELOAD", "").split(":")[0]).name or "glibc"


def machine() -> dict:
    import os

    import torch

    from cocosnet.train.precision import native_cpu_bf16

    info = {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "native_cpu_bf16": native_cpu_bf16()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_report(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
