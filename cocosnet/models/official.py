"""Load the published official CoCosNet v2 weights (`latest_net_Corr.pth`, `latest_net_G.pth`).

The official state dicts map one to one onto this project's modules (`official_key`), except:
  * `patch_match.*`: the official PatchMatch ConvGRU. It never received a gradient in the official
    training (docs/model.md, difference 1), so its weights are noise; they are ignored, and the loaded
    model's learning GRU starts with an update that is exactly zero (its last conv is zeroed): the loaded
    model is search only, the official behaviour, and fine-tuning teaches the GRU from there;
  * the residual blocks' conv biases (`layerK.1.model.1.bias`, `.model.5.bias`): each conv is followed
    by an InstanceNorm, which removes a per-channel constant exactly, so this project's convs carry none
    and the biases are dropped (their effect on the outputs is float rounding, < 1e-6);
  * each residual block's one PReLU slope is stored twice (`.relu.weight`, `.model.3.weight`); both
    are loaded, into the two PReLUs of `ResidualBlock`, and must agree.
Spectral-norm layers keep `weight_orig`, `weight_u` and `weight_v` as stored: in eval mode the weight is
`weight_orig / (u . W v)` with no power iteration, as in the official modules.

Widths come from the tensor shapes (`official_model_config`). The matching settings that no weight
expresses (k, iterations, temperature, ...) come from the given config, or the official values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from cocosnet.config import (
    NO_REFINER,
    AlignConfig,
    ConfigError,
    CorrespondenceConfig,
    DiscriminatorConfig,
    GeneratorConfig,
    ModelConfig,
    checked,
)
from cocosnet.data.pose import LABEL_CHANNELS
from cocosnet.errors import WeightsError
from cocosnet.models.cocosnet import CoCosNet
from cocosnet.state_file import read_state_dict

IGNORED_PREFIX = "patch_match."  # the official GRU, never trained (see the module docstring)
DEAD_BIAS = re.compile(r"adaptive_model_(seg|img)\.layer\d+\.1\.model\.[15]\.bias")


def official_correspondence(levels: int) -> CorrespondenceConfig:
    """The official matching settings (opt.json of the DeepFashion-HD release) for `levels` levels,
    with this project's learning GRU (update zeroed by `load_official`) and no pose geometry."""
    n = levels - 1
    return CorrespondenceConfig(num_candidates=(16,) * n, iters=(5,) * n, gru=(True,) * n, update_stride=(2,) * n,
                                rerank=(False,) * n, rank_grad="features", search_radius=(4.0,) * n,
                                search_samples=(4,) * n,
                                handed_down=(1,) * n,
                                gru_hidden=32, lookup=0, temperature=0.01, pose_geometry=0.0, geometry_sharpness=20.0)


OFFICIAL_DISCRIMINATOR = DiscriminatorConfig(ndf=64, n_layers=4, num_d=2)


def _block_key(rest: str) -> str:
    """A SPADE residual block's official sub-key -> this project's."""
    for official, ours in ((r"conv_([01])\.", r"conv_\1.1."), (r"conv_s\.", "conv_s.0."),
                           (r"(norm_[01s])\.mlp_shared\.1\.", r"\1.shared.0."),
                           (r"(norm_[01s])\.mlp_gamma\.", r"\1.gamma."), (r"(norm_[01s])\.mlp_beta\.", r"\1.beta.")):
        new, hits = re.subn("^" + official, ours, rest)
        if hits:
            return new
    raise KeyError(rest)


def official_key(key: str, *, file: str) -> str | None:
    """The project key of an official state-dict key of `file` ('Corr' or 'G'); None for a key that is
    dropped on purpose (the dead biases). Raises KeyError for a key that is not official."""
    if file == "G":
        m = re.fullmatch(r"(fc|conv_img|head_0|G_middle_[01]|up_[0-3])\.(.+)", key)
        if not m:
            raise KeyError(key)
        name, rest = m.groups()
        if name in ("fc", "conv_img"):
            return f"generator.{'head_in' if name == 'fc' else 'to_rgb'}.{rest}"
        index = {"head_0": 0, "G_middle_0": 1, "G_middle_1": 2}.get(name)
        index = 3 + int(name[-1]) if index is None else index
        return f"generator.blocks.{index}.{_block_key(rest)}"
    m = re.fullmatch(r"(theta|phi)_(\d+)\.(weight|bias)", key)
    if m:
        net = "align_label" if m[1] == "theta" else "align_exemplar"
        return f"matcher.{net}.project.{m[2]}.{m[3]}"
    m = re.fullmatch(r"adaptive_model_(seg|img)\.(.+)", key)
    if not m:
        raise KeyError(key)
    net, rest = ("align_label" if m[1] == "seg" else "align_exemplar"), m[2]
    if DEAD_BIAS.fullmatch(key):
        return None
    for pattern, build in (
            (r"layer1\.0\.(.+)", lambda g: f"encoder.0.0.0.{g[1]}"),
            (r"layer(\d+)\.0\.0\.(.+)", lambda g: f"encoder.{int(g[1]) - 1}.1.0.{g[2]}"),
            (r"layer(\d+)\.1\.relu\.weight", lambda g: f"encoder.{int(g[1]) - 1}.2.act.weight"),
            (r"layer(\d+)\.1\.model\.([135])\.weight", lambda g: f"encoder.{int(g[1]) - 1}.2.body.{g[2]}.weight"),
            (r"head_0\.(.+)", lambda g: f"decoder.0.{_block_key(g[1])}"),
            (r"G_middle_(\d+)\.(.+)", lambda g: f"decoder.{int(g[1]) + 1}.{_block_key(g[2])}")):
        hit = re.fullmatch(pattern, rest)
        if hit:
            return f"matcher.{net}.{build(hit)}"
    raise KeyError(key)


