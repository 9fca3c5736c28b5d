"""A deterministic renderer for the shapes world: one shape on a plain or faintly textured background.

Images are 32x32 RGB, drawn on a 2x supersampled grid and box-filtered down so that edges are
anti-aliased (a generative model then learns smooth shapes, not aliasing). Every random choice comes
from the `numpy.random.Generator` passed in, so `render_batch(scenes, seed)` is a pure function of
its arguments.
"""

from __future__ import annotations

import math

import numpy as np

from unlearning.shapes.vocabulary import COLOUR_NAMES, COLOURS, OBJECTS, STYLES, Scene

IMAGE_SIZE = 32
SUPERSAMPLE = 2
_GRID = IMAGE_SIZE * SUPERSAMPLE
# Pixel-centre coordinates of the supersampled grid, in output-pixel units.
_YS, _XS = np.meshgrid((np.arange(_GRID) + 0.5) / SUPERSAMPLE, (np.arange(_GRID) + 0.5) / SUPERSAMPLE, indexing="ij")

# Shapes whose look changes with rotation get a small tilt only: a square turned 45 degrees is a diamond.
_MAX_TILT_DEGREES = {"square": 15, "diamond": 15, "heart": 15, "cross": 15}
_PALE = 0.62  # how far the secondary colour of a pattern is mixed towards white


def _star_vertices(points: int = 5, inner: float = 0.45) -> np.ndarray:
    angles = -math.pi / 2 + np.arange(2 * points) * math.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


_STAR = _star_vertices()
_TRIANGLE = np.array([[math.cos(a), math.sin(a)] for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)])


def _inside_polygon(u: np.ndarray, v: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Even-odd crossing test, vectorised over points; works for the (non-convex) star."""
    inside = np.zeros(u.shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(vertices, np.roll(vertices, -1, axis=0)):
        crosses = (y0 > v) != (y1 > v)
        x_at_v = x0 + (v - y0) * (x1 - x0) / (y1 - y0 + 1e-12)
        inside ^= crosses & (u < x_at_v)
    return inside


def shape_mask(object_name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of a unit-size shape in its own frame (u right, v down, extent about [-1, 1])."""
    if object_name == "circle":
        return u * u + v * v <= 1.0
    if object_name == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.52**2)
    if object_name == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if object_name == "diamond":
        return np.abs(u) / 0.68 + np.abs(v) <= 1.0
    if object_name == "triangle":
        return _inside_polygon(u, v + 0.15, _TRIANGLE * 1.15)
    if object_name == "star":
        return _inside_polygon(u, v, _STAR * 1.05)
    if object_name == "heart":
        # The classic implicit heart (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0, y pointing up.
        x, y = u * 1.2, -v * 1.2 + 0.15
        return (x * x + y * y - 1.0) ** 3 - x * x * y**3 <= 0.0
    if object_name == "cross":
        arm, length = 0.3, 0.9
        return ((np.abs(u) <= arm) & (np.abs(v) <= length)) | ((np.abs(u) <= length) & (np.abs(v) <= arm))
    raise ValueError(f"unknown object {object_name!r}; known: {', '.join(OBJECTS)}")


def style_mix(style: str, rng: np.random.Generator, cx: float, cy: float, radius: float) -> np.ndarray:
    """Per-pixel weight in [0, 1] of the pale secondary colour (0 = the main colour) on the grid."""
    angle = rng.uniform(0, math.pi)
    along = (_XS - cx) * math.cos(angle) + (_YS - cy) * math.sin(angle)
    across = -(_XS - cx) * math.sin(angle) + (_YS - cy) * math.cos(angle)
    if style == "solid":
        return np.zeros_like(_XS)
    # Striped and checkered must differ in what the UNet's coarse, text-conditioned levels see (an 8x8
    # cell spans 4x4 px), not only in a pattern's orientation near the latent's Nyquist limit. Pale
    # stripes of period 3.6-4.6 px and pale checks of cell 2.6-3.4 px were both half pale at the same
    # radial frequency: the caption carried almost nothing the MSE loss could use (`bench/world_recipe.py
    # textuse`: +0.1-1 % against +14-42 % for striped/dotted) and the base drew either for either about
    # half the time (bench/RESULTS.md, 2026-12-04). So checks are coarse (whole 4x4 blocks pale or not)
    # while stripes stay fine (every block half pale); dots are coarser than they were (polka dots the
    # VAE keeps). Dark checks, tried first, the VAE washes out (it never saw dark fine texture).
    if style == "striped":
        period = rng.uniform(3.6, 4.6)
        return (np.floor((along + rng.uniform(0, period)) / (period / 2)) % 2).astype(np.float64)
    if style == "checkered":
        cell = rng.uniform(5.6, 6.6)
        tilt = rng.uniform(-0.35, 0.35)
        a = (_XS - cx) * math.cos(tilt) + (_YS - cy) * math.sin(tilt) + rng.uniform(0, cell)
        b = -(_XS - cx) * math.sin(tilt) + (_YS - cy) * math.cos(tilt) + rng.uniform(0, cell)
        return ((np.floor(a / cell) + np.floor(b / cell)) % 2).astype(np.float64)
    if style == "dotted":
        spacing, dot = rng.uniform(5.2, 6.0), rng.uniform(1.35, 1.65)
        da = (along + rng.uniform(0, spacing)) % spacing - spacing / 2
        db = (across + rng.uniform(0, spacing)) % spacing - spacing / 2
        return (da * da + db * db <= dot * dot).astype(np.float64)
    if style == "gradient":
        # Dark shade at one side, pale tint at the other; encoded as mix in [-0.6, 1] (negative = darker).
        t = np.clip((along / radius + 1.0) / 2.0, 0.0, 1.0)
        return -0.6 + 1.6 * t
    if style == "speckled":
        # Speckles are whole output pixels, upsampled, so they survive the box filter.
        speckles = (rng.random((IMAGE_SIZE, IMAGE_SIZE)) < 0.35).astype(np.float64)
        return np.kron(speckles, np.ones((SUPERSAMPLE, SUPERSAMPLE)))
    raise ValueError(f"unknown style {style!r}; known: {', '.join(STYLES)}")


