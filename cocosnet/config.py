"""`params.yaml` -> frozen, typed dataclasses, one per section.

Unknown keys, missing keys and wrong types are errors that name the key
(`data.load_size: expected int, got str '136'`). Profiles (`profiles/*.yaml`)
are override files that `apply_profile` writes into params.yaml, so DVC, the
stages and `dvc exp run -S` all see one file.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from cocosnet.errors import CocosnetError, DataError
from cocosnet.limits import read_text


class ConfigError(CocosnetError, ValueError):
    """A params file that does not match the config schema."""


@dataclass(frozen=True)
class Check:
    """The allowed values of one key: a range (either end open or closed), plus `also` values outside it."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    also: tuple = ()
    nonempty: bool = False  # for strings

    def ok(self, value: Any) -> bool:
        if self.nonempty:
            return value != ""
        if value in self.also:
            return True
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return not (self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi))

    def __str__(self) -> str:
        if self.nonempty:
            return "a non-empty string"
        if self.lo is not None and self.hi is not None:
            text = f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
        elif self.lo is not None:
            text = f"{'>' if self.lo_open else '>='} {self.lo:g}"
        else:
            text = f"{'<' if self.hi_open else '<='} {self.hi:g}"
        return text + "".join(f" or {v!r}" for v in self.also)


def check(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False,
          also: tuple = (), nonempty: bool = False):
    """A dataclass field whose values `_build` checks (for tuples: each item)."""
    return field(metadata={"check": Check(lo, hi, lo_open, hi_open, also, nonempty)})


POSITIVE = dict(lo=0, lo_open=True)
# Upper bounds on what sizes a model: far past any real setting (the paper's are 512 px and 128
# channels), low enough that a forged model file cannot ask for terabytes.
MAX_SIDE = 4096
MAX_WIDTH = 2048
MAX_LEVELS = 8
FRACTION = dict(lo=0, hi=1, hi_open=True)  # [0, 1): Adam betas, EMA decay, the val share


@dataclass(frozen=True)
class DataConfig:
    source: Literal["synthetic", "deepfashion", "inshop"]  # the layout of data.root (cocosnet/data/sources.py)
    root: str = check(nonempty=True)  # data root holding the images, keypoints and lists of that layout
    processed: str = check(nonempty=True)  # where prepare/render_keypoints/build_pairs write
    load_size: int = check(8, MAX_SIDE)  # images and labels are cached at load_size x load_size
    crop_size: int = check(8, MAX_SIDE)  # the working resolution; random crops of load_size
    on_bad_sample: Literal["error", "skip"]
    workers: int = check(0)  # processes for rendering; 0 = all cores


@dataclass(frozen=True)
class SyntheticConfig:
    num_identities: int = check(2)
    views_per_identity: int = check(2)
    image_width: int = check(16, MAX_SIDE)
    image_height: int = check(16, MAX_SIDE)
    val_fraction: float = check(**FRACTION)
    jpeg_quality: int = check(1, 100)
    seed: int = check(0)


@dataclass(frozen=True)
class AlignConfig:
    widths: tuple[int, ...] = check(1, MAX_WIDTH)  # one per pyramid level, coarse to fine (official 128, 128, 64, 32)
    match_channels: int = check(1, MAX_WIDTH)
    spade_hidden: int = check(1, MAX_WIDTH)


