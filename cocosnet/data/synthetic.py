"""The embedded synthetic dataset, written exactly like DeepFashion-HD, with ground truth.

Each identity is a person (body proportions, skin, hair, background) wearing
its own textured clothes. It is rendered in several views (front, side,
back, ...) and poses from a joint-angle model, by orthographic ray casting of
limb-aligned 3D parts with a z-buffer, so limbs occlude each other.

Ground truth is stored per image, not per pair (`surface/<image>.npz`):
`part` (H, W) uint8 segmentation (0 = background) and `point` (H, W, 3)
float16, the part-local 3D surface point in cm. Two views of one identity
correspond where they show the same part-local point; `correspondence()`
matches them, marking target pixels whose surface point is hidden in the
exemplar as invalid.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.spatial import cKDTree

from cocosnet.data.body import NUM_PARTS, BodyShape, Part, PoseAngles, part_hits, pose_body
from cocosnet.data.deepfashion import KEYPOINT_FRAME, SquareFrame, pose_paths
from cocosnet.data.inshop import convert_to_inshop
from cocosnet.data.pose import write_openpose
from cocosnet.data.textures import Texture
from cocosnet.errors import DataError
from cocosnet.io import Staging, atomic_save, atomic_write, atomic_write_json
from cocosnet.progress import progress

CATEGORIES = {
    "MEN": ("Tees_Tanks", "Shirts_Polos", "Sweaters", "Pants", "Denim"),
    "WOMEN": ("Dresses", "Blouses_Shirts", "Tees_Tanks", "Skirts", "Pants"),
}
# (view name, yaw centre in degrees, yaw jitter)
VIEWS = (("1_front", 0.0, 20.0), ("2_side", 90.0, 20.0), ("3_back", 180.0, 20.0),
         ("4_full", 0.0, 35.0), ("7_additional", 0.0, 180.0))
BODY_HEIGHT_CM = 180.0


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate; mirrors the `synthetic` section of params.yaml."""

    num_identities: int
    views_per_identity: int
    image_width: int
    image_height: int
    val_fraction: float
    jpeg_quality: int
    seed: int


@dataclass(frozen=True)
class Identity:
    """Everything that stays fixed across the views of one person."""

    index: int
    gender: str
    category: str
    shape: BodyShape
    skin: np.ndarray
    hair: np.ndarray
    long_hair: bool
    background: np.ndarray
    top: Texture
    bottom: Texture
    long_sleeves: bool
    long_legs: bool  # trousers / long dress vs shorts / short skirt
    dress: bool

    @property
    def dirname(self) -> str:
        return f"img/{self.gender}/{self.category}/id_{self.index:08d}"

    @staticmethod
    def sample(index: int, rng: np.random.Generator) -> Identity:
        gender = "WOMEN" if rng.random() < 0.5 else "MEN"
        category = str(rng.choice(CATEGORIES[gender]))
        tone = rng.uniform(0.35, 1.0)
        skin = np.array([235, 195, 165]) * tone + np.array([10, 5, 0])
        return Identity(
            index=index, gender=gender, category=category,
            shape=BodyShape.sample(rng, female=gender == "WOMEN"),
            skin=skin, hair=rng.uniform(10, 120, size=3) * rng.uniform(0.3, 1.0),
            long_hair=bool(gender == "WOMEN" and rng.random() < 0.7),
            background=rng.uniform(200, 250, size=3),
            top=Texture.sample(rng), bottom=Texture.sample(rng),
            long_sleeves=bool(rng.random() < 0.5),
            long_legs=bool(category in ("Pants", "Denim") or rng.random() < 0.5),
            dress=category == "Dresses",
        )


@dataclass(frozen=True)
class Rendering:
    image: np.ndarray  # (H, W, 3) uint8
    part: np.ndarray  # (H, W) uint8
    point: np.ndarray  # (H, W, 3) float32, cm
    keypoints: np.ndarray  # (18, 2) in the photo's pixels, NaN = not detected
    cm_per_px: float


