"""Clothing textures as functions of body-surface coordinates.

A texture maps (along, around) surface coordinates in cm to RGB, so a
pattern is painted on the body and moves with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KINDS = ("stripes", "checks", "dots", "print")


@dataclass(frozen=True)
class Texture:
    kind: str
    colors: np.ndarray  # (3, 3) float RGB in [0, 255]
    period: float  # cm
    angle: float  # radians, stripe orientation
    duty: float
    waves: np.ndarray  # (4, 3): frequency_u, frequency_v, phase of the print's sinusoids

    @staticmethod
    def sample(rng: np.random.Generator, kind: str | None = None) -> Texture:
        kind = kind or str(rng.choice(KINDS))
        base = rng.uniform(20, 235, size=3)
        colors = np.stack([base, rng.uniform(20, 235, size=3), rng.uniform(20, 235, size=3)])
        # Keep the pattern visible: the second colour must differ clearly from the first.
        while np.abs(colors[1] - colors[0]).sum() < 150:
            colors[1] = rng.uniform(0, 255, size=3)
        waves = np.column_stack([rng.uniform(0.08, 0.3, 4), rng.uniform(0.08, 0.3, 4),
                                 rng.uniform(0, 2 * np.pi, 4)])
        return Texture(kind=kind, colors=colors, period=float(rng.uniform(4.0, 9.0)),
                       angle=float(rng.choice([0.0, np.pi / 2, rng.uniform(0, np.pi)])),
                       duty=float(rng.uniform(0.3, 0.6)), waves=waves)

    def __call__(self, along: np.ndarray, around: np.ndarray) -> np.ndarray:
        """along, around: (N,) cm -> (N, 3) float RGB."""
        if self.kind == "stripes":
            s = (along * np.cos(self.angle) + around * np.sin(self.angle)) / self.period
            pick = np.where((s % 1.0) < self.duty, 0, 1)
        elif self.kind == "checks":
            pick = (np.floor(along / self.period) + np.floor(around / self.period)) % 2
        elif self.kind == "dots":
            du = (along / self.period) % 1.0 - 0.5
            dv = (around / self.period) % 1.0 - 0.5
            pick = np.where(du * du + dv * dv < (0.55 * self.duty) ** 2, 1, 0)
        else:
            field = sum(np.sin(fu * along + fv * around + ph) for fu, fv, ph in self.waves)
            pick = np.digitize(field, [-0.6, 0.8])
        return self.colors[pick.astype(int)]
