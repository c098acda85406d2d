"""Pose-geometry matching features: they rank the true match first on a shifted pose, mix with the
learned features by their weight, learn that weight, and are absent (the official matching) at weight 0."""

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from cocosnet.data.pose import label_to_input, render_pose_label
from cocosnet.losses.objective import correspondence_terms
from cocosnet.losses.terms import geometry_warp_loss
from cocosnet.models.cocosnet import CoCosNet
from cocosnet.models.correspondence import dense_match
from cocosnet.models.ops import sample_at
from cocosnet.models.pose_geometry import PoseGeometry, geometry_features
from tests.helpers import corr_config, inputs

# A standing figure on the 1024 canvas (x, y), joints in the OpenPose COCO-18 order.
FIGURE = np.array([[512, 200], [512, 300], [420, 300], [400, 420], [390, 540], [604, 300], [624, 420], [634, 540],
                   [460, 560], [455, 720], [450, 880], [564, 560], [569, 720], [574, 880], [490, 180], [534, 180],
                   [470, 190], [554, 190]], dtype=np.float64)


def label_of(keypoints, size):
    return torch.from_numpy(label_to_input(render_pose_label(keypoints), size))[None]


def test_geometry_alone_finds_the_shifted_body():
    size, shift = 32, 2  # the exemplar is the same pose moved by 2 working pixels right and down
    target = label_of(FIGURE, size)
    exemplar = label_of(FIGURE + shift * 1024 / size, size)
    flat = F.normalize(torch.ones(1, 4, size, size), dim=1)  # learned features that say nothing
    geometry = PoseGeometry(1, weight=1.0, sharpness=20.0)
    query, key = geometry([flat], target)[0], geometry([flat], exemplar)[0]
    _, _, coords, _ = dense_match(query, key, torch.zeros(1, 3, size, size), temperature=0.01, k=1, cycle=False)
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    truth = torch.stack([xs, ys], -1).float() + shift
    near_body = (target[0, 3:].min(0).values < 0.05) & (truth.max(-1).values <= size - 1)
    err = (coords[0, :, :, 0] - truth).norm(dim=-1)[near_body]
    assert near_body.sum() > 50
    assert (err <= 1).float().mean() > 0.8
    assert err.median() < (truth - torch.stack([xs, ys], -1)).norm(dim=-1)[near_body].median()  # beats identity


def test_the_similarity_mixes_learned_and_geometry_by_the_weight():
    g = torch.Generator().manual_seed(0)
    learned = [F.normalize(torch.randn(2, 6, 8, 8, generator=g), dim=1)]
    label_a, label_b = torch.rand(2, 20, 8, 8, generator=g), torch.rand(2, 20, 8, 8, generator=g)
    w = 1.7
    mixed_a, mixed_b = (PoseGeometry(1, weight=w, sharpness=20.0)([learned[0]], lab)[0] for lab in (label_a, label_b))
    geo_a, geo_b = (geometry_features(lab, [(8, 8)], 20.0)[0] for lab in (label_a, label_b))
    got = (mixed_a * mixed_b).sum(1)
    want = ((learned[0] * learned[0]).sum(1) + w ** 2 * (geo_a * geo_b).sum(1)) / (1 + w ** 2)
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.allclose(mixed_a.norm(dim=1), torch.ones(2, 8, 8), atol=1e-5)


def test_channels_last_features_get_channels_last_geometry_with_the_same_values():
    """Forward-only features arrive channels-last; the mixed features keep that layout (no copy before the
    search) and equal the plain layout's, at every level, pooled or not (16 -> 8 -> 4, and 6 from 16)."""
    g = torch.Generator().manual_seed(1)
    label = torch.rand(2, 20, 16, 16, generator=g)
    plain = [F.normalize(torch.randn(2, 5, s, s, generator=g), dim=1) for s in (4, 6, 8, 16)]
    geometry = PoseGeometry(4, weight=1.3, sharpness=20.0)
    want = geometry(plain, label)
    got = geometry([f.contiguous(memory_format=torch.channels_last) for f in plain], label)
    for a, b in zip(got, want):
        assert a.is_contiguous(memory_format=torch.channels_last) and not a.is_contiguous()
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_weight_zero_is_the_official_matching_and_a_positive_weight_learns():
    base = corr_config(pose_geometry=0.0)
    off = CoCosNet.from_config(base)
    assert off.matcher.geometry is None
    assert not any("geometry" in k for k in off.state_dict())
    c = dataclasses.replace(base.model.correspondence, pose_geometry=0.5)
    on = CoCosNet.from_config(dataclasses.replace(base, model=dataclasses.replace(base.model, correspondence=c)))
    assert torch.allclose(on.matcher.geometry.log_weight.exp(), torch.full((4,), 0.5))
    label, exemplar, exemplar_label, real = inputs(32)
    out = on(label, exemplar, exemplar_label, real=real, cycle=True)
    (out.image.abs().mean() + sum(w.abs().mean() for w in out.correspondence.warps)).backward()
    assert on.matcher.geometry.log_weight.grad.abs().sum() > 0


def test_extra_maps_are_warped_with_the_colour_weights_and_leave_the_colours_alone():
    torch.manual_seed(0)
    cfg = corr_config(pose_geometry=1.0)
    model = CoCosNet.from_config(cfg).eval()  # eval: spectral norm's power iteration would change the weights
    label, exemplar, exemplar_label, real = inputs(32)
    seed = 5
    plain = model.matcher(label, exemplar, exemplar_label, generator=torch.Generator().manual_seed(seed))
    out = model.matcher(label, exemplar, exemplar_label, geometry_warp=True,
                        generator=torch.Generator().manual_seed(seed))
    corr = out.correspondence
    for a, b in zip(plain.correspondence.warps, corr.warps):
        assert torch.allclose(a, b, atol=1e-6)
    assert len(out.geometry) == len(corr.extra_warps) == len(corr.warps)
    for level, (warped, target, coords, scores) in enumerate(zip(corr.extra_warps, out.geometry, corr.coords,
                                                                  corr.scores)):
        assert warped.shape == target.shape == (label.shape[0], 17, *coords.shape[1:3])
        if level == 0:
            continue
        exemplar_geometry = geometry_features(exemplar_label, [tuple(target.shape[-2:])], 20.0)[0]
        weights = torch.softmax(scores / cfg.model.correspondence.temperature, dim=-1)  # (B, h, w, k)
        want = (sample_at(exemplar_geometry, coords) * weights.unsqueeze(1)).sum(-1)
        assert torch.allclose(warped, want, atol=1e-5)


def test_the_geometry_warp_loss_is_only_computed_when_asked_and_trains_the_gru():
    torch.manual_seed(1)
    model = CoCosNet.from_config(corr_config(pose_geometry=1.0)).train()
    label, exemplar, exemplar_label, real = inputs(32)
    kwargs = dict(real=real, exemplar=exemplar, self_ref=torch.ones(label.shape[0]))
    plain = model.matcher(label, exemplar, exemplar_label, real=real, cycle=True)
    assert "warp_geometry" not in correspondence_terms(plain, **kwargs)
    out = model.matcher(label, exemplar, exemplar_label, real=real, cycle=True, geometry_warp=True)
    terms = correspondence_terms(out, **kwargs)
    assert terms["warp_geometry"] > 0
    terms["warp_geometry"].backward()
    gru = [p for name, p in model.matcher.named_parameters() if ".update." in name]
    assert gru and all(p.grad is not None and p.grad.abs().sum() > 0 for p in gru[-2:])
    same = [torch.rand(1, 17, 4, 4)] * 2
    assert geometry_warp_loss(same, same) == 0