@dataclass(frozen=True)
class CorrespondenceConfig:
    """Dense matching at the coarsest level, then one PatchMatch level per finer level. The tuples hold
    one entry per PatchMatch level (len(align.widths) - 1), coarse to fine."""

    num_candidates: tuple[int, ...] = check(1, 256)  # k kept per pixel (official 16)
    iters: tuple[int, ...] = check(1, 100)  # PatchMatch (+ GRU) iterations (official 5)
    gru: tuple[bool, ...]  # learned GRU update after each iteration; false = search only (the official in effect)
    update_stride: tuple[int, ...] = check(1, 64)  # the GRU runs on a grid pooled this many times
    rerank: tuple[bool, ...]  # the GRU also biases the final candidate scores (not in the official code)
    rank_grad: Literal["features", "head"]  # what the ranking terms train: features (and the rerank head) or the head alone
    search_radius: tuple[float, ...] = check(**POSITIVE)  # first random-search radius (level px), halved per iteration
    search_samples: tuple[int, ...] = check(0, 256)  # random-search samples per pixel and iteration
    handed_down: tuple[int, ...] = check(1, 256)  # best coarser candidates that start this level (official 1)
    gru_hidden: int = check(1, MAX_WIDTH)
    lookup: int = check(0, 3)  # each GRU update also reads the cosines within this radius of each candidate; 0 = off
    temperature: float = check(**POSITIVE)
    pose_geometry: float = check(0)  # initial weight of the pose-geometry matching features; 0 = off (official)
    geometry_sharpness: float = check(**POSITIVE)  # exp(-sharpness * limb distance) (cocosnet/models/pose_geometry.py)


@dataclass(frozen=True)
class GeneratorConfig:
    ngf: int = check(1, MAX_WIDTH)
    head_width: int = check(1, MAX_WIDTH)
    spade_hidden: int = check(1, MAX_WIDTH)
    warp_skip: Literal["none", "blend", "residual"] = "none"  # how the output reuses the finest warp; none = official


@dataclass(frozen=True)
class DiscriminatorConfig:
    ndf: int = check(1, MAX_WIDTH)
    n_layers: int = check(1, 8)
    num_d: int = check(1, 8)


@dataclass(frozen=True)
class RefinerConfig:
    width: int = check(0, MAX_WIDTH)  # channels of the refiner (models/refiner.py); 0 = none (official)
    select: Literal["soft", "hard"]  # soft: re-weighted candidates; hard: the best one per pixel (straight-through)
    dilations: tuple[int, ...] = check(1, 64)  # one per hidden convolution (its reach: models/refiner.py)
    offsets: bool  # the candidates' offsets from their pixel as inputs too


NO_REFINER = RefinerConfig(width=0, select="soft", dilations=(1, 2, 1), offsets=False)  # the official model has none

@dataclass(frozen=True)
class ModelConfig:
    align: AlignConfig
    correspondence: CorrespondenceConfig
    generator: GeneratorConfig
    discriminator: DiscriminatorConfig
    refiner: RefinerConfig


@dataclass(frozen=True)
class LossWeights:
    """One weight per loss term; the names are the loss keys and the MLflow metric names."""

    feat_align: float = check(0)
    warp_self: float = check(0)
    warp_cycle: float = check(0)
    warp_geometry: float = check(0)  # not in the paper: warped pose geometry (docs/studies/correspondence.md)
    gan: float = check(0)
    gan_feat: float = check(0)
    fm: float = check(0)
    perceptual: float = check(0)
    contextual: float = check(0)
    recon: float = check(0)  # not in the paper: L1 of the output against the target on self pairs
    rank: float = check(0)  # not in the paper: candidate scores towards the photometric ranking (losses/ranking.py)
    rank_truth: float = check(0)  # not in the paper: the same towards the true match; synthetic data only
    flow_truth: float = check(0)  # not in the paper: the GRU's moves towards the true match (RAFT); synthetic only


def uses_truth(weights: LossWeights) -> bool:
    """Whether a term needs the synthetic set's true matches in the training batches."""
    return weights.rank_truth > 0 or weights.flow_truth > 0