def _shape(state: Mapping[str, Tensor], key: str, file: str) -> list[int]:
    if key not in state:
        raise WeightsError(f"{file}: missing key {key!r}, which an official CoCosNet v2 {Path(file).name} holds; "
                           "is this the right file?")
    return list(state[key].shape)


def official_model_config(corr: Mapping[str, Tensor], gen: Mapping[str, Tensor], *, corr_name: str = "Corr",
                          gen_name: str = "G", base: ModelConfig | None = None) -> ModelConfig:
    """The model config the two state dicts describe: widths from their shapes; the rest from `base`
    (or the official values). Errors name the file and the key."""
    levels = 1 + sum(1 for k in corr if re.fullmatch(r"adaptive_model_seg\.G_middle_\d+\.conv_1\.weight_orig", k))
    blocks = ["head_0"] + [f"G_middle_{i}" for i in range(levels - 1)]
    widths = tuple(_shape(corr, f"adaptive_model_seg.{b}.conv_1.weight_orig", corr_name)[0] for b in blocks)
    label_nc = _shape(corr, "adaptive_model_seg.layer1.0.weight_orig", corr_name)[1]
    if label_nc != LABEL_CHANNELS:
        raise WeightsError(f"{corr_name}: adaptive_model_seg.layer1.0.weight_orig takes {label_nc} label channels; "
                           f"this project's pose label has {LABEL_CHANNELS}")
    align = AlignConfig(widths=widths, match_channels=_shape(corr, "theta_0.weight", corr_name)[0],
                        spade_hidden=_shape(corr, "adaptive_model_seg.head_0.norm_0.mlp_shared.1.weight",
                                            corr_name)[0])
    fc = _shape(gen, "fc.weight", gen_name)
    generator = GeneratorConfig(ngf=_shape(gen, "conv_img.weight", gen_name)[1], head_width=fc[0],
                                spade_hidden=_shape(gen, "head_0.norm_0.mlp_shared.1.weight", gen_name)[0])
    if fc[1] != 3 * levels + LABEL_CHANNELS:
        raise WeightsError(f"{gen_name}: fc.weight takes {fc[1]} channels; {levels} warps and the label make "
                           f"{3 * levels + LABEL_CHANNELS}")
    found = (ModelConfig(align=align, correspondence=official_correspondence(levels), generator=generator,
                         discriminator=OFFICIAL_DISCRIMINATOR, refiner=NO_REFINER) if base is None
             else replace(base, align=align, generator=generator, refiner=NO_REFINER))
    try:
        return checked(found, "model")
    except ConfigError as exc:
        raise WeightsError(f"{corr_name}, {gen_name}: the shapes describe a model out of bounds ({exc})") from None


def _check_config(given: ModelConfig, found: ModelConfig, corr_name: str, gen_name: str) -> None:
    evidence = {"align.widths": f"{corr_name}: adaptive_model_seg.{{head_0,G_middle_*}}.conv_1.weight_orig dim 0",
                "align.match_channels": f"{corr_name}: theta_0.weight dim 0",
                "align.spade_hidden": f"{corr_name}: adaptive_model_seg.head_0.norm_0.mlp_shared.1.weight dim 0",
                "generator.ngf": f"{gen_name}: conv_img.weight dim 1",
                "generator.head_width": f"{gen_name}: fc.weight dim 0",
                "generator.spade_hidden": f"{gen_name}: head_0.norm_0.mlp_shared.1.weight dim 0"}
    problems = []
    for key, where in evidence.items():
        section, name = key.split(".")
        want, have = getattr(getattr(given, section), name), getattr(getattr(found, section), name)
        if want != have:
            problems.append(f"model.{key}: the config says {list(want) if isinstance(want, tuple) else want}, "
                            f"the weights have {list(have) if isinstance(have, tuple) else have} ({where})")
    if given.correspondence.pose_geometry > 0:
        problems.append("model.correspondence.pose_geometry: the config says "
                        f"{given.correspondence.pose_geometry}, the official weights were trained without pose "
                        "geometry (set it to 0.0)")
    if given.generator.warp_skip != "none":
        problems.append(f"model.generator.warp_skip: the config says {given.generator.warp_skip}, the official "
                        "generator draws the image itself (set it to none)")
    if len(given.correspondence.num_candidates) != len(found.align.widths) - 1:
        problems.append(f"model.correspondence: the config lists {len(given.correspondence.num_candidates)} "
                        f"PatchMatch levels, the weights have {len(found.align.widths) - 1}")
    if problems:
        raise WeightsError("the config disagrees with the official weights:\n  " + "\n  ".join(problems))