def render(scene: Scene, rng: np.random.Generator, *, background_tint: float = 0.0) -> np.ndarray:
    """Render one scene as a (32, 32, 3) uint8 array.

    Args:
        scene: the object, style and colour to draw.
        rng: the source of every random choice (position, size, rotation, pattern phase, background).
        background_tint: largest per-channel shift of the background colour; 0 keeps it grey. Used
            by the detector's augmentation, since generated images often have tinted backgrounds.
    """
    radius = rng.uniform(8.0, 12.5)
    cx = rng.uniform(radius + 0.5, IMAGE_SIZE - radius - 0.5)
    cy = rng.uniform(radius + 0.5, IMAGE_SIZE - radius - 0.5)
    max_tilt = math.radians(_MAX_TILT_DEGREES.get(scene.object, 180))
    theta = rng.uniform(-max_tilt, max_tilt)
    dx, dy = (_XS - cx) / radius, (_YS - cy) / radius
    u = dx * math.cos(theta) + dy * math.sin(theta)
    v = -dx * math.sin(theta) + dy * math.cos(theta)
    mask = shape_mask(scene.object, u, v)

    grey = rng.uniform(0.62, 0.97)
    background = np.full((_GRID, _GRID, 3), grey) + rng.uniform(-0.03, 0.03, size=3)
    if background_tint > 0:
        background += rng.uniform(-background_tint, background_tint, size=3)
    if rng.random() < 0.3:  # a faint textured background: low-amplitude smooth ramp plus grain
        ramp = (_XS * rng.uniform(-1, 1) + _YS * rng.uniform(-1, 1)) / IMAGE_SIZE * 0.08
        background += ramp[..., None] + rng.normal(0, 0.015, size=(_GRID, _GRID, 1))

    main = np.array(COLOURS[scene.colour]) * rng.uniform(0.9, 1.05)
    pale = main * (1 - _PALE) + _PALE
    mix = style_mix(scene.style, rng, cx, cy, radius)[..., None]
    # mix >= 0 blends towards the pale tint; mix < 0 (gradient only) darkens the main colour.
    foreground = np.where(mix >= 0, main * (1 - mix) + pale * mix, main * (1 + mix))

    image = np.where(mask[..., None], foreground, background)
    image = image.reshape(IMAGE_SIZE, SUPERSAMPLE, IMAGE_SIZE, SUPERSAMPLE, 3).mean(axis=(1, 3))
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """The generator for image `index` of a batch seeded with `seed` (independent of batch size)."""
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def random_scenes(n: int, seed: int) -> list[Scene]:
    """n scenes with attributes drawn uniformly, deterministically from seed."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5CE7E]))
    return [
        Scene(OBJECTS[o], STYLES[s], COLOUR_NAMES[c])
        for o, s, c in zip(
            rng.integers(len(OBJECTS), size=n),
            rng.integers(len(STYLES), size=n),
            rng.integers(len(COLOUR_NAMES), size=n),
        )
    ]


def render_batch(scenes: list[Scene], seed: int, *, background_tint: float = 0.0) -> np.ndarray:
    """Render scenes as an (N, 32, 32, 3) uint8 array; image i depends only on (seed, i, scenes[i])."""
    return np.stack([render(s, scene_rng(seed, i), background_tint=background_tint) for i, s in enumerate(scenes)])
