"""cnnlab.data.images: decoding of every mode/format, orientation, and one-line DataErrors."""

from __future__ import annotations

import builtins
import io
import os
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from cnnlab.data.images import (
    IMAGE_EXTENSIONS,
    MAX_IMAGE_PIXELS,
    ImageReadError,
    is_image_file,
    load_image,
    load_images,
    open_image,
    pillow_open,
)
from cnnlab.errors import DataError

COLOUR = (200, 40, 70)


def solid(mode="RGB", size=(32, 24), colour=COLOUR):
    return Image.new(mode, size, colour)


def save(im: Image.Image, path, **kw):
    im.save(path, **kw)
    return path


def assert_colour(arr, colour, tol=8):
    mean = arr.reshape(-1, arr.shape[-1]).mean(axis=0)
    assert np.all(np.abs(mean - np.asarray(colour, dtype=float)) <= tol), (mean, colour)


def assert_one_line_error(excinfo, path, *words):
    msg = str(excinfo.value)
    assert isinstance(excinfo.value, DataError)
    assert "\n" not in msg
    assert str(path) in msg
    for w in words:
        assert w in msg.lower(), msg


def png_header_only(path, width, height):
    """A PNG whose IHDR claims width x height but that holds (almost) no pixel data."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
    data += chunk(b"IEND", b"")
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    "ext,kw,tol",
    [
        (".jpg", {"quality": 95}, 6),
        (".png", {}, 0),
        (".bmp", {}, 0),
        (".gif", {}, 12),
        (".webp", {"quality": 95}, 8),
        (".tiff", {}, 0),
    ],
)
def test_rgb_formats_load_with_shape_and_colour(tmp_path, ext, kw, tol):
    p = save(solid(size=(40, 30)), tmp_path / f"a{ext}", **kw)
    im = open_image(p)
    assert im.mode == "RGB" and im.size == (40, 30)
    a = load_image(p, None)
    assert a.dtype == np.uint8 and a.shape == (30, 40, 3)
    assert_colour(a, COLOUR, tol)
    b = load_image(p, (16, 20))
    assert b.shape == (16, 20, 3)
    assert_colour(b, COLOUR, tol)


def test_uppercase_extension_and_path_object(tmp_path):
    p = save(solid(), tmp_path / "UP.JPG", quality=95)
    assert load_image(str(p), (8, 8)).shape == (8, 8, 3)
    assert load_image(p, (8, 8)).shape == (8, 8, 3)


def test_cmyk_jpeg(tmp_path):
    p = save(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), tmp_path / "cmyk.jpg", quality=95)
    with Image.open(p) as raw:
        assert raw.mode == "CMYK"
    a = load_image(p, (16, 16))
    assert a.shape == (16, 16, 3)
    assert_colour(a, (255, 0, 0), 10)


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    arr = np.zeros((8, 12), dtype=np.uint16)
    arr[:, :4] = 65535
    arr[:, 4:8] = 32768
    arr[:, 8:] = 257 * 10
    im16 = Image.fromarray(arr)
    assert im16.mode.startswith("I;16")
    p = save(im16, tmp_path / "deep.png")
    with Image.open(p) as raw:
        assert raw.mode in ("I;16", "I")  # Pillow < 10.? opened 16-bit grey PNGs as "I"
    for channels in (1, 3):
        a = load_image(p, None, channels=channels)
        assert a.shape == (8, 12, channels)
        assert np.all(a[:, :4] == 255)
        assert np.all(np.abs(a[:, 4:8].astype(int) - 128) <= 1)
        assert np.all(a[:, 8:] == 10)


def test_32bit_int_and_float_tiff(tmp_path):
    ai = np.full((6, 6), 65535, dtype=np.int32)
    ai[:3] = 0
    p = save(Image.fromarray(ai), tmp_path / "int.tif")
    a = load_image(p, None, channels=1)
    assert a[0, 0, 0] == 0 and a[-1, 0, 0] == 255

    af = np.full((6, 6), 1.0, dtype=np.float32)
    af[:3] = 0.5
    p = save(Image.fromarray(af), tmp_path / "float.tif")
    a = load_image(p, None, channels=3)
    assert a.shape == (6, 6, 3)
    assert a[-1, 0, 0] == 255 and abs(int(a[0, 0, 0]) - 128) <= 1


def test_palette_png_with_transparency_becomes_white(tmp_path):
    im = Image.new("P", (10, 10), 0)
    im.putpalette([0, 0, 0] + [255, 0, 0] + [0] * (254 * 3))
    im.paste(1, (5, 0, 10, 10))  # right half red, left half index 0 (transparent)
    p = save(im, tmp_path / "pal.png", transparency=0)
    a = load_image(p, None)
    assert np.all(a[:, :5] == 255)  # transparent -> white, not black
    assert np.all(a[:, 5:] == (255, 0, 0))
    g = load_image(p, None, channels=1)
    assert g.shape == (10, 10, 1) and np.all(g[:, :5] == 255)


def test_rgba_and_la_alpha_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (8, 8), (0, 0, 255, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 4, 8))
    rgba.paste((0, 0, 0, 128), (4, 0, 8, 8))
    p = save(rgba, tmp_path / "rgba.png")
    a = load_image(p, None)
    assert np.all(a[:, :4] == (0, 0, 255))
    assert np.all(np.abs(a[:, 4:].astype(int) - 127) <= 1)  # 50% black over white

    la = Image.new("LA", (4, 4), (0, 0))
    p = save(la, tmp_path / "la.png")
    assert np.all(load_image(p, None, channels=1) == 255)


def test_grey_to_rgb_and_rgb_to_grey(tmp_path):
    p = save(Image.new("L", (9, 7), 100), tmp_path / "grey.png")
    a = load_image(p, None)
    assert a.shape == (7, 9, 3) and np.all(a == 100)
    p = save(Image.new("RGB", (9, 7), (255, 0, 0)), tmp_path / "red.png")
    g = load_image(p, None, channels=1)
    assert g.shape == (7, 9, 1)
    assert abs(int(g[0, 0, 0]) - 76) <= 1  # ITU-R 601 luma of pure red
    assert open_image(p, channels=1).mode == "L"


def test_bilevel_png(tmp_path):
    im = Image.new("1", (8, 8), 0)
    im.paste(1, (0, 0, 4, 8))
    a = load_image(save(im, tmp_path / "bw.png"), None)
    assert np.all(a[:, :4] == 255) and np.all(a[:, 4:] == 0)


def _oriented_jpeg(path, size=(40, 20), orientation=6, block=8):
    """Blue image with a red block in the stored top-left corner, tagged with `orientation`."""
    im = Image.new("RGB", size, (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, block, block))
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(path, quality=95, exif=exif.tobytes())
    return path


def _is_red(px):
    return px[0] > 180 and px[2] < 80


def test_exif_orientation_is_applied(tmp_path):
    p = _oriented_jpeg(tmp_path / "rot.jpg")  # 40 wide x 20 high, "rotate 90 CW to display"
    im = open_image(p)
    assert im.size == (20, 40)  # now 20 wide x 40 high
    a = np.asarray(im)
    assert a.shape == (40, 20, 3)
    assert _is_red(a[2, -3])  # stored top-left ends up at the top-right
    assert not _is_red(a[2, 2]) and not _is_red(a[-3, -3]) and not _is_red(a[-3, 2])


def test_exif_orientation_with_resize_and_draft(tmp_path):
    p = _oriented_jpeg(tmp_path / "rot_big.jpg", size=(800, 400), block=160)
    a = load_image(p, (40, 20))  # (H, W) of the displayed image
    assert a.shape == (40, 20, 3)
    assert _is_red(a[3, -3])
    assert not _is_red(a[3, 3]) and not _is_red(a[-3, -3])


def test_jpeg_draft_downscale_matches_full_decode(tmp_path):
    # A smooth gradient with some structure: drafted (DCT-scaled) decode must stay close to a
    # full decode followed by the same resize.
    yy, xx = np.mgrid[0:600, 0:900]
    arr = np.stack(
        [xx * 255 // 899, yy * 255 // 599, ((xx // 60 + yy // 60) % 2) * 255], axis=-1
    ).astype(np.uint8)
    p = save(Image.fromarray(arr), tmp_path / "grad.jpg", quality=95)
    fast = load_image(p, (64, 64)).astype(float)
    with Image.open(p) as raw:
        ref = np.asarray(raw.convert("RGB").resize((64, 64), Image.BILINEAR, reducing_gap=2.0))
    assert np.abs(fast - ref).mean() < 4
    grey = load_image(p, (64, 64), channels=1)
    assert grey.shape == (64, 64, 1)
    ref_l = np.asarray(Image.fromarray(ref).convert("L"), dtype=float)
    assert np.abs(grey[..., 0] - ref_l).mean() < 4


def test_animated_gif_and_webp_give_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    for ext in (".gif", ".webp"):
        p = tmp_path / f"anim{ext}"
        frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, loop=0)
        with Image.open(p) as raw:
            assert getattr(raw, "n_frames", 1) == 3
        a = load_image(p, (8, 8))
        assert a.shape == (8, 8, 3)
        assert_colour(a, (255, 0, 0), 12)


def test_size_argument_squashes_to_exact_shape(tmp_path):
    p = save(solid(size=(100, 20)), tmp_path / "wide.png")
    assert load_image(p, (50, 50)).shape == (50, 50, 3)
    assert load_image(p, [7, 300], channels=1).shape == (7, 300, 1)
    with pytest.raises(ValueError):
        load_image(p, (0, 5))
    with pytest.raises(ValueError):
        load_image(p, (5, 5), channels=2)


# --------------------------------------------------------------------------- failures


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    p = png_header_only(tmp_path / "bomb.png", 10000, 10000)
    with pytest.raises(DataError) as ei:
        open_image(p, max_pixels=1_000_000)
    assert_one_line_error(ei, p, "pixels")
    # Default cap (64 M) also applies; Pillow's own warning (> ~89 M) must not leak out.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(DataError) as ei:
            load_image(p, (8, 8))
    assert_one_line_error(ei, p, "pixels")
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert MAX_IMAGE_PIXELS == 64_000_000


def test_pillow_decompression_bomb_error_becomes_data_error(tmp_path):
    p = png_header_only(tmp_path / "huge.png", 30000, 30000)  # > 2x Pillow's limit
    with pytest.raises(DataError) as ei:
        open_image(p, max_pixels=10**12)
    assert_one_line_error(ei, p, "pixels")


def test_truncated_jpeg(tmp_path):
    rng = np.random.default_rng(0)
    good = save(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)),
                tmp_path / "good.jpg", quality=90)
    data = good.read_bytes()
    p = tmp_path / "half.jpg"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as ei:
        load_image(p, (32, 32))
    assert_one_line_error(ei, p, "truncated")
    with pytest.raises(DataError):
        open_image(p)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(DataError) as ei:
        open_image(p)
    assert_one_line_error(ei, p, "empty", "0 bytes")


def test_text_file_named_jpg(tmp_path):
    p = tmp_path / "x.jpg"
    p.write_text("this is not an image\n")
    with pytest.raises(DataError) as ei:
        load_image(p, (8, 8))
    assert_one_line_error(ei, p, "not an image", "cannot identify image file")


def test_missing_path_and_directory(tmp_path):
    p = tmp_path / "nope.png"
    with pytest.raises(DataError) as ei:
        open_image(p)
    assert_one_line_error(ei, p, "not found")
    d = tmp_path / "dir.jpg"
    d.mkdir()
    with pytest.raises(DataError) as ei:
        load_image(d, (4, 4))
    assert_one_line_error(ei, d, "directory")


def test_permission_denied(tmp_path, monkeypatch):
    p = save(solid(), tmp_path / "secret.png")
    real_open = builtins.open

    def guarded_open(file, *a, **kw):
        if os.fspath(file) == str(p):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *a, **kw)

    monkeypatch.setattr(builtins, "open", guarded_open)
    with pytest.raises(DataError) as ei:
        open_image(p)
    assert_one_line_error(ei, p, "permission denied")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores modes")
def test_permission_denied_real_chmod(tmp_path):
    p = save(solid(), tmp_path / "locked.png")
    p.chmod(0)
    try:
        with pytest.raises(DataError) as ei:
            open_image(p)
        assert_one_line_error(ei, p, "permission denied")
    finally:
        p.chmod(0o644)


def test_newline_in_file_name_keeps_message_on_one_line(tmp_path):
    p = tmp_path / "bad\nname.jpg"
    p.write_bytes(b"")
    with pytest.raises(DataError) as ei:
        open_image(p)
    assert "\n" not in str(ei.value)


def test_corrupt_png_body(tmp_path):
    yy, xx = np.mgrid[0:128, 0:128]
    arr = np.stack([xx * 2, yy * 2, (xx * yy) % 256], axis=-1).astype(np.uint8)
    good = save(Image.fromarray(arr), tmp_path / "ok.png")
    data = bytearray(good.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 40] = b"\xa5" * 40  # garbage inside the deflate stream of IDAT
    p = tmp_path / "corrupt.png"
    p.write_bytes(bytes(data))
    with pytest.raises(DataError) as ei:
        load_image(p, (16, 16))
    assert_one_line_error(ei, p)
    assert isinstance(ei.value, ImageReadError) and ei.value.reason


# --------------------------------------------------------------------------- many files


def test_load_images_mixed_good_and_bad(tmp_path):
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    paths = []
    for i, c in enumerate(colours):
        paths.append(save(Image.new("RGB", (20 + i, 30), c), tmp_path / f"{i}.png"))
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "text.jpg"
    text.write_text("hello")
    missing = tmp_path / "missing.png"
    mixed = [paths[0], empty, paths[1], paths[2], text, paths[3], missing, paths[4]]

    for workers in (None, 1, 2, 4):
        arr, ok, bad = load_images(mixed, (12, 10), workers=workers)
        assert arr.shape == (5, 12, 10, 3) and arr.dtype == np.uint8
        assert ok == [0, 2, 3, 5, 7]
        for k, c in enumerate(colours):
            assert_colour(arr[k], c, 1)
        assert [b[0] for b in bad] == [str(empty), str(text), str(missing)]
        assert "0 bytes" in bad[0][1] and "cannot identify" in bad[1][1]
        assert "not found" in bad[2][1]
        assert all("\n" not in r for _, r in bad)

    with pytest.raises(DataError) as ei:
        load_images(mixed, (12, 10), workers=2, on_error="raise")
    assert str(empty) in str(ei.value)
    with pytest.raises(ValueError):
        load_images(mixed, (12, 10), on_error="ignore")


def test_load_images_order_with_many_files_and_grey(tmp_path):
    paths = []
    for i in range(40):
        paths.append(save(Image.new("L", (16, 16), i * 5), tmp_path / f"g{i:02d}.jpg", quality=95))
    arr, ok, bad = load_images(paths, (8, 8), channels=1, workers=3)
    assert arr.shape == (40, 8, 8, 1) and ok == list(range(40)) and bad == []
    means = arr.reshape(40, -1).mean(axis=1)
    assert np.all(np.abs(means - np.arange(40) * 5) <= 2)


def test_load_images_empty_list():
    arr, ok, bad = load_images([], (4, 5))
    assert arr.shape == (0, 4, 5, 3) and ok == [] and bad == []


def test_load_images_all_bad(tmp_path):
    arr, ok, bad = load_images([tmp_path / "a.png", tmp_path / "b.png"], (4, 4), channels=1)
    assert arr.shape == (0, 4, 4, 1) and ok == [] and len(bad) == 2


# --------------------------------------------------------------------------- names


def test_is_image_file():
    for name in ("a.jpg", "b.JPEG", "dir/c.png", "d.bmp", "e.gif", "f.webp", "g.tif", "h.TIFF", "i.jfif", "j.HEIC", "k.avif"):
        assert is_image_file(name), name
    for name in (".DS_Store", "Thumbs.db", "._a.jpg", "dir/._b.png", ".hidden.png", "a.txt",
                 "noext", "a.jpg.txt", "desktop.ini", "layers.psd", "page.pdf", "vector.svg"):
        assert not is_image_file(name), name
    assert {".jpg", ".png", ".webp"} <= IMAGE_EXTENSIONS


def test_gif_and_grey_png_transparency_become_white(tmp_path):
    im = Image.new("P", (10, 10), 0)
    im.putpalette([0, 0, 0] + [0, 128, 0] + [0] * (254 * 3))
    im.paste(1, (0, 0, 5, 10))  # left half green, right half index 0 (transparent)
    p = save(im, tmp_path / "t.gif", transparency=0)
    a = load_image(p, None)
    assert np.all(a[:, 5:] == 255)
    assert_colour(a[:, :5], (0, 128, 0), 2)

    grey = Image.new("L", (6, 6), 7)
    grey.paste(200, (0, 0, 3, 6))
    p = save(grey, tmp_path / "trns.png", transparency=7)
    a = load_image(p, None, channels=1)
    assert np.all(a[:, :3] == 200) and np.all(a[:, 3:] == 255)


# --------------------------------------------------------------------------- formats beyond jpg/png


def write_heic(im: Image.Image, path):
    import pillow_heif  # dev dependency: pi-heif, which cnnlab reads HEIC with, cannot encode

    pillow_heif.from_pillow(im).save(path, quality=95)
    return path


# every extension cnnlab takes as an image, with the Pillow format that writes it (None: pillow-heif)
WRITERS = {".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".jfif": "JPEG", ".png": "PNG", ".apng": "PNG",
           ".bmp": "BMP", ".dib": "DIB", ".gif": "GIF", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF",
           ".avif": "AVIF", ".heic": None, ".heif": None, ".hif": None, ".jp2": "JPEG2000", ".j2k": "JPEG2000",
           ".jpx": "JPEG2000", ".tga": "TGA", ".qoi": "QOI", ".ppm": "PPM", ".pgm": "PPM", ".pbm": "PPM", ".pnm": "PPM"}


def test_every_image_extension_is_tested():
    assert set(WRITERS) == IMAGE_EXTENSIONS


@pytest.mark.parametrize("ext", sorted(WRITERS))
def test_each_image_extension_decodes_to_its_colour(tmp_path, ext):
    path = tmp_path / f"photo{ext}"
    if ext == ".pbm":  # 1-bit: black and white only
        save(Image.new("1", (32, 24), 1), path, format="PPM")
        colour = (255, 255, 255)
    else:
        im, colour = solid(), COLOUR
        write_heic(im, path) if WRITERS[ext] is None else save(im, path, format=WRITERS[ext])
    assert is_image_file(path)
    a = load_image(path, (12, 16))
    assert a.shape == (12, 16, 3) and a.dtype == np.uint8
    assert_colour(a, colour, tol=10)


def test_heic_is_recognised_by_its_content_whatever_its_name(tmp_path):
    """A HEIC photo renamed .jpg (or uploaded without a name) opens from its 'ftyp' box."""
    path = write_heic(solid(colour=(30, 90, 200)), tmp_path / "renamed.heic")
    assert_colour(load_image(path.rename(tmp_path / "renamed.jpg"), None), (30, 90, 200), tol=10)
    assert pillow_open(io.BytesIO((tmp_path / "renamed.jpg").read_bytes())).size == (32, 24)


def test_heic_without_pi_heif_names_the_package(tmp_path, monkeypatch):
    import cnnlab.data.images as images

    path = write_heic(solid(), tmp_path / "a.heic")
    real_import = builtins.__import__

    def no_pi_heif(name, *args, **kwargs):
        if name == "pi_heif":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pi_heif)
    monkeypatch.setattr(images, "_heif_available", None)
    monkeypatch.setattr(Image, "OPEN", {k: v for k, v in Image.OPEN.items() if k != "HEIF"})  # as if never registered
    monkeypatch.setattr(Image, "ID", [k for k in Image.ID if k != "HEIF"])
    with pytest.raises(ImageReadError) as e:
        load_image(path, None)
    msg = str(e.value)
    assert "a.heic" in msg and "pip install pi-heif" in msg and "\n" not in msg