# Keys added after model files were first written, with the value that reproduces the older code
# (the official behaviour); `saved_config` fills them into a config read from such a file.
ADDED_KEYS = {"model.generator.warp_skip": "none", "loss_weights.recon": 0.0, "loss_weights.rank": 0.0,
              "loss_weights.rank_truth": 0.0, "loss_weights.flow_truth": 0.0, "model.refiner.width": 0,
              "launch.nproc_per_node": 1,
              "launch.nnodes": 1, "launch.rdzv_endpoint": "", "launch.rdzv_id": "cocosnet",
              "model.refiner.select": "soft", "model.refiner.dilations": [1, 2, 1],
              "model.refiner.offsets": False, "model.correspondence.rank_grad": "features",
              "model.correspondence.lookup": 0,
              "eval.protocol": "cocosnet",
              "eval.imagenet_inception_weights": "",
              "eval.pose_transfer_fid_input": "gfla", "eval.pose_transfer_ssim_sigma": 1.5,
              "eval.lpips_weights": "", "eval.alexnet_weights": "",
              **{f"refine.{k}": v for k, v in {
                  "steps": 0, "batch_size": 8, "lr": 1.0e-3, "edge_weight": 3.0, "texture_weight": 0.0, "soft_steps": 0,
                  "patch": 0, "pool": 400, "grad_clip": 0.0,
                  "checkpoint_every": 100, "keep_last": 2, "log_every": 10, "sample_every": 500, "workers": 0,
                  "seed": 1234}.items()}}


@dataclass(frozen=True)
class VGGConfig:
    weights: str = check(nonempty=True)  # a path to VGG19 weights, or "random" (explicit opt-in)


@dataclass(frozen=True)
class PretrainConfig:
    """Correspondence pretraining: alignment, warp and cycle losses only."""

    steps: int = check(1)
    batch_size: int = check(1)  # global, over all ranks
    lr: float = check(**POSITIVE)
    beta1: float = check(**FRACTION)
    beta2: float = check(**FRACTION)
    checkpoint_every: int = check(1)
    keep_last: int = check(1)
    log_every: int = check(1)
    sample_every: int = check(1)
    workers: int = check(0)  # DataLoader workers
    seed: int = check(0)
    amp: bool  # autocast on CUDA (train/precision.py)
    amp_dtype: Literal["bfloat16", "float16"]
    amp_cpu: bool  # bf16 autocast on CPUs with native bf16


@dataclass(frozen=True)
class TrainConfig:
    """Full GAN training, initialised from the pretrain checkpoint. TTUR holds for the whole run:
    G at lr / 2 and D at 2 lr, betas (beta1, beta2)."""

    steps: int = check(1)
    batch_size: int = check(1)
    lr: float = check(**POSITIVE)
    beta1: float = check(**FRACTION)
    beta2: float = check(**FRACTION)
    g_eps: float = check(**POSITIVE)  # Adam eps of G (official 1.0e-3)
    decay_start: int = check(-1)  # linear LR decay to 0 from this step to the end; < 0 = constant
    grad_clip: float = check(0)  # max gradient norm; 0 = off
    ema_decay: float = check(**FRACTION)  # EMA of G's weights; 0 = off
    amp: bool  # autocast on CUDA (train/precision.py)
    amp_dtype: Literal["bfloat16", "float16"]
    amp_cpu: bool  # bf16 autocast on CPUs with native bf16
    flip: bool
    checkpoint_every: int = check(1)
    keep_last: int = check(1)
    log_every: int = check(1)
    sample_every: int = check(1)
    workers: int = check(0)
    seed: int = check(0)


