"""What needs CUDA (`pytest -m gpu`, run by bench/gpu.sh): AMP training steps in bf16 and fp16, and the
single-GPU DDP path on gloo (no nccl). Skipped, with the reason, where there is no CUDA device; the
backend choice and the bench/gpu.sh chain are checked on CPU."""

import json
import os
import subprocess

import pytest
import torch
import torch.distributed as dist

from cocosnet.losses.vgg import load_vgg19
from cocosnet.models.cocosnet import CoCosNet, build_discriminator
from cocosnet.train.distributed import backend
from cocosnet.train.trainer import CorrespondenceTrainer, GanTrainer
from tests.helpers import ROOT, inputs, state, tiny_training_config

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


def batch(device, size=64, n=2):
    parts = [inputs(size, seed=i) for i in range(n)]
    label, exemplar, exemplar_label, image = (torch.cat(t).to(device) for t in zip(*parts))
    return {"label": label, "exemplar": exemplar, "exemplar_label": exemplar_label, "image": image,
            "self_ref": torch.ones(n, dtype=torch.bool, device=device), "index": torch.arange(n)}


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_amp_gan_steps_are_finite_and_train_every_part(tmp_path, dtype):
    cfg = tiny_training_config(tmp_path, tmp_path, amp=True, amp_dtype=dtype)
    torch.manual_seed(0)
    model, disc = CoCosNet.from_config(cfg).to(CUDA), build_discriminator(cfg).to(CUDA)
    trainer = GanTrainer(model, disc, load_vgg19("random").to(CUDA), cfg.train, cfg.loss_weights, device=CUDA)
    before = state(model)
    for step in (1, 2, 3):
        metrics = trainer.step(batch(CUDA), step)
        assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values()), metrics
    after = state(model)
    for part in ("matcher.align_label", "matcher.correspondence", "generator"):
        moved = [k for k in after if k.startswith(part) and not torch.equal(after[k], before[k])]
        assert moved, f"{dtype}: no weight of {part} moved"
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.gpu
@needs_cuda
def test_single_gpu_ddp_on_gloo_matches_the_plain_step(tmp_path, monkeypatch):
    cfg = tiny_training_config(tmp_path, tmp_path, crop=32)
    results = []
    for distributed in (False, True):
        if distributed:
            monkeypatch.setenv("COCOSNET_DIST_BACKEND", "gloo")
            dist.init_process_group(backend(CUDA), init_method=f"file://{tmp_path / 'store'}", rank=0,
                                    world_size=1)
        try:
            torch.manual_seed(0)
            model = CoCosNet.from_config(cfg).to(CUDA)
            trainer = CorrespondenceTrainer(model, cfg.pretrain, cfg.loss_weights, device=CUDA,
                                            distributed=distributed)
            for step in (1, 2):
                trainer.step(batch(CUDA, size=32), step)
            results.append(state(model.matcher))
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
    for key, value in results[0].items():
        torch.testing.assert_close(results[1][key], value, rtol=0, atol=1e-6, msg=f"DDP (gloo) != plain on {key}")


def test_backend_follows_the_device_unless_overridden(monkeypatch):
    monkeypatch.delenv("COCOSNET_DIST_BACKEND", raising=False)
    assert backend(torch.device("cpu")) == "gloo" and backend(torch.device("cuda")) == "nccl"
    monkeypatch.setenv("COCOSNET_DIST_BACKEND", "gloo")
    assert backend(torch.device("cuda")) == "gloo"
    monkeypatch.setenv("COCOSNET_DIST_BACKEND", "mpi-typo")
    with pytest.raises(ValueError, match="COCOSNET_DIST_BACKEND must be gloo or nccl"):
        backend(torch.device("cpu"))


@pytest.mark.slow
def test_gpu_script_runs_its_whole_chain_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "DEVICE": "cpu", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(ROOT / "bench" / "gpu.sh"), "--quick", "--batch", "1", "--amp", "off",
                           "--out", str(out)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    modes = sorted((r["mode"], r["size"]) for r in result["matcher"])
    assert modes == [("infer", 64), ("infer", 128), ("train", 64)]
    assert all(r["seconds"] > 0 and r["peak_mb"] > 0 for r in result["matcher"])
    (step,) = result["train_step"]
    assert step["size"] == 64 and set(step["parts_s"]) == {"matcher", "generator", "vgg", "discriminator"}
    ops = step["profile"]["ops"]  # the profiled step: CPU self time here, by op, largest first
    assert ops and all(a["self_ms"] >= b["self_ms"] for a, b in zip(ops, ops[1:]))
    assert any("conv" in op["name"] for op in ops[:5])
    # On CPU every test marked gpu is skipped for want of CUDA, and the JSON says so.
    expected = "skipped" if not torch.cuda.is_available() else "passed"
    assert result["tests_gpu"].get(expected, 0) == 3 and result["tests_gpu"]["exit_status"] == 0