def _read(path: str | Path) -> dict[str, Tensor]:
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"{path}: no such file")
    return read_state_dict(path)


def convert_state(corr: Mapping[str, Tensor], gen: Mapping[str, Tensor], model: CoCosNet, *,
                  corr_name: str = "Corr", gen_name: str = "G") -> tuple[dict[str, Tensor], list[str]]:
    """The project state dict for `model` from the official ones, and notes on what was ignored.
    Strict: unexpected or missing keys and wrong shapes are errors that list them."""
    target = model.state_dict()
    out: dict[str, Tensor] = {}
    unexpected, wrong_shape, ignored, dropped = [], [], [], []
    for file, state, name in (("Corr", corr, corr_name), ("G", gen, gen_name)):
        for key, value in state.items():
            if file == "Corr" and key.startswith(IGNORED_PREFIX):
                ignored.append(key)
                continue
            try:
                ours = official_key(key, file=file)
            except KeyError:
                unexpected.append(f"{name}: {key}")
                continue
            if ours is None:
                dropped.append(key)
                continue
            if ours not in target:
                unexpected.append(f"{name}: {key}")
            elif tuple(target[ours].shape) != tuple(value.shape):
                wrong_shape.append(f"{name}: {key} has shape {list(value.shape)}, the model built from the "
                                   f"file's widths needs {list(target[ours].shape)}")
            else:
                out[ours] = value.to(target[ours].dtype)
    own = [k for k in target if not (".correspondence." in k or ".geometry." in k)]
    missing = [k for k in own if k not in out]
    if unexpected or wrong_shape or missing:
        lines = [f"unexpected key {k}" for k in unexpected] + wrong_shape + [
            f"missing: nothing in the official files fills {k}" for k in missing]
        raise WeightsError("the official weights do not fit this model:\n  " + "\n  ".join(lines))
    for a, b in ((k, k.replace(".2.act.weight", ".2.body.3.weight")) for k in out if k.endswith(".2.act.weight")):
        if not torch.equal(out[a], out[b]):
            raise WeightsError(f"{corr_name}: the two keys of one PReLU slope disagree ({a} vs {b} in project "
                               "names); an official file holds the same value under both")
    notes = [f"ignored {len(ignored)} `patch_match.*` keys (the official GRU, never trained); the GRU update "
             "starts at exactly zero (search only)" if ignored else "no `patch_match.*` keys (fine)",
             f"dropped {len(dropped)} residual-block conv biases (removed exactly by the InstanceNorm after them)"]
    return out, notes


def zero_gru_update(model: CoCosNet) -> None:
    """Zero every level's last GRU head conv: deltas are exactly 0 (search only) until fine-tuning."""
    for level in model.matcher.correspondence.levels:
        if level.gru:
            last = level.update.head[-1]
            torch.nn.init.zeros_(last.weight)
            torch.nn.init.zeros_(last.bias)


def load_official(corr_path: str | Path, g_path: str | Path, *, config: ModelConfig | None = None,
                  notes: list[str] | None = None) -> CoCosNet:
    """The official CoCosNet v2 networks as this project's `CoCosNet`, in eval mode.

    config None: widths from the tensor shapes, the official matching settings (`official_correspondence`).
    A given `config` (a `ModelConfig`, or a `Config` whose `.model` is used) must agree with the shapes;
    a disagreement is an error naming the key and both values. `notes` (a list) receives what was
    ignored or dropped, to tell the user.
    """
    config = getattr(config, "model", config)
    corr, gen = _read(corr_path), _read(g_path)
    found = official_model_config(corr, gen, corr_name=str(corr_path), gen_name=str(g_path), base=config)
    if config is not None:
        _check_config(config, found, str(corr_path), str(g_path))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the GRU's (unused until fine-tuning) initial weights, reproducibly
        model = CoCosNet(found)
    state, said = convert_state(corr, gen, model, corr_name=str(corr_path), gen_name=str(g_path))
    model.load_state_dict(state, strict=False)
    zero_gru_update(model)
    model.config = found
    if notes is not None:
        notes.extend(said)
    return model.eval()
