"""Built-in datasets that work offline: synthetic shapes and scikit-learn's bundled digits.

`make_shapes` is deterministic: the same arguments give bit-identical arrays on any machine
(numpy's ``Generator(PCG64(seed))`` for every random number, integer pixel coordinates for Pillow's
rasteriser, no global RNG state).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from cnnlab.errors import ConfigError

__all__ = ["SHAPE_CLASSES", "make_shapes", "load_digits_images"]

SHAPE_CLASSES = ("circle", "square", "triangle", "cross", "star", "ring")

# Shape extent (circumscribed diameter) as a fraction of the image side.
_MIN_EXTENT, _MAX_EXTENT = 0.25, 0.60
# Shapes are drawn at this multiple of the output size, then box-downsampled (anti-aliasing).
_SUPERSAMPLE = 2
# Minimum luma (ITU-R 601) difference between background and shape colours.
_MIN_CONTRAST = 70.0
_LUMA = np.array([0.299, 0.587, 0.114])


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[int, int]]:
    """Vertices (rounded to ints: exact, platform-independent rasterising) of a rotated shape."""
    if kind == "square":
        t = np.arange(4) * (np.pi / 2) + np.pi / 4
        rad = np.full(4, r)
    elif kind == "triangle":
        t = np.arange(3) * (2 * np.pi / 3) - np.pi / 2
        rad = np.full(3, r)
    elif kind == "star":
        t = np.arange(10) * (np.pi / 5) - np.pi / 2
        rad = np.where(np.arange(10) % 2 == 0, r, 0.42 * r)
    elif kind == "cross":
        a = r / np.sqrt(1 + (1 / 3) ** 2)  # arm half-length so the outer corners touch r
        b = a / 3  # arm half-width
        pts = np.array(
            [(b, a), (b, b), (a, b), (a, -b), (b, -b), (b, -a),
             (-b, -a), (-b, -b), (-a, -b), (-a, b), (-b, b), (-b, a)]
        )
        c, s = np.cos(angle), np.sin(angle)
        x = cx + pts[:, 0] * c - pts[:, 1] * s
        y = cy + pts[:, 0] * s + pts[:, 1] * c
        return [(int(u), int(v)) for u, v in zip(np.rint(x), np.rint(y))]
    else:  # pragma: no cover - guarded by the caller
        raise ValueError(kind)
    x = cx + rad * np.cos(t + angle)
    y = cy + rad * np.sin(t + angle)
    return [(int(u), int(v)) for u, v in zip(np.rint(x), np.rint(y))]


def _contrasting_colours(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Random background and fill colours whose luma differs by at least _MIN_CONTRAST."""
    bg = rng.integers(0, 256, size=(n, 3))
    fg = rng.integers(0, 256, size=(n, 3))
    todo = np.abs((fg - bg) @ _LUMA) < _MIN_CONTRAST
    while todo.any():  # rejection sampling, vectorised; deterministic for a given seed
        fg[todo] = rng.integers(0, 256, size=(int(todo.sum()), 3))
        todo = np.abs((fg - bg) @ _LUMA) < _MIN_CONTRAST
    return bg, fg


