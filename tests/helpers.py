"""Everything the tests share: the tiny synthetic spec and training config, data preparation, planted
correspondences. Test modules import from here, never from each other (nor does bench/)."""

import functools
import math
import struct
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F

from cocosnet.config import config_from_dict, read_yaml
from cocosnet.data.synthetic import SyntheticSpec
from cocosnet.metrics.fid import FIDInceptionV3
from cocosnet.models.ops import sample_at
from cocosnet.train.distributed import DistInfo

TINY = SyntheticSpec(num_identities=5, views_per_identity=3, image_width=102, image_height=150,
                     val_fraction=0.4, jpeg_quality=95, seed=3)
CPU = DistInfo(rank=0, world=1, device=torch.device("cpu"))
ROOT = Path(__file__).resolve().parents[1]


def tiny_params(raw_root: Path | str, processed: Path | str, crop: int = 64, **train_overrides) -> dict:
    """params.yaml (as a dict) with the tiny sizes of the tests: the synthetic set of TINY, small
    widths, 4 steps per stage at batch 2."""
    raw = read_yaml(ROOT / "params.yaml")
    raw["synthetic"].update(num_identities=TINY.num_identities, views_per_identity=TINY.views_per_identity,
                            image_width=TINY.image_width, image_height=TINY.image_height,
                            val_fraction=TINY.val_fraction, jpeg_quality=TINY.jpeg_quality, seed=TINY.seed)
    raw["data"].update(root=str(raw_root), processed=str(processed), load_size=72, crop_size=crop, workers=1)
    raw["model"]["align"].update(widths=[16, 16, 8, 8], match_channels=8, spade_hidden=8)
    raw["model"]["correspondence"].update(num_candidates=[4, 4, 4], iters=[2, 2, 2], handed_down=[4, 4, 4], gru_hidden=8)
    raw["model"]["generator"].update(ngf=8, head_width=16, spade_hidden=8)
    raw["model"]["discriminator"].update(ndf=8)
    raw["model"]["refiner"].update(width=8)
    for section in ("pretrain", "train", "refine"):
        raw[section].update(steps=4, batch_size=2, checkpoint_every=1, keep_last=2, log_every=1,
                            sample_every=2, workers=0, seed=5)
    raw["refine"].update(pool=6)
    raw["train"].update(train_overrides)
    raw["eval"].update(max_pairs=4, batch_size=2)
    return raw


def tiny_training_config(raw_root: Path, processed: Path, crop: int = 64, **train_overrides):
    """crop 64 for GAN training (the 4-layer discriminator needs it); 32 is enough for pretraining."""
    return config_from_dict(tiny_params(raw_root, processed, crop, **train_overrides))


def prepare_data(raw_root: Path, processed: Path) -> None:
    from cocosnet.data import steps
    from cocosnet.data.pair_table import pair_table

    cfg = tiny_training_config(raw_root, processed)
    steps.prepare(cfg)
    steps.render_keypoints(cfg)
    pair_table(cfg, processed / "reports")