def _surface_color(ident: Identity, part_id: int, point: np.ndarray, part: Part) -> np.ndarray:
    """RGB for part-local surface points (N, 3): axial, forward, lateral."""
    axial, fwd, lat = point[:, 0], point[:, 1], point[:, 2]
    around = np.arctan2(lat / part.r_lat, fwd / part.r_fwd) * 0.5 * (part.r_fwd + part.r_lat)
    n = len(point)
    if part_id == 1:  # head: face in front, hair on top and behind
        r = part.r_fwd
        lowest = -1.0 * r if ident.long_hair else -0.35 * r
        is_hair = (axial > 0.5 * r) | ((fwd < -0.1 * r) & (axial > lowest))
        return np.where(is_hair[:, None], ident.hair, ident.skin)
    if part_id == 2:
        return np.broadcast_to(ident.skin, (n, 3))
    if part_id == 3:
        return ident.top(axial, around)
    if part_id in (4, 6):
        sleeve = axial < (np.inf if ident.long_sleeves else 0.55 * np.linalg.norm(part.b - part.a))
        return np.where(sleeve[:, None], ident.top(axial, around), ident.skin)
    if part_id in (5, 7):
        return ident.top(axial, around) if ident.long_sleeves else np.broadcast_to(ident.skin, (n, 3))
    garment = ident.top if ident.dress else ident.bottom
    if part_id in (8, 10):
        return garment(axial, around)
    covered = axial < (np.inf if ident.long_legs else 0.0)
    return np.where(covered[:, None], garment(axial, around), ident.skin)


def _scaled(part: Part, scale: float, shift: np.ndarray) -> Part:
    return Part(part.part_id, part.a * scale + shift, part.b * scale + shift,
                part.r_fwd * scale, part.r_lat * scale, part.frame, part.caps)


def render_view(ident: Identity, view: int, rng: np.random.Generator,
                width: int, height: int) -> Rendering:
    """Render one pose/view of an identity at (width, height)."""
    name, yaw_centre, yaw_jitter = VIEWS[view % len(VIEWS)]
    angles = PoseAngles.sample(rng, yaw=yaw_centre + rng.uniform(-yaw_jitter, yaw_jitter))
    body = pose_body(ident.shape, angles)
    # Scale and position jitter: the person fills 70-88% of the height.
    extent_y = body.joints[:, 1].max() - body.joints[:, 1].min() + 2 * ident.shape.head_r
    px_per_cm = height * rng.uniform(0.70, 0.88) / max(extent_y, 0.7 * BODY_HEIGHT_CM)
    centre = np.array([width / 2 + rng.uniform(-0.08, 0.08) * width,
                       height / 2 + rng.uniform(-0.05, 0.05) * height])
    mid = 0.5 * (body.joints[:, :2].max(0) + body.joints[:, :2].min(0))
    shift = np.array([*(centre - mid * px_per_cm), 0.0])

    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    depth = np.full((height, width), np.inf)
    part_map = np.zeros((height, width), dtype=np.uint8)
    point = np.zeros((height, width, 3))
    parts = {p.part_id: p for p in body.parts}
    for part in body.parts:
        sp = _scaled(part, px_per_cm, shift)
        r = max(sp.r_fwd, sp.r_lat) + 1
        x0 = int(max(0, np.floor(min(sp.a[0], sp.b[0]) - r)))
        x1 = int(min(width, np.ceil(max(sp.a[0], sp.b[0]) + r) + 1))
        y0 = int(max(0, np.floor(min(sp.a[1], sp.b[1]) - r)))
        y1 = int(min(height, np.ceil(max(sp.a[1], sp.b[1]) + r) + 1))
        if x0 >= x1 or y0 >= y1:
            continue
        t, local = part_hits(sp, xs[y0:y1, x0:x1], ys[y0:y1, x0:x1])
        nearer = t < depth[y0:y1, x0:x1]
        depth[y0:y1, x0:x1][nearer] = t[nearer]
        part_map[y0:y1, x0:x1][nearer] = part.part_id
        point[y0:y1, x0:x1][nearer] = local[nearer] / px_per_cm

    gy = np.linspace(0.0, 1.0, height)[:, None, None]
    image = ident.background * (1.0 - 0.12 * gy) + np.zeros((1, width, 3))
    for pid in np.unique(part_map):
        if pid == 0:
            continue
        sel = part_map == pid
        image[sel] = _surface_color(ident, int(pid), point[sel], parts[int(pid)])

    kp = body.joints[:, :2] * px_per_cm + shift[:2]
    inside = (kp[:, 0] >= 0) & (kp[:, 0] < width) & (kp[:, 1] >= 0) & (kp[:, 1] < height)
    kp[~(inside & body.face_visible)] = np.nan
    return Rendering(image=np.clip(np.rint(image), 0, 255).astype(np.uint8), part=part_map,
                     point=point.astype(np.float32), keypoints=kp, cm_per_px=1.0 / px_per_cm)