def make_shapes(
    n: int = 1200,
    size: int = 64,
    classes: int = 4,
    seed: int = 0,
    noise: float = 0.1,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Synthetic images of one coloured shape each: x uint8 (n, size, size, 3), y int64 (n,), names.

    The classes are the first `classes` (2..6) of "circle", "square", "triangle", "cross", "star",
    "ring". Each image has a random background colour, one shape of random size (25-60% of the
    image), position (fully inside), rotation and contrasting colour, and gaussian pixel noise with
    standard deviation ``noise * 255``. Classes are balanced (``y = i % classes``, shuffled).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"make_shapes: n must be a positive integer, got {n!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8:
        raise ConfigError(f"make_shapes: size must be an integer >= 8, got {size!r}")
    if isinstance(classes, bool) or not isinstance(classes, (int, np.integer)) or not (
        2 <= classes <= len(SHAPE_CLASSES)
    ):
        raise ConfigError(
            f"make_shapes: classes must be between 2 and {len(SHAPE_CLASSES)}, got {classes!r}"
        )
    try:
        noise = float(noise)
    except (TypeError, ValueError):
        raise ConfigError(f"make_shapes: noise must be a number >= 0, got {noise!r}") from None
    if not (noise >= 0.0 and np.isfinite(noise)):
        raise ConfigError(f"make_shapes: noise must be a number >= 0, got {noise!r}")
    n, size, classes = int(n), int(size), int(classes)

    rng = np.random.Generator(np.random.PCG64(seed))
    names = list(SHAPE_CLASSES[:classes])
    y = (np.arange(n) % classes).astype(np.int64)
    y = y[rng.permutation(n)]

    # All random parameters are drawn up front, vectorised, in a fixed order.
    bg, fg = _contrasting_colours(rng, n)
    extent = rng.uniform(_MIN_EXTENT, _MAX_EXTENT, size=n)  # fraction of the side
    ux = rng.uniform(0.0, 1.0, size=n)
    uy = rng.uniform(0.0, 1.0, size=n)
    angle = rng.uniform(0.0, 2 * np.pi, size=n)
    ring_width = rng.uniform(0.25, 0.4, size=n)  # fraction of the ring's outer radius

    ss = size * _SUPERSAMPLE
    x = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        kind = names[y[i]]
        r = extent[i] * ss / 2
        margin = r + _SUPERSAMPLE  # keep the whole shape inside, with a pixel to spare
        cx = margin + ux[i] * (ss - 2 * margin)
        cy = margin + uy[i] * (ss - 2 * margin)
        colour = tuple(int(v) for v in fg[i])
        im = Image.new("RGB", (ss, ss), tuple(int(v) for v in bg[i]))
        draw = ImageDraw.Draw(im)
        if kind in ("circle", "ring"):
            box = [int(round(cx - r)), int(round(cy - r)), int(round(cx + r)), int(round(cy + r))]
            draw.ellipse(box, fill=colour)
            if kind == "ring":
                ri = r * (1.0 - ring_width[i])
                inner = [
                    int(round(cx - ri)), int(round(cy - ri)),
                    int(round(cx + ri)), int(round(cy + ri)),
                ]
                draw.ellipse(inner, fill=tuple(int(v) for v in bg[i]))
        else:
            draw.polygon(_polygon(kind, cx, cy, r, angle[i]), fill=colour)
        if _SUPERSAMPLE > 1:
            im = im.reduce(_SUPERSAMPLE)
        x[i] = np.asarray(im)

    if noise > 0:
        # Noise in float32 chunks (bounded memory); the values depend only on the seed.
        chunk = max(1, 4_000_000 // (size * size * 3))
        for s in range(0, n, chunk):
            part = x[s : s + chunk]
            z = rng.standard_normal(part.shape, dtype=np.float32)
            z *= np.float32(noise * 255.0)
            z += part
            np.rint(z, out=z)
            np.clip(z, 0, 255, out=z)
            part[...] = z.astype(np.uint8)
    return x, y, names


def load_digits_images(size: int = 32) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """scikit-learn's bundled 8x8 digits (no download) as x uint8 (1797, size, size, 1), y int64.

    Values 0..16 are scaled to 0..255 and each image is upsampled bilinearly (Pillow) to
    size x size. Class names are "0".."9".
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8:
        raise ConfigError(f"load_digits_images: size must be an integer >= 8, got {size!r}")
    from sklearn.datasets import load_digits

    digits = load_digits()
    imgs = np.rint(np.asarray(digits.images, dtype=np.float64) * (255.0 / 16.0))
    imgs = np.clip(imgs, 0, 255).astype(np.uint8)
    size = int(size)
    x = np.empty((len(imgs), size, size, 1), dtype=np.uint8)
    for i, a in enumerate(imgs):
        im = Image.fromarray(a, "L")
        if size != a.shape[0]:
            im = im.resize((size, size), Image.BILINEAR)
        x[i, :, :, 0] = np.asarray(im)
    y = np.asarray(digits.target, dtype=np.int64)
    return x, y, [str(d) for d in range(10)]
