"""A 3D articulated body for the synthetic dataset: joint-angle pose model and ray casting.

Coordinates are in centimetres in a y-down frame: x to the viewer's right, y
down, z away from the viewer (orthographic camera looking along +z). The body
faces the viewer (forward = -z) at yaw 0.

Every body part is a limb-aligned shape (elliptic cylinders with spherical
caps, a sphere for the head). A hit on a part yields a point in that part's
own 3D frame (axial, forward, lateral), which is the body-surface coordinate:
texture is a function of it, so it moves with the body, and two views of one
identity correspond where they show the same part-local point.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Part ids of the segmentation; 0 is background.
PART_NAMES = (
    "background", "head", "neck", "torso",
    "r_upper_arm", "r_forearm", "l_upper_arm", "l_forearm",
    "r_thigh", "r_shin", "l_thigh", "l_shin",
)
NUM_PARTS = len(PART_NAMES)


@dataclass(frozen=True)
class BodyShape:
    """Per-identity body proportions in cm."""

    torso_len: float
    neck_len: float
    head_r: float
    shoulder_w: float
    hip_w: float
    torso_r_lat: float
    torso_r_fwd: float
    upper_arm: float
    forearm: float
    arm_r: float
    thigh: float
    shin: float
    leg_r: float

    @staticmethod
    def sample(rng: np.random.Generator, female: bool) -> BodyShape:
        s = rng.uniform(0.92, 1.08)
        shoulder = (16.0 if female else 19.0) * rng.uniform(0.93, 1.07)
        return BodyShape(
            torso_len=50.0 * s, neck_len=7.0 * s, head_r=10.5 * s * rng.uniform(0.95, 1.05),
            shoulder_w=shoulder, hip_w=(10.5 if female else 9.5) * s,
            torso_r_lat=shoulder * 0.95, torso_r_fwd=11.0 * s * rng.uniform(0.9, 1.1),
            upper_arm=29.0 * s, forearm=26.0 * s, arm_r=4.6 * s * rng.uniform(0.9, 1.15),
            thigh=43.0 * s, shin=41.0 * s, leg_r=6.8 * s * rng.uniform(0.9, 1.15),
        )


@dataclass(frozen=True)
class PoseAngles:
    """Joint angles in degrees (within realistic limits) and the body yaw."""

    arm_abduction: tuple[float, float]  # (right, left): 0 hangs down, 90 horizontal
    arm_flexion: tuple[float, float]  # forward swing of the upper arm
    elbow: tuple[float, float]  # forearm flexion relative to the upper arm
    hip_flexion: tuple[float, float]
    hip_abduction: tuple[float, float]
    knee: tuple[float, float]
    torso_lean: float  # side bend
    head_yaw: float
    head_pitch: float
    yaw: float  # whole-body rotation about the vertical axis (the view)

    @staticmethod
    def sample(rng: np.random.Generator, yaw: float) -> PoseAngles:
        def pair(lo: float, hi: float) -> tuple[float, float]:
            return float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))

        return PoseAngles(
            arm_abduction=pair(5, 75), arm_flexion=pair(-30, 60), elbow=pair(0, 120),
            hip_flexion=pair(-12, 30), hip_abduction=pair(0, 15), knee=pair(0, 45),
            torso_lean=float(rng.uniform(-6, 6)), head_yaw=float(rng.uniform(-30, 30)),
            head_pitch=float(rng.uniform(-12, 12)), yaw=yaw,
        )


def _limb_dir(abduction: float, flexion: float, side: float) -> np.ndarray:
    """Unit direction of a limb hanging down, swung outwards and forwards (degrees)."""
    a, f = np.radians(abduction), np.radians(flexion)
    return np.array([side * np.sin(a), np.cos(a) * np.cos(f), -np.cos(a) * np.sin(f)])


def _rot_y(deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rot_z(deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _rot_x(deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


@dataclass(frozen=True)
class Part:
    """One body part in the view frame.

    A capsule from `a` to `b` with elliptic cross-section (r_fwd, r_lat) and
    round caps when the section is circular; `a == b` gives a sphere.
    `frame` rows are the part's (axial, forward, lateral) unit axes.
    """

    part_id: int
    a: np.ndarray
    b: np.ndarray
    r_fwd: float
    r_lat: float
    frame: np.ndarray
    caps: bool


@dataclass(frozen=True)
class PosedBody:
    joints: np.ndarray  # (18, 3) COCO-18 joints in the view frame, cm
    face_visible: np.ndarray  # (18,) False for face joints turned away from the camera
    parts: tuple[Part, ...]


def _frame(axis: np.ndarray, forward: np.ndarray) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    fwd = forward - axis * (forward @ axis)
    if np.linalg.norm(fwd) < 1e-6:  # limb pointing straight forward: any perpendicular will do
        fwd = np.cross(axis, [1.0, 0, 0])
    fwd = fwd / np.linalg.norm(fwd)
    return np.stack([axis, fwd, np.cross(axis, fwd)])


def pose_body(shape: BodyShape, angles: PoseAngles) -> PosedBody:
    """Place the skeleton and its parts for one pose and view (pelvis at the origin)."""
    lean = _rot_z(angles.torso_lean)
    neck = lean @ np.array([0.0, -shape.torso_len, 0.0])
    up = (neck / np.linalg.norm(neck))  # points up (negative y)
    lateral = lean @ np.array([1.0, 0, 0])
    forward = np.array([0.0, 0.0, -1.0])
    j = np.zeros((18, 3))
    j[1] = neck
    j[2] = neck - lateral * shape.shoulder_w
    j[5] = neck + lateral * shape.shoulder_w
    j[8] = -lateral * shape.hip_w
    j[11] = lateral * shape.hip_w
    for side, (sho, elb, wri), k in ((-1.0, (2, 3, 4), 0), (1.0, (5, 6, 7), 1)):
        upper = _limb_dir(angles.arm_abduction[k], angles.arm_flexion[k], side)
        lower = _limb_dir(angles.arm_abduction[k] * 0.8, angles.arm_flexion[k] + angles.elbow[k], side)
        j[elb] = j[sho] + lean @ upper * shape.upper_arm
        j[wri] = j[elb] + lean @ lower * shape.forearm
    for side, (hip, kne, ank), k in ((-1.0, (8, 9, 10), 0), (1.0, (11, 12, 13), 1)):
        thigh = _limb_dir(angles.hip_abduction[k], angles.hip_flexion[k], side)
        shin = _limb_dir(angles.hip_abduction[k] * 0.5, angles.hip_flexion[k] - angles.knee[k], side)
        j[kne] = j[hip] + thigh * shape.thigh
        j[ank] = j[kne] + shin * shape.shin
    head_rot = lean @ _rot_y(angles.head_yaw) @ _rot_x(angles.head_pitch)
    head_c = neck + up * (shape.neck_len + shape.head_r)
    h_fwd, h_up, h_lat = head_rot @ forward, head_rot @ np.array([0, -1.0, 0]), head_rot @ np.array([1.0, 0, 0])
    r = shape.head_r
    j[0] = head_c + h_fwd * r
    for eye, ear, side in ((14, 16, -1.0), (15, 17, 1.0)):
        d = 0.8 * h_fwd + 0.3 * h_up + 0.45 * side * h_lat
        j[eye] = head_c + d / np.linalg.norm(d) * r
        j[ear] = head_c + side * h_lat * r

    view = _rot_y(angles.yaw)
    joints = j @ view.T
    head_c_v = view @ head_c
    # A face joint is visible when its surface normal faces the camera (-z).
    face_visible = np.ones(18, dtype=bool)
    for idx in (0, 14, 15, 16, 17):
        normal = joints[idx] - head_c_v
        face_visible[idx] = normal[2] < 0.15 * r

    fwd_v, up_v = view @ forward, view @ up
    pelvis = 0.5 * (joints[8] + joints[11])
    parts = [
        Part(1, head_c_v, head_c_v, r, r, np.stack([view @ h_up, view @ h_fwd, view @ h_lat]), True),
        Part(2, joints[1], head_c_v, shape.arm_r * 1.15, shape.arm_r * 1.15, _frame(head_c_v - joints[1], fwd_v), False),
        Part(3, pelvis + up_v * 2.0, joints[1] - up_v * 1.5, shape.torso_r_fwd, shape.torso_r_lat,
             _frame(joints[1] - pelvis, fwd_v), False),
    ]
    limbs = ((4, 2, 3, shape.arm_r), (5, 3, 4, shape.arm_r * 0.85), (6, 5, 6, shape.arm_r),
             (7, 6, 7, shape.arm_r * 0.85), (8, 8, 9, shape.leg_r), (9, 9, 10, shape.leg_r * 0.8),
             (10, 11, 12, shape.leg_r), (11, 12, 13, shape.leg_r * 0.8))
    for pid, ja, jb, radius in limbs:
        parts.append(Part(pid, joints[ja], joints[jb], radius, radius, _frame(joints[jb] - joints[ja], fwd_v), True))
    return PosedBody(joints=joints, face_visible=face_visible, parts=tuple(parts))


def _cylinder_hits(part: Part, px: np.ndarray, py: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Front hit of the camera rays at (px, py) with the part's elliptic cylinder."""
    length = np.linalg.norm(part.b - part.a)
    ax, e1, e2 = part.frame
    wx, wy = px - part.a[0], py - part.a[1]
    wz = -part.a[2]
    c1 = (wx * e1[0] + wy * e1[1] + wz * e1[2]) / part.r_fwd
    c2 = (wx * e2[0] + wy * e2[1] + wz * e2[2]) / part.r_lat
    d1, d2 = e1[2] / part.r_fwd, e2[2] / part.r_lat
    qa = d1 * d1 + d2 * d2
    t = np.full(px.shape, np.inf)
    if qa < 1e-9 or length < 1e-6:
        return t, np.zeros(px.shape + (3,))
    qb = 2 * (c1 * d1 + c2 * d2)
    qc = c1 * c1 + c2 * c2 - 1
    disc = qb * qb - 4 * qa * qc
    ok = disc >= 0
    t_hit = (-qb - np.sqrt(np.where(ok, disc, 0))) / (2 * qa)
    axial = wx * ax[0] + wy * ax[1] + (wz + t_hit) * ax[2]
    ok &= (axial >= 0) & (axial <= length)
    t = np.where(ok, t_hit, np.inf)
    local = np.stack([axial, (c1 + t_hit * d1) * part.r_fwd, (c2 + t_hit * d2) * part.r_lat], axis=-1)
    return t, local


def _sphere_hits(part: Part, centre: np.ndarray, radius: float, px: np.ndarray, py: np.ndarray):
    dx, dy = px - centre[0], py - centre[1]
    h2 = radius * radius - dx * dx - dy * dy
    ok = h2 >= 0
    t = np.where(ok, centre[2] - np.sqrt(np.where(ok, h2, 0)), np.inf)
    q = np.stack([px - part.a[0], py - part.a[1], t - part.a[2]], axis=-1)
    local = np.where(ok[..., None], q @ part.frame.T, 0.0)
    return t, local


def part_hits(part: Part, px: np.ndarray, py: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Depth of the nearest hit (inf = miss) and the part-local surface point (…, 3)."""
    if np.allclose(part.a, part.b):
        return _sphere_hits(part, part.a, part.r_fwd, px, py)
    t, local = _cylinder_hits(part, px, py)
    if part.caps:
        for centre in (part.a, part.b):
            tc, lc = _sphere_hits(part, centre, part.r_fwd, px, py)
            nearer = tc < t
            t = np.where(nearer, tc, t)
            local = np.where(nearer[..., None], lc, local)
    return t, local