def view_filename(view: int) -> str:
    return f"01_{VIEWS[view % len(VIEWS)][0]}.jpg"


# ----------------------------------------------------------------------------- ground truth

@dataclass(frozen=True)
class SurfaceMap:
    """Per-image ground truth: segmentation and part-local surface points."""

    part: np.ndarray  # (H, W) uint8, 0 = background
    point: np.ndarray  # (H, W, 3) float32, cm
    cm_per_px: float


def surface_path(root: Path, image_rel: str) -> Path:
    """`<root>/surface/<image path without its leading img/>.npz`: `img/MEN/.../x.jpg` (DeepFashion-HD
    layout) -> `surface/MEN/.../x.npz`, `test/x.jpg` (In-shop layout) -> `surface/test/x.npz`."""
    rel = Path(image_rel)
    if rel.parts[:1] == ("img",):
        rel = rel.relative_to("img")
    return root / "surface" / rel.with_suffix(".npz")


def save_surface(path: Path, rendering: Rendering) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, part=rendering.part, point=rendering.point.astype(np.float16),
                        cm_per_px=np.float32(rendering.cm_per_px))
    atomic_write(path, buf.getvalue())


def load_surface(path: Path) -> SurfaceMap:
    """Read a ground-truth surface map written by the synthesizer."""
    try:
        with np.load(path) as z:
            part, point, cm = z["part"], z["point"].astype(np.float32), float(z["cm_per_px"])
    except FileNotFoundError:
        raise DataError(f"{path}: ground-truth surface map not found") from None
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: unreadable or truncated ground-truth surface map ({type(exc).__name__}: {exc}); "
                        "delete it and run `dvc repro --force --single-item synthesize`") from None
    if part.ndim != 2 or point.shape != part.shape + (3,):
        raise DataError(f"{path}: expected part (H, W) and point (H, W, 3), got {part.shape} and {point.shape}")
    return SurfaceMap(part=part, point=point, cm_per_px=cm)


