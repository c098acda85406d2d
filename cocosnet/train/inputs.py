"""What a training stage is trained from, in one record, and the one list of what it reads.

`StageSpec.params` is both the stage's `params:` in dvc.yaml (a test keeps them
equal) and the params half of its checkpoint-compatibility check. A checkpoint
stores `training_inputs(...)`; it is resumed only when the current record is
equal, except for the keys that only say how long or how often
(`RESUMABLE_KEYS`), so a longer schedule continues a finished run.

The code is identified by what it does, not by its bytes (`behaviour_sha256`): a
Python file by its syntax tree without docstrings (comments and layout are not in
it), so a comment or a docstring never discards a training run; a real change does.
"""

from __future__ import annotations

import ast
import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from cocosnet.config import NO_REFINER, Config, flatten
from cocosnet.data.processing import image_file, label_file
from cocosnet.deps import REPO, import_closure
from cocosnet.io import sha256_file, sha256_files

# Keys of a stage section that may change between a checkpoint and the run resuming from it.
RESUMABLE_KEYS = ("steps", "checkpoint_every", "keep_last", "log_every", "sample_every", "workers")
LOOP_MODULE = "cocosnet.train.loop"


@dataclass(frozen=True)
class StageSpec:
    """A training stage: its name (= its params.yaml section) and the params it reads, as dvc.yaml
    lists them (a section name or a dotted key)."""

    name: str
    params: tuple[str, ...]


# The pretrain stage trains the matcher alone, so the generator's and discriminator's settings are not its inputs.
PRETRAIN = StageSpec("pretrain", ("data.load_size", "data.crop_size", "model.align", "model.correspondence",
                                  "loss_weights.feat_align",
                                  "loss_weights.warp_self", "loss_weights.warp_cycle", "loss_weights.warp_geometry",
                                  "loss_weights.rank", "loss_weights.rank_truth", "loss_weights.flow_truth",
                                  "pretrain"))
TRAIN = StageSpec("train", ("data.load_size", "data.crop_size", "model.align", "model.correspondence",
                            "model.generator", "model.discriminator", "loss_weights", "vgg", "train"))
# The refiner trains alone on the frozen GAN model (models/train.pt, whose hash is among its inputs).
REFINE = StageSpec("refine", ("data.load_size", "data.crop_size", "model", "refine"))
STAGES = {spec.name: spec for spec in (PRETRAIN, TRAIN, REFINE)}


def stage_config(cfg: Config, spec: StageSpec) -> Config:
    """The config a stage builds its model from: pretrain and train build theirs without the refiner,
    which only the refine stage adds and trains (so its settings never retrain the GAN)."""
    if spec.name == REFINE.name:
        return cfg
    return replace(cfg, model=replace(cfg.model, refiner=NO_REFINER))


def _selected(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def stage_params(cfg: Config, spec: StageSpec) -> dict[str, Any]:
    """The flattened params `spec` reads, less its resumable keys; tuples as lists (as JSON has them)."""
    flat = flatten(asdict(cfg))
    skip = {f"{spec.name}.{k}" for k in RESUMABLE_KEYS}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(flat.items())
            if _selected(k, spec.params) and k not in skip}


def training_pairs(pairs: pd.DataFrame) -> pd.DataFrame:
    """Train-split self pairs: the paired setting the official README trains in."""
    return pairs[(pairs["split"] == "train") & (pairs["kind"] == "self")].reset_index(drop=True)


def table_sha256(table: pd.DataFrame) -> str:
    return hashlib.sha256(table.to_csv(index=False).encode("utf-8")).hexdigest()


def data_sha256(table: pd.DataFrame, processed: Path) -> str:
    """One digest of the cached image and label files the rows of `table` read."""
    rels = sorted(set(table["target"]) | set(table["exemplar"]))
    processed = Path(processed)
    files = [f(processed / d, rel) for rel in rels for d, f in (("img", image_file), ("label", label_file))]
    return sha256_files(files)


def behaviour_sha256(path: Path) -> str:
    """sha256 of what a source file does: a Python file's syntax tree with its docstrings removed (comments,
    blank lines and formatting are not in a tree); any other file (the kernels' C++) by its bytes."""
    path = Path(path)
    if path.suffix != ".py":
        return sha256_file(path)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)):
                node.body = node.body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree, include_attributes=False).encode("utf-8")).hexdigest()


def code_sha256(module: str = LOOP_MODULE, root: Path = REPO) -> dict[str, str]:
    """`behaviour_sha256` of each file of `module`'s import closure under `root`."""
    return {str(p): behaviour_sha256(root / p) for p in import_closure(module, root)}


def training_inputs(cfg: Config, spec: StageSpec, pairs: pd.DataFrame, *,
                    files: dict[str, Path | None]) -> dict:
    """params, the training rows, the cached data they read, named input files (init model, VGG) and
    the training code, each as a hash."""
    table = training_pairs(pairs)
    return {"stage": spec.name, "params": stage_params(cfg, spec), "pairs": table_sha256(table),
            "data": data_sha256(table, Path(cfg.data.processed)),
            "files": {name: sha256_file(path) if path is not None else None for name, path in sorted(files.items())},
            "code": code_sha256()}


def inputs_key(inputs: dict) -> str:
    """A short name for a set of inputs (the folder its superseded checkpoints go to)."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode("utf-8")).hexdigest()[:12]


def code_differences(saved: dict, current: dict) -> list[str]:
    """The source files whose behaviour differs between two inputs records."""
    ca, cb = saved.get("code", {}), current.get("code", {})
    return sorted(p for p in set(ca) | set(cb) if ca.get(p) != cb.get(p))


def inputs_differences(saved: dict, current: dict) -> list[str]:
    """Human-readable reasons why `saved` inputs are not `current` ([] when equal)."""
    reasons = []
    a, b = saved.get("params", {}), current.get("params", {})
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            reasons.append(f"{key} ({a.get(key)!r} -> {b.get(key)!r})")
    if saved.get("pairs") != current.get("pairs"):
        reasons.append("the training pairs changed")
    if saved.get("data") != current.get("data"):
        reasons.append("the cached images or labels changed")
    fa, fb = saved.get("files", {}), current.get("files", {})
    reasons += [f"the {name} file changed" for name in sorted(set(fa) | set(fb)) if fa.get(name) != fb.get(name)]
    changed = code_differences(saved, current)
    if changed:
        reasons.append("the training code changed (" + ", ".join(changed[:4]) + (", ..." if len(changed) > 4 else "")
                       + ")")
    if saved.get("stage") != current.get("stage"):
        reasons.append(f"stage {saved.get('stage')!r} -> {current.get('stage')!r}")
    return reasons