@dataclass(frozen=True)
class RefineConfig:
    """The refiner alone on the frozen matcher and generator of the GAN stage, on a fixed pool of
    training crops whose candidates are computed once (cocosnet/train/refine.py). Adam, L1 to the target
    plus `edge_weight` x the L1 of its image differences and `texture_weight` x the finest band's texture
    term (train/refine.py), the learning rate decaying linearly to 0."""

    steps: int = check(0)  # 0 = no refinement: the stage writes the GAN stage's model
    batch_size: int = check(1)
    lr: float = check(**POSITIVE)  # decays linearly to 0 over the steps
    edge_weight: float = check(0)  # weight of the L1 of image differences beside the L1 (refine_terms)
    texture_weight: float = check(0)  # weight of the finest band's sliced Wasserstein term (texture_term)
    soft_steps: int = check(0)  # with model.refiner.select hard: the first steps train the soft re-weighting
    patch: int = check(0)  # train on a random patch x patch window of each cached crop; 0 = the whole crop
    pool: int = check(1)  # training crops cached (each drawn once, a fixed crop per pair)
    grad_clip: float = check(0)  # max gradient norm; 0 = off
    checkpoint_every: int = check(1)
    keep_last: int = check(1)
    log_every: int = check(1)
    sample_every: int = check(1)
    workers: int = check(0)
    seed: int = check(0)


@dataclass(frozen=True)
class EvalConfig:
    max_pairs: int = check(0)  # val pairs evaluated per kind, self and ref (0 = all)
    batch_size: int = check(1)
    seed: int = check(0)  # seeds the untrained baseline model, PatchMatch and SWD draws
    jpeg_quality: int = check(1, 100)  # outputs are scored as JPG, as in the CoCosNet FID protocol
    swd_size: int = check(16, also=(0,))  # SWD reads images at this size (CoCosNet's script: 256); 0 = as generated
    inception_weights: str  # pytorch-fid Inception file; "" = FID reported unavailable
    protocol: Literal["cocosnet", "pose_transfer"]  # cocosnet/metrics/pose_transfer.py, docs/evaluation.md
    imagenet_inception_weights: str  # torchvision inception_v3 file, the pose-transfer FID; "" = unavailable
    pose_transfer_fid_input: Literal["gfla", "cfld"]  # how that FID feeds the network (metrics/fid.py)
    pose_transfer_ssim_sigma: float = check(**POSITIVE)  # GFLA, CFLD: 1.5; PIDM: 1.2
    lpips_weights: str  # LPIPS v0.1 AlexNet linear heads (alex.pth); "" = LPIPS unavailable
    alexnet_weights: str  # torchvision AlexNet file, LPIPS's trunk; "" = LPIPS unavailable


@dataclass(frozen=True)
class TrackingConfig:
    uri: str  # MLflow tracking URI; "" = $MLFLOW_TRACKING_URI or sqlite:///<repo>/mlflow.db
    experiment: str  # "" = cocosnet-<profile>


@dataclass(frozen=True)
class LaunchConfig:
    """How the training stages run: one process, or torchrun started by the stage itself when more
    than one is asked for (cocosnet/train/launch.py, docs/scale.md). The result does not depend on it."""

    nproc_per_node: int = check(1)
    nnodes: int = check(1)
    rdzv_endpoint: str  # host:port of the c10d rendezvous; "" = one node, torchrun --standalone
    rdzv_id: str = check(nonempty=True)