def correspondence(target: SurfaceMap, exemplar: SurfaceMap,
                   max_dist_px: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Dense ground-truth correspondence from a target view to an exemplar view.

    Returns coords (H, W, 2) float32, the (x, y) exemplar pixel that shows the
    same body-surface point as each target pixel, and valid (H, W) bool,
    False on background and where that point is hidden in the exemplar (no
    exemplar pixel of the same part within `max_dist_px` exemplar pixels of
    surface distance).
    """
    height, width = target.part.shape
    coords = np.zeros((height, width, 2), dtype=np.float32)
    valid = np.zeros((height, width), dtype=bool)
    radius = max_dist_px * exemplar.cm_per_px
    for pid in range(1, NUM_PARTS):
        t_sel = target.part == pid
        e_sel = exemplar.part == pid
        if not t_sel.any() or not e_sel.any():
            continue
        ey, ex = np.nonzero(e_sel)
        tree = cKDTree(exemplar.point[e_sel])
        dist, idx = tree.query(target.point[t_sel], distance_upper_bound=radius)
        hit = np.isfinite(dist)
        ty, tx = np.nonzero(t_sel)
        coords[ty[hit], tx[hit]] = np.stack([ex[idx[hit]], ey[idx[hit]]], axis=1)
        valid[ty[hit], tx[hit]] = True
    return coords, valid


def warp_by_correspondence(exemplar_image: np.ndarray, coords: np.ndarray,
                           valid: np.ndarray, fill: int = 0) -> np.ndarray:
    """Nearest-neighbour warp of an (H, W, C) exemplar through a GT map."""
    xi = np.clip(np.rint(coords[..., 0]).astype(int), 0, exemplar_image.shape[1] - 1)
    yi = np.clip(np.rint(coords[..., 1]).astype(int), 0, exemplar_image.shape[0] - 1)
    out = exemplar_image[yi, xi]
    out[~valid] = fill
    return out


# ----------------------------------------------------------------------------- writing

def _identity_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def _write_identity(args: tuple[SyntheticSpec, int, str]) -> list[str]:
    spec, index, out_dir = args
    root = Path(out_dir)
    rng = _identity_rng(spec.seed, index)
    ident = Identity.sample(index, rng)
    done = root / "_done" / f"{index:08d}.json"
    if done.exists():
        return json.loads(done.read_text())
    frame = SquareFrame(spec.image_width, spec.image_height)
    rels = []
    for view in range(spec.views_per_identity):
        r = render_view(ident, view, rng, spec.image_width, spec.image_height)
        rel = f"{ident.dirname}/{view_filename(view)}"
        img_path = root / rel
        atomic_save(img_path, lambda f, r=r: Image.fromarray(r.image).save(f, format="JPEG", quality=spec.jpeg_quality,
                                                                          subsampling=0))
        cand, sub = pose_paths(root, rel)
        cand.parent.mkdir(parents=True, exist_ok=True)
        write_openpose(frame.to_frame(r.keypoints, KEYPOINT_FRAME), cand, sub)
        save_surface(surface_path(root, rel), r)
        rels.append(rel)
    atomic_write(done, json.dumps(rels))
    return rels


def _write_lists(root: Path, spec: SyntheticSpec, by_identity: list[list[str]]) -> None:
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 1 << 30]))
    n_val = max(1, round(spec.val_fraction * len(by_identity))) if len(by_identity) > 1 else 0
    val_ids = set(rng.choice(len(by_identity), size=n_val, replace=False).tolist())
    splits = {"train": [i for i in range(len(by_identity)) if i not in val_ids],
              "val": sorted(val_ids)}
    win = lambda rel: rel.replace("/", "\\")  # noqa: E731 -- the published lists use Windows separators
    for split, ids in splits.items():
        atomic_write(root / f"{split}.txt", "".join(f"{rel}\n" for i in ids for rel in by_identity[i]))
    self_lines = [",".join(win(r) for r in [rel] + [o for o in views if o != rel])
                  for views in by_identity if len(views) > 1 for rel in views]
    atomic_write(root / "deepfashion_self_pair.txt", "".join(f"{line}\n" for line in self_lines))
    for split, name in (("train", "deepfashion_ref.txt"), ("val", "deepfashion_ref_test.txt")):
        ids = splits[split]
        lines = []
        for i in ids:
            others = [j for j in ids if j != i]
            if not others:
                continue
            for rel in by_identity[i]:
                refs = [by_identity[j][int(rng.integers(len(by_identity[j])))]
                        for j in rng.choice(others, size=min(2, len(others)), replace=False)]
                lines.append(",".join(win(r) for r in [rel] + refs))
        atomic_write(root / name, "".join(f"{line}\n" for line in lines))


def generate(spec: SyntheticSpec, out_dir: Path, *, workers: int = 1, show_progress: bool = True,
             layout: str = "deepfashion") -> dict:
    """Write the synthetic dataset to `out_dir` in `layout` (`deepfashion`, or `inshop`:
    cocosnet/data/inshop.py) and return a summary.

    Work goes to `<out_dir>.partial` first; identities already finished there
    (by an earlier, interrupted run with the same spec) are kept. The finished
    tree replaces `out_dir` in one rename.
    """
    if spec.views_per_identity < 2:
        raise ValueError("synthetic.views_per_identity must be >= 2 to form self pairs")
    if layout not in ("deepfashion", "inshop"):
        raise ValueError(f"layout must be 'deepfashion' or 'inshop', got {layout!r}")
    staging = Staging(Path(out_dir), {**asdict(spec), "layout": layout})
    jobs = [(spec, i, str(staging.path)) for i in range(spec.num_identities)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(progress(pool.map(_write_identity, jobs, chunksize=4),
                                    total=len(jobs), desc="synthesize", enabled=show_progress))
    else:
        results = [_write_identity(j) for j in progress(jobs, desc="synthesize", enabled=show_progress)]
    _write_lists(staging.path, spec, results)
    shutil.rmtree(staging.path / "_done")
    if layout == "inshop":
        for old, new in convert_to_inshop(staging.path).items():
            target = surface_path(staging.path, new)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(surface_path(staging.path, old), target)
        for folder in sorted((staging.path / "surface").rglob("*"), reverse=True):  # the HD folders, now empty
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
    summary = {"identities": spec.num_identities, "images": sum(len(r) for r in results), "spec": asdict(spec)}
    if layout != "deepfashion":
        summary["layout"] = layout
    atomic_write_json(staging.path / "synthetic.json", summary)
    staging.commit()
    return summary
