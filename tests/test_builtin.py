"""cnnlab.data.builtin: deterministic synthetic shapes and the bundled digits."""

from __future__ import annotations

import time

import numpy as np
import pytest

from cnnlab.data.builtin import SHAPE_CLASSES, load_digits_images, make_shapes
from cnnlab.errors import CnnlabError


def test_make_shapes_shapes_dtypes_and_names():
    x, y, names = make_shapes(n=60, size=40, classes=4, seed=1)
    assert x.shape == (60, 40, 40, 3) and x.dtype == np.uint8 and x.flags.c_contiguous
    assert y.shape == (60,) and y.dtype == np.int64
    assert names == ["circle", "square", "triangle", "cross"]
    assert set(np.unique(y)) == {0, 1, 2, 3}


def test_make_shapes_is_deterministic():
    a = make_shapes(n=50, size=32, seed=7)
    b = make_shapes(n=50, size=32, seed=7)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    c = make_shapes(n=50, size=32, seed=8)
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[1], c[1])


def test_make_shapes_does_not_use_global_rng():
    np.random.seed(0)
    a = make_shapes(n=10, size=24, seed=3)[0]
    np.random.seed(123)
    np.random.rand(17)
    b = make_shapes(n=10, size=24, seed=3)[0]
    assert np.array_equal(a, b)


@pytest.mark.parametrize("n,classes", [(1200, 4), (7, 3), (100, 6), (2, 2)])
def test_make_shapes_balanced(n, classes):
    _, y, names = make_shapes(n=n, size=16, classes=classes, seed=0)
    counts = np.bincount(y, minlength=classes)
    assert len(counts) == classes == len(names)
    assert counts.max() - counts.min() <= 1
    assert names == list(SHAPE_CLASSES[:classes])


def test_make_shapes_is_shuffled():
    _, y, _ = make_shapes(n=200, size=16, classes=4, seed=0)
    assert not np.array_equal(y, np.arange(200) % 4)


def test_make_shapes_all_six_classes_and_noise_option():
    x, y, names = make_shapes(n=30, size=32, classes=6, seed=2, noise=0.0)
    assert names == ["circle", "square", "triangle", "cross", "star", "ring"]
    # Without noise each image is exactly two colours, up to anti-aliased edges: the border row
    # (background, the shape never touches it) is one flat colour.
    for img in x:
        border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
        assert (border == border[0]).all()
    xn, _, _ = make_shapes(n=30, size=32, classes=6, seed=2, noise=0.2)
    assert np.abs(xn.astype(int) - x.astype(int)).mean() > 10


def test_make_shapes_shape_is_visible_and_sized():
    # Without noise, the fraction of pixels that differ from the background colour is the
    # shape's area: it must be neither empty nor fill the image.
    x, y, names = make_shapes(n=120, size=64, classes=6, seed=4, noise=0.0)
    frac = (np.abs(x.astype(int) - x[:, :1, :1, :].astype(int)).sum(-1) > 0).mean(axis=(1, 2))
    assert frac.min() > 0.01
    assert frac.max() < 0.45


def test_make_shapes_rejects_bad_arguments():
    for kw in ({"classes": 1}, {"classes": 7}, {"n": 0}, {"size": 2}, {"noise": -1}):
        with pytest.raises(CnnlabError):
            make_shapes(**kw)


def test_make_shapes_is_fast():
    make_shapes(n=20, size=64)  # warm-up (imports, allocator)
    t = time.perf_counter()
    make_shapes(n=1200, size=64)
    # Typically ~0.3 s; the bound leaves room for a shared, busy CI machine.
    assert time.perf_counter() - t < 4.0


def _radial_profile_features(x: np.ndarray) -> np.ndarray:
    """Translation/rotation/scale/colour-invariant shape descriptor of each image.

    Segment the shape (3x3 box blur, colour distance from the median border colour, threshold at
    half the 99th percentile), then histogram the mask pixels' distances from the mask centroid,
    in units of sqrt(area): a circle, a square, a triangle and a cross give different profiles.
    """
    n, s = x.shape[:2]
    f = np.pad(x.astype(np.float32), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    b = sum(f[:, i : i + s, j : j + s] for i in range(3) for j in range(3)) / 9
    border = np.concatenate([b[:, 0], b[:, -1], b[:, :, 0], b[:, :, -1]], axis=1)
    d = np.sqrt(((b - np.median(border, axis=1)[:, None, None, :]) ** 2).sum(-1))
    mask = d > 0.5 * np.percentile(d.reshape(n, -1), 99, axis=1)[:, None, None]
    yy, xx = np.mgrid[0:s, 0:s]
    area = mask.sum((1, 2)).astype(float) + 1
    cy = (mask * yy).sum((1, 2)) / area
    cx = (mask * xx).sum((1, 2)) / area
    r = np.hypot(yy - cy[:, None, None], xx - cx[:, None, None]) / np.sqrt(area)[:, None, None]
    return np.array(
        [np.histogram(r[i][mask[i]], bins=12, range=(0, 1.2))[0] / area[i] for i in range(n)]
    )


def test_make_shapes_classes_are_separable():
    from sklearn.linear_model import LogisticRegression

    x, y, _ = make_shapes(n=600, size=32, classes=4, seed=0)
    f = _radial_profile_features(x)
    clf = LogisticRegression(max_iter=1000, C=10.0).fit(f[:450], y[:450])
    acc = clf.score(f[450:], y[450:])
    assert acc > 0.6, acc  # chance is 0.25; about 0.8 in practice


def test_load_digits_images_matches_sklearn():
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y, names = load_digits_images(size=32)
    assert x.shape == (1797, 32, 32, 1) and x.dtype == np.uint8
    assert y.dtype == np.int64 and np.array_equal(y, d.target)
    assert names == [str(i) for i in range(10)]
    assert x.max() == 255 and x.min() == 0
    # Downsampling back to 8x8 resembles the original (values scaled to 0..255).
    small = x[:, :, :, 0].astype(float).reshape(1797, 8, 4, 8, 4).mean((2, 4))
    orig = d.images * (255.0 / 16.0)
    assert np.corrcoef(small.ravel(), orig.ravel())[0, 1] > 0.9

    x8, y8, _ = load_digits_images(size=8)
    assert x8.shape == (1797, 8, 8, 1)
    assert np.array_equal(x8[..., 0], np.rint(d.images * 255 / 16).astype(np.uint8))
