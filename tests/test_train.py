"""Training: steps, checkpoints, exact resume after SIGKILL, DDP equivalence, schedule, data."""

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from cocosnet.data.dataset import PairDataset
from cocosnet.errors import CheckpointError
from cocosnet.io import sha256_file
from cocosnet.models.cocosnet import CoCosNet
from cocosnet.train.checkpoint import list_checkpoints, load_checkpoint, load_model
from cocosnet.train.inputs import STAGES
from cocosnet.train.loop import RunPaths, run_training
from cocosnet.train.schedule import lr_at, ttur
from tests.helpers import CPU, ROOT, free_port, prepare_data, state, tiny_training_config


@pytest.fixture(scope="module")
def data(tiny_raw, tmp_path_factory):
    processed = tmp_path_factory.mktemp("processed")
    prepare_data(tiny_raw, processed)
    return tiny_raw, processed


def pairs(processed):
    return pd.read_parquet(processed / "pairs.parquet")


def train(cfg, stage, processed, out, init=None):
    paths = RunPaths(ckpt_dir=out / "ckpt", out_model=out / "model.pt", reports=out / "reports", init=init)
    return run_training(cfg, STAGES[stage], pairs(processed), paths, info=CPU, show_progress=False)


def test_ttur_holds_for_the_whole_run_and_decay_is_linear():
    for step in (0, 10, 10_000):
        g, d = ttur(lr_at(step, base=1e-4, total=20_000, decay_start=-1))
        assert (g, d) == (5e-5, 2e-4)
    assert lr_at(50, base=1.0, total=100, decay_start=50) == 1.0
    assert lr_at(75, base=1.0, total=100, decay_start=50) == pytest.approx(0.5)
    assert lr_at(100, base=1.0, total=100, decay_start=50) == 0.0


def test_dataset_crops_are_seeded_and_independent(data):
    _, processed = data
    table = pairs(processed)
    ds = PairDataset(table, processed, load_size=72, crop_size=64,
                     random_crop=True, seed=3)
    a, b = ds[(0, 0)], ds[(0, 0)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["target_crop"], b["target_crop"])
    assert a["image"].shape == (3, 64, 64) and a["label"].shape == (20, 64, 64)
    assert -1 <= a["image"].min() and a["image"].max() <= 1 and 0 <= a["label"].min() and a["label"].max() <= 1
    crops = {tuple(ds[(0, e)]["target_crop"].tolist()) for e in range(8)}
    assert len(crops) > 1  # new crops each epoch
    pairs_of_crops = [(ds[(i, 0)]["target_crop"].tolist(), ds[(i, 0)]["exemplar_crop"].tolist()) for i in range(8)]
    assert any(t != e for t, e in pairs_of_crops)  # the exemplar has its own crop


def test_pretrain_then_gan_training_write_self_describing_checkpoints(data, tmp_path):
    raw, processed = data
    cfg = tiny_training_config(raw, processed)
    metrics, _ = train(cfg, "pretrain", processed, tmp_path / "pre")
    assert {"warp_self", "feat_align", "warp_cycle"} <= set(metrics)
    assert [p.name for p in list_checkpoints(tmp_path / "pre" / "ckpt")] == ["ckpt-00000003.pt", "ckpt-00000004.pt"]
    metrics, _ = train(cfg, "train", processed, tmp_path / "gan", init=tmp_path / "pre" / "model.pt")
    assert {"gan", "gan_feat", "fm", "perceptual", "contextual", "loss_g", "loss_d"} <= set(metrics)
    ckpt = load_checkpoint(list_checkpoints(tmp_path / "gan" / "ckpt")[-1])
    assert {"format", "model", "trainer", "step", "torch_rng", "config", "inputs", "history", "sha256"} <= set(ckpt)
    assert {"disc", "opt_g", "opt_d", "scaler_g", "scaler_d"} <= set(ckpt["trainer"])
    assert ckpt["step"] == 4 and ckpt["config"]["train"]["lr"] == cfg.train.lr
    assert ckpt["inputs"]["files"]["init"] == sha256_file(tmp_path / "pre" / "model.pt")
    opt_g = ckpt["trainer"]["opt_g"]["param_groups"][0]
    assert opt_g["lr"] == cfg.train.lr / 2 and opt_g["betas"] == (0.0, 0.9) and opt_g["eps"] == 1e-3
    assert ckpt["trainer"]["opt_d"]["param_groups"][0]["lr"] == cfg.train.lr * 2
    assert (tmp_path / "gan" / "reports" / "losses.tsv").read_text().startswith("step\t")
    assert (tmp_path / "gan" / "reports" / "samples" / "step-000002.png").exists()


