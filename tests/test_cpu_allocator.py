"""The caching CPU allocator (cocosnet/models/cpu_allocator.py): how it serves requests, its bound on the
pages held, identical results, the raw-pointer path oneDNN uses, and fork.

Installing it changes the allocator of the whole process, so each test runs in a child process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cocosnet.models import cpu_allocator

ROOT = Path(__file__).resolve().parents[1]
MB = 1 << 20

pytestmark = pytest.mark.skipif(cpu_allocator.extension() is None, reason="the allocator could not be built here")


def run_child(body: str, env: dict | None = None) -> dict:
    """Run `body` after `import torch` and `from cocosnet.models import cpu_allocator as A` in a fresh
    process; it prints one JSON line, returned here."""
    code = "import json, os, torch\nfrom cocosnet.models import cpu_allocator as A\n" + textwrap.dedent(body)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_requests_are_served_from_cached_pages():
    out = run_child("""
        MB = 1 << 20
        assert A.install() and A.install()
        steps = {}
        def block(nbytes):
            return torch.empty(nbytes // 4, dtype=torch.float32)
        x = block(8 * MB); x.fill_(3.0); del x
        steps["freed"] = A.stats()
        y = block(3 * MB)                      # the 8 MB block, its 5 MB tail stays cached
        steps["split"] = A.stats()
        z = block(5 * MB)                      # the tail
        z.fill_(2.0); y.fill_(1.0)
        steps["tail"] = A.stats()
        ok_values = bool((y == 1).all() and (z == 2).all())
        del y, z
        A.release_cached()
        steps["released"] = A.stats()
        w = block(2 * MB); del w
        v = block(6 * MB)                      # grows the cached 2 MB block
        torch.arange(v.numel(), out=v)
        steps["grown"] = A.stats()
        small = torch.empty(1000)
        steps["small"] = A.stats()
        ok_grown = bool((v == torch.arange(v.numel(), dtype=torch.float32)).all())
        print(json.dumps({"steps": steps, "values": ok_values, "grown_values": ok_grown}))
    """)
    s = out["steps"]
    assert out["values"] and out["grown_values"]
    assert s["freed"]["cached_bytes"] == 8 * MB and s["freed"]["live_bytes"] == 0
    assert s["split"]["reused"] == s["freed"]["reused"] + 1 and s["split"]["fresh"] == s["freed"]["fresh"]
    assert s["split"]["cached_bytes"] == 5 * MB and s["split"]["live_bytes"] == 3 * MB
    assert s["tail"]["reused"] == s["split"]["reused"] + 1 and s["tail"]["cached_bytes"] == 0
    assert s["tail"]["live_bytes"] == 8 * MB
    assert s["released"]["cached_bytes"] == 0 and s["released"]["cached_blocks"] == 0
    assert s["grown"]["grown"] == s["released"]["grown"] + 1
    assert s["grown"]["fresh"] == s["released"]["fresh"] + 1  # only the 2 MB block was new
    assert s["grown"]["live_bytes"] == 6 * MB and s["grown"]["cached_bytes"] == 0
    assert s["small"]["live_bytes"] == 6 * MB  # under 1 MiB: the previous allocator


def test_pages_held_stay_within_the_slack_of_the_peak_in_use():
    out = run_child("""
        import random
        rng = random.Random(0)
        A.install()
        held, worst, checks = [], 0, 0
        for step in range(600):
            if held and rng.random() < 0.45:
                held.pop(rng.randrange(len(held)))
            else:
                t = torch.empty(rng.randint(1 << 18, 1 << 22))  # 1 to 16 MB
                t[::4096].fill_(1.0)                             # touch its pages
                held.append(t)
                del t
            s = A.stats()
            worst = max(worst, s["live_bytes"] + s["cached_bytes"] - s["peak_live_bytes"] * (1 + s["slack"]))
            checks += s["live_bytes"] == sum((t.numel() * 4 + 4095) // 4096 * 4096 for t in held)
        s = A.stats()
        print(json.dumps({"worst": worst, "checks": checks, "reused": s["reused"], "grown": s["grown"],
                          "fresh": s["fresh"]}))
    """)
    assert out["worst"] <= 0
    assert out["checks"] == 600  # live bytes are exactly the page-rounded tensors alive
    assert out["reused"] > out["fresh"] and out["grown"] > 0


def test_results_are_identical_and_the_raw_path_works():
    """A convolution through oneDNN (which allocates with raw pointers), a matcher forward at 128^2 and
    its backward give the same bits with the allocator as without."""
    out = run_child("""
        from cocosnet.config import load_config
        from cocosnet.models.cocosnet import CoCosNet

        def work():
            torch.manual_seed(0)
            x = torch.randn(2, 32, 128, 128)
            w = torch.randn(64, 32, 3, 3)
            conv = torch.nn.functional.conv2d(x.to(memory_format=torch.channels_last), w, padding=1)
            cfg = load_config("params.yaml")
            model = CoCosNet.from_config(cfg)
            label = torch.rand(1, 20, 128, 128)
            exemplar = torch.rand(1, 3, 128, 128) * 2 - 1
            warped = model.matcher(label, exemplar, label.flip(-1)).correspondence.warps[-1]
            warped.square().mean().backward()
            grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
            return [conv, warped.detach(), grads]

        before = work()
        assert A.install()
        after = work()
        s = A.stats()
        print(json.dumps({"same": [bool(torch.equal(a, b)) for a, b in zip(before, after)],
                          "reused": s["reused"]}))
    """)
    assert out["same"] == [True, True, True]
    assert out["reused"] > 0


def test_a_forked_child_allocates_and_exits():
    out = run_child("""
        A.install()
        x = torch.randn(2, 64, 256, 256)
        y = torch.nn.functional.avg_pool2d(x, 3, 1, 1)  # threads have run and freed large blocks
        del y
        pid = os.fork()
        if pid == 0:
            torch.set_num_threads(1)  # as DataLoader workers do: OpenMP's threads do not survive a fork
            z = torch.randn(4, 64, 256, 256).sum().item()
            os._exit(0 if z == z else 1)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"status": status}))
    """)
    assert out["status"] == 0


def test_disabled_by_the_environment():
    out = run_child("""
        print(json.dumps({"installed": A.install(), "stats": A.stats()}))
    """, env={cpu_allocator.ENV: "0"})
    assert out == {"installed": False, "stats": {}}