def state(model: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# Planted correspondences: the query is the key resampled through a known smooth warp.
def planted(size_h: int, size_w: int, *, channels: int = 16, noise: float = 0.05, seed: int = 0):
    """Return query, key (L2-normalised) and true (B, H, W, 2) key positions of each query pixel."""
    g = torch.Generator().manual_seed(seed)
    key = torch.randn(1, channels, size_h, size_w, generator=g)
    key = F.avg_pool2d(key, 3, stride=1, padding=1, count_include_pad=False)
    key = F.normalize(key, dim=1)
    ys, xs = torch.meshgrid(torch.arange(size_h, dtype=torch.float32),
                            torch.arange(size_w, dtype=torch.float32), indexing="ij")
    dx = 3.0 + 2.5 * torch.sin(2 * math.pi * ys / size_h) + 0.3 * xs / size_w * 4
    dy = -2.0 + 2.0 * torch.cos(2 * math.pi * xs / size_w)
    truth = torch.stack([(xs + dx).clamp(0, size_w - 1), (ys + dy).clamp(0, size_h - 1)], dim=-1)[None]
    query = sample_at(key, truth.unsqueeze(3))[..., 0]
    query = query + noise * torch.randn(query.shape, generator=g)
    return F.normalize(query, dim=1), key, truth


def coarse_init(truth: torch.Tensor, *, jitter: float = 2.0, seed: int = 1) -> torch.Tensor:
    """What a coarser level hands on: positions at half resolution, upsampled, plus jitter."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.round(truth / 2) * 2
    return (coarse + (torch.rand(coarse.shape, generator=g) * 2 - 1) * jitter).unsqueeze(3)


@functools.lru_cache(maxsize=1)
def _calibrated_random_state(seed: int) -> dict:
    """Random conv weights with BN statistics measured on random images, so features vary between images."""
    torch.manual_seed(seed)
    model = FIDInceptionV3()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average: one batch sets the statistics
    with torch.no_grad():
        model.train()(torch.rand(6, 3, 64, 64))
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    state["fc.weight"], state["fc.bias"] = torch.randn(1008, 2048), torch.randn(1008)
    return state


def random_pytorch_fid_state(seed=0):
    return dict(_calibrated_random_state(seed))


# Small models with every per-level knob set, for the knob and pose-geometry tests.
def corr_config(levels=4, **per_level):
    raw = read_yaml(ROOT / "params.yaml")
    n = levels - 1
    raw["model"]["align"].update(widths=[16] * (levels - 1) + [8], match_channels=8, spade_hidden=8)
    c = raw["model"]["correspondence"]
    c.update(num_candidates=[4] * n, iters=[2] * n, gru=[True] * n, update_stride=[2] * n, rerank=[False] * n,
             search_radius=[4.0] * n, search_samples=[4] * n, handed_down=[4] * n, gru_hidden=8)
    c.update(per_level)
    raw["model"]["generator"].update(ngf=8, head_width=16, spade_hidden=8)
    raw["data"].update(crop_size=2 ** (levels - 1) * 4, load_size=2 ** (levels - 1) * 4)
    return config_from_dict(raw)


def inputs(size, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(1, 20, size, size, generator=g), torch.rand(1, 3, size, size, generator=g) * 2 - 1,
            torch.rand(1, 20, size, size, generator=g), torch.rand(1, 3, size, size, generator=g) * 2 - 1)


def png_header(path, width, height):
    """A PNG whose header declares width x height and whose pixels are absent: what the caps must read."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))
                     + chunk(b"IEND", b""))
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc, *, timeout: float, log: Path) -> None:
    """Poll `url` until it answers 200; fail with the server's log if `proc` dies or time runs out."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


def stop_process_group(proc, timeout: float = 20) -> None:
    """SIGTERM to the group a server was started in (its workers too), SIGKILL if it lingers."""
    import os
    import signal
    import subprocess

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)


def tiny_model_file(folder: Path) -> Path:
    """An untrained tiny model file (32 px), seeded."""
    from dataclasses import asdict

    from cocosnet.models.cocosnet import CoCosNet
    from cocosnet.train.checkpoint import save_model

    cfg = tiny_training_config(folder, folder, crop=32)
    torch.manual_seed(0)
    path = folder / "model.pt"
    save_model(path, CoCosNet.from_config(cfg), config=asdict(cfg), stage="train", step=0, inputs={})
    return path


def tiny_photos(tiny_raw: Path, folder: Path) -> list[tuple[Path, Path, tuple[int, int]]]:
    """Two synthetic photos of one person as PNG, with OpenPose JSON in photo pixels: (photo, pose, size)."""
    from PIL import Image

    from cocosnet.data.keypoints import frame_to_photo, read_keypoints, write_openpose_json

    views = sorted((tiny_raw / "img").rglob("*.jpg"))[:2]
    out = []
    for i, image in enumerate(views):
        rel = image.relative_to(tiny_raw / "img").with_suffix("")
        frame_kp = read_keypoints(tiny_raw / "pose" / f"{rel}_candidate.txt")
        photo = Image.open(image)
        path = folder / f"person{i}.png"
        photo.save(path)
        pose = folder / f"person{i}.json"
        write_openpose_json(frame_to_photo(frame_kp, photo.size), pose)
        out.append((path, pose, photo.size))
    return out


def copy_checkout(dest: Path, sh) -> None:
    """This checkout's files (tracked, and new ones git does not ignore) as a fresh git repository;
    `sh(*cmd, cwd=...)` runs the git commands."""
    import shutil
    import subprocess

    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    sh("git", "init", "-q", "-b", "main", cwd=dest)
    sh("git", "add", "-A", cwd=dest)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy", cwd=dest)