def test_a_run_killed_after_its_last_checkpoint_rewrites_model_and_samples(data, tmp_path):
    """DVC removes a stage's outputs before it reruns; the finished checkpoint must bring them all back."""
    raw, processed = data
    cfg = tiny_training_config(raw, processed, crop=32)
    train(cfg, "pretrain", processed, tmp_path)
    model, samples = tmp_path / "model.pt", tmp_path / "reports" / "samples"
    before = load_checkpoint(model)["model"]
    grids = {p.name: p.read_bytes() for p in samples.iterdir()}
    assert sorted(grids) == ["step-000002.png", "step-000004.png"]
    model.unlink()
    shutil.rmtree(samples)
    with pytest.warns(UserWarning, match="is at step 4, the step count asked for"):
        train(cfg, "pretrain", processed, tmp_path)
    after = load_checkpoint(model)["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert {p.name: p.read_bytes() for p in samples.iterdir()} == grids  # every grid, not only the last


def _steps(cfg, steps, **extra):
    return dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, steps=steps, checkpoint_every=2,
                                                                 **extra))


@pytest.mark.parametrize("keep_last", [6, 1])
def test_a_shorter_run_returns_the_model_at_its_own_step(data, tmp_path, keep_last):
    """6 steps, then 3: the model equals a straight 3-step run bit for bit, resumed from the kept step-2
    checkpoint (keep_last 6) or trained afresh (keep_last 1: none at or below 3 is kept); the longer set is kept aside
    and a 6-step run after it takes it back without training."""
    raw, processed = data
    cfg = tiny_training_config(raw, processed, crop=32)
    _, straight = train(_steps(cfg, 3, keep_last=keep_last), "pretrain", processed, tmp_path / "straight")
    out = tmp_path / "run"
    _, six = train(_steps(cfg, 6, keep_last=keep_last), "pretrain", processed, out)
    with pytest.warns(UserWarning, match="past step 3"):
        _, three = train(_steps(cfg, 3, keep_last=keep_last), "pretrain", processed, out)
    written = load_checkpoint(out / "model.pt")
    assert written["step"] == 3
    for key, value in state(straight).items():
        assert torch.equal(three.state_dict()[key], value), key
        assert torch.equal(written["model"][key], value), key
    assert any(not torch.equal(six.state_dict()[k], v) for k, v in state(straight).items())
    assert max(int(p.stem[5:]) for p in list_checkpoints(out / "ckpt")) == 3
    assert sorted(p.name for p in (out / "reports" / "samples").iterdir()) == ["step-000002.png", "step-000003.png"]
    with pytest.warns(UserWarning, match="resuming the checkpoints of these exact inputs"):
        _, again = train(_steps(cfg, 6, keep_last=keep_last), "pretrain", processed, out)
    assert load_checkpoint(out / "model.pt")["step"] == 6
    assert all(torch.equal(again.state_dict()[k], v) for k, v in state(six).items())


def test_resume_after_sigkill_ends_at_the_same_weights(data, tmp_path):
    raw, processed = data
    cfg = tiny_training_config(raw, processed, crop=32)
    cfg = dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, steps=6))
    _, reference = train(cfg, "pretrain", processed, tmp_path / "straight")

    killed = tmp_path / "killed"
    script = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); import dataclasses, pandas as pd, torch\n"
              "from pathlib import Path\nfrom tests.helpers import tiny_training_config\n"
              "from cocosnet.train.inputs import PRETRAIN\nfrom cocosnet.train.loop import RunPaths, run_training\n"
              "from tests.helpers import CPU\n"
              f"cfg = tiny_training_config(Path({str(raw)!r}), Path({str(processed)!r}), crop=32)\n"
              "cfg = dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, steps=6))\n"
              f"out = Path({str(killed)!r})\n"
              f"run_training(cfg, PRETRAIN, pd.read_parquet(Path({str(processed)!r}) / 'pairs.parquet'), "
              "RunPaths(out / 'ckpt', out / 'model.pt', out / 'reports'), info=CPU, show_progress=False)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    deadline = time.time() + 120
    while not list_checkpoints(killed / "ckpt") and time.time() < deadline:
        assert proc.poll() is None, "training process ended before it could be killed"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    steps_done = load_checkpoint(list_checkpoints(killed / "ckpt")[-1])["step"]
    assert 1 <= steps_done < 6 and not (killed / "model.pt").exists()

    _, resumed = train(cfg, "pretrain", processed, killed)
    for key, value in state(reference).items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_a_model_file_built_from_another_model_config_is_refused_by_name(data, tmp_path):
    raw, processed = data
    cfg = tiny_training_config(raw, processed, crop=32)
    cfg = dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, steps=1))
    train(cfg, "pretrain", processed, tmp_path)
    wider = dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, align=dataclasses.replace(cfg.model.align, widths=(16, 16, 16, 8))))
    with pytest.raises(CheckpointError, match=r"model\.align\.widths"):
        load_model(tmp_path / "model.pt", wider)


def test_a_pretrain_model_starts_a_gan_with_any_generator_but_only_its_own_matcher(data, tmp_path):
    """The pretrain stage trains the matcher alone: its inputs and its model file do not depend on the
    generator's settings, so a generator change reuses it; a matcher change is refused by name."""
    raw, processed = data
    cfg = tiny_training_config(raw, processed)
    cfg = dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, steps=1),
                              train=dataclasses.replace(cfg.train, steps=1))
    train(cfg, "pretrain", processed, tmp_path / "pre")
    assert not any(k.startswith("model.generator") for k in load_checkpoint(tmp_path / "pre" / "model.pt")["inputs"]["params"])
    blend = dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, generator=dataclasses.replace(cfg.model.generator, warp_skip="blend")))
    _, model = train(blend, "train", processed, tmp_path / "gan", init=tmp_path / "pre" / "model.pt")
    assert model.generator.to_rgb.weight.shape[0] == 4
    wider = dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, align=dataclasses.replace(cfg.model.align, widths=(16, 16, 16, 8))))
    with pytest.raises(CheckpointError, match=r"model\.align\.widths"):
        train(wider, "train", processed, tmp_path / "gan2", init=tmp_path / "pre" / "model.pt")


def test_ddp_on_two_cpu_nodes_matches_one_process(data, tmp_path):
    """Two torchrun "nodes" on 127.0.0.1, one process each, meeting at a c10d rendezvous (what a
    multi-node job does, docs/scale.md), end where one process ends."""
    raw, processed = data
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    base = [str(raw), str(processed), str(tmp_path), "2"]
    node = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d",
            f"--rdzv_endpoint=127.0.0.1:{free_port()}", "--rdzv_id=ddp-test", str(ROOT / "tests" / "ddp_worker.py"),
            *base]
    nodes = [subprocess.Popen(node, env=env, cwd=ROOT) for _ in range(2)]
    try:
        assert [n.wait(timeout=300) for n in nodes] == [0, 0]
    finally:
        for n in nodes:
            n.kill()
    subprocess.run([sys.executable, str(ROOT / "tests" / "ddp_worker.py"), *base], check=True, env=env,
                   cwd=ROOT, timeout=300)
    rank0, rank1, single = (torch.load(tmp_path / name, weights_only=True) for name in
                            ("params-world2-rank0.pt", "params-world2-rank1.pt", "params-world1-rank0.pt"))
    assert (tmp_path / "model-world2.pt").exists() and list_checkpoints(tmp_path / "ckpt-world2")
    cfg = tiny_training_config(raw, processed, crop=32)
    torch.manual_seed(cfg.pretrain.seed)  # the initial weights, as the trainer builds them
    initial = CoCosNet.from_config(cfg).state_dict()
    moved, apart = 0.0, 0.0
    for key, value in rank0.items():
        torch.testing.assert_close(rank1[key], value, rtol=0, atol=0, msg=f"ranks disagree on {key}")
        # Summation order differs between 2 ranks and 1 process. Adam turns that float noise, in the
        # near-zero gradients of the zero-initialised GRU update and elsewhere, into steps of up to lr,
        # and how many tensors it touches depends on the CPU's kernels (8 of 512 beyond 1e-6 on an
        # AVX-512 Zen 4, 239 on one without). So the test weighs the whole: one process and two ranks
        # must end where the training moved, within a small share of how far it moved (measured: 0.17%
        # of the distance moved; one process trained on half of each batch lands 2.4% away).
        torch.testing.assert_close(single[key], value, rtol=0, atol=1e-3, msg=f"DDP != one process on {key}")
        moved += float(((value - initial[key]).double() ** 2).sum())
        apart += float(((single[key] - value).double() ** 2).sum())
    assert moved > 0 and (apart / moved) ** 0.5 < 0.008, (apart / moved) ** 0.5