@dataclass(frozen=True)
class Config:
    profile: str
    data: DataConfig
    synthetic: SyntheticConfig
    model: ModelConfig
    loss_weights: LossWeights
    vgg: VGGConfig
    pretrain: PretrainConfig
    train: TrainConfig
    refine: RefineConfig
    eval: EvalConfig
    tracking: TrackingConfig
    launch: LaunchConfig


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: expected one of {_type_name(tp)}, got {short(value)}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {' | '.join(_type_name(a) for a in args)}, got {short(value)}")
    if origin is tuple:
        (item, _) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {short(value)}")
        return tuple(_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            hint = " (write floats as 1.0e-4: YAML 1.1 reads 1e-4 as a string)" if isinstance(value, str) else ""
            raise ConfigError(f"{key}: expected float, got {type(value).__name__} {short(value)}{hint}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(f"{key}: expected a finite number, got {short(value)}")
        return number
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected int, got {type(value).__name__} {short(value)}")
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise ConfigError(f"{key}: expected {tp.__name__}, got {type(value).__name__} {short(value)}")
        return value
    raise TypeError(f"{key}: unsupported config type {tp!r}")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix or "top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    unknown = sorted(str(k) for k in set(raw) - set(names))
    if unknown:
        keys = clip(", ".join(f"{prefix}.{k}" if prefix else k for k in unknown), 200)
        raise ConfigError(f"unknown key(s): {keys}; expected one of {names} in {where}")
    missing = [n for n in names if n not in raw]
    if missing:
        keys = ", ".join(f"{prefix}.{k}" if prefix else k for k in missing)
        raise ConfigError(f"missing key(s): {keys}")
    values = {}
    for f in fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        values[f.name] = value = _convert(raw[f.name], hints[f.name], key)
        rule = f.metadata.get("check")
        for item in (value if isinstance(value, tuple) else (value,)):
            if rule is not None and not rule.ok(item):
                raise ConfigError(f"{key}: expected {rule}, got {short(value)}")
    return cls(**values)


def checked(section: Any, prefix: str) -> Any:
    """A config section built in code (say, from a weights file's shapes) put through the checks of
    params.yaml's keys; ConfigError names the key under `prefix`."""
    return _build(type(section), dataclasses.asdict(section), prefix)


def saved_config(raw: dict) -> dict:
    """A config recorded in a model file or checkpoint, with the keys added since (ADDED_KEYS) set to
    the values its code had (a section added since is created)."""
    out = copy.deepcopy(raw)
    for key, value in ADDED_KEYS.items():
        *parents, last = key.split(".")
        node = out
        for p in parents:
            node.setdefault(p, {})
            if not isinstance(node[p], dict):
                break
            node = node[p]
        else:
            node.setdefault(last, value)
    return out


def config_from_dict(raw: dict) -> Config:
    """Validate a nested dict (as read from params.yaml) into a Config."""
    cfg = _build(Config, raw, "")
    _check_consistency(cfg)
    return cfg


def _check_consistency(cfg: Config) -> None:
    d = cfg.data
    if d.crop_size > d.load_size:
        raise ConfigError(f"data.crop_size ({d.crop_size}) must not exceed data.load_size ({d.load_size})")
    levels = len(cfg.model.align.widths)
    if not 2 <= levels <= MAX_LEVELS:
        raise ConfigError(f"model.align.widths must list 2 to {MAX_LEVELS} levels, "
                          f"got {short(list(cfg.model.align.widths))}")
    stride = 2 ** (levels - 1)
    if d.crop_size % stride:
        raise ConfigError(f"data.crop_size ({d.crop_size}) must be divisible by {stride} ({levels} pyramid levels)")
    c = cfg.model.correspondence
    for f in fields(c):
        value = getattr(c, f.name)
        if isinstance(value, tuple) and len(value) != levels - 1:
            raise ConfigError(f"model.correspondence.{f.name} must list {levels - 1} values, one per PatchMatch "
                              f"level ({levels} levels in model.align.widths), got {list(value)}")
    for i, (handed, k) in enumerate(zip(c.handed_down, c.num_candidates)):
        coarser = c.num_candidates[i - 1] if i else None
        if handed > k or (coarser is not None and handed > coarser):
            raise ConfigError(f"model.correspondence.handed_down[{i}] ({handed}) must not exceed this level's "
                              f"num_candidates ({k})" + (f" nor the coarser level's ({coarser})" if coarser else ""))
    if c.rank_grad == "head" and not any(r and g for r, g in zip(c.rerank, c.gru)):
        raise ConfigError("model.correspondence.rank_grad is head, but no level has a re-ranking head to train: "
                          "set model.correspondence.rerank (and gru) true on a level, or rank_grad to features")
    for name in ("rank_truth", "flow_truth"):
        weight = getattr(cfg.loss_weights, name)
        if weight > 0 and d.source != "synthetic":
            raise ConfigError(f"loss_weights.{name} ({weight}) needs true matches, which only data.source "
                              f"synthetic has (got {d.source}); set it to 0.0 or use loss_weights.rank")
        if weight > 0 and cfg.train.flip:
            raise ConfigError(f"loss_weights.{name}: the true matches are not flipped; set train.flip to false")
    if cfg.refine.patch > d.crop_size:
        raise ConfigError(f"refine.patch ({cfg.refine.patch}) must not exceed data.crop_size ({d.crop_size}); "
                          "0 trains on the whole crop")
    launch = cfg.launch
    if launch.nnodes > 1 and not launch.rdzv_endpoint:
        raise ConfigError(f"launch.nnodes is {launch.nnodes}: set launch.rdzv_endpoint to the host:port of the "
                          "rendezvous (one of the nodes), the same on every node")
    world = launch.nproc_per_node * launch.nnodes
    for name in ("pretrain", "train", "refine"):
        batch = getattr(cfg, name).batch_size
        if batch % world:
            raise ConfigError(f"{name}.batch_size ({batch}) must divide by the number of training processes "
                              f"({world} = launch.nproc_per_node x launch.nnodes): it is the global batch")
    if cfg.train.decay_start >= cfg.train.steps:
        raise ConfigError(f"train.decay_start ({cfg.train.decay_start}) must be < train.steps ({cfg.train.steps}), "
                          "or -1 for a constant LR")


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML without aliases (a few lines of `&a [*b, *b, ...]` expand to gigabytes) and without
    duplicate keys (where the last one would silently win)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ConfigError(f"{event.start_mark.line + 1}: YAML aliases (*{event.anchor}) are not accepted "
                              "in a params file; write the value out")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        lines: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = lines.get(key)
            except TypeError:  # an unhashable key: the base class says so
                continue
            if first is not None:
                raise ConfigError(f"{line}: key {short(key)} appears twice in one mapping (first on line {first})")
            lines[key] = line
        return super().construct_mapping(node, deep=deep)


def clip(text: str, limit: int = 80) -> str:
    """`text` cut to `limit` characters for a one-line message."""
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def short(value: Any, limit: int = 80) -> str:
    """repr of a value for a one-line message, cut to `limit` characters."""
    return clip(repr(value), limit)


def read_yaml(path: str | Path) -> dict:
    """A params or profile file as a dict: UTF-8, a regular file under the text cap, no aliases, no
    duplicate keys; any failure is a one-line ConfigError naming the file."""
    path = Path(path)
    try:
        raw = yaml.load(read_text(path, "params file"), Loader=_StrictLoader)  # noqa: S506 -- a SafeLoader
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    except ConfigError as exc:
        raise ConfigError(f"{path}:{exc}") from None
    except (DataError, OSError) as exc:
        raise ConfigError(f"{path}: cannot read the params file ({str(exc).split(': ', 1)[-1]})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({' '.join(str(exc).split())[:300]})") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a params file") from None
    except ValueError as exc:  # an integer of thousands of digits
        raise ConfigError(f"{path}: invalid value ({str(exc)[:160]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return raw


def load_config(path: str | Path = "params.yaml") -> Config:
    """Load and validate a params file; errors name the file and the key."""
    try:
        return config_from_dict(read_yaml(path))
    except ConfigError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise ConfigError(f"{path}: {exc}") from None


def merge(base: dict, override: dict, prefix: str = "") -> dict:
    """Deep-merge `override` into a copy of `base`; override keys must exist in base."""
    out = dict(base)
    for key, value in override.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if key not in base:
            raise ConfigError(f"profile sets unknown key {name}")
        if isinstance(value, dict):
            if not isinstance(base[key], dict):
                raise ConfigError(f"profile sets {name} as a section, but it is a value")
            out[key] = merge(base[key], value, name)
        else:
            out[key] = value
    return out


def flatten(raw: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1} (for MLflow params and comparisons)."""
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat
