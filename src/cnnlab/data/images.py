"""Safe image decoding for image-folder datasets and for `predict` on user files.

Everything that can go wrong with a user's file (missing, a directory, unreadable, empty, not an
image, truncated/corrupt, too many pixels) is raised as a `DataError` (an `ImageReadError`) with one
line naming the file and the reason; Pillow's own exceptions never escape.

Decoding rules (`open_image`):

* the file is fully loaded (lazy Pillow images would fail later, far from the cause);
* the pixel count is checked against `max_pixels` right after the header is read, before any
  pixel data is decoded (Pillow's DecompressionBombError/Warning also become a `DataError`);
* the EXIF orientation tag is applied, animated GIF/WebP/PNG give their first frame;
* any mode becomes "RGB" (``channels=3``) or "L" (``channels=1``): transparency is composited on
  white, 16-bit data is scaled to 8 bits (65535 -> 255), CMYK/YCbCr/palette/1-bit are converted.

Fitting to the model's size (`fit_image`, the one place every path does it: training folders, streamed
batches, predict, serve, arrays of another shape): ``resize`` = "squash" stretches the whole image to
H x W, "crop" takes the largest centred box of the target's aspect ratio (a square for N x N) and
resizes that, "pad" resizes the whole image to fit inside H x W and centres it on a canvas of `PAD_RGB`
(letterbox). All three use bilinear filtering with a reducing gap, as squashing always did.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cnnlab.config import DEFAULT_RESIZE, RESIZES
from cnnlab.errors import ConfigError, DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "HEIF_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "ImageReadError",
    "open_image",
    "fit_image",
    "check_resize",
    "PAD_RGB",
    "load_image",
    "load_images",
    "check_image_header",
    "is_image_file",
    "filter_image_files",
]

# Raster formats Pillow decodes, by file extension: photos as phones, browsers and cameras save them
# (.jfif/.jpe downloads, .avif, Apple's .heic/.heif through pi-heif), and the common lossless and
# scientific ones. Multi-layer or vector formats (.psd, .eps, .pdf, .svg) are not images here.
IMAGE_EXTENSIONS = {
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".bmp", ".dib", ".gif", ".webp", ".tif", ".tiff",
    ".avif", ".heic", ".heif", ".hif", ".jp2", ".j2k", ".jpx", ".tga", ".qoi", ".ppm", ".pgm", ".pbm", ".pnm",
}
HEIF_EXTENSIONS = {".heic", ".heif", ".hif"}
MAX_IMAGE_PIXELS = 64_000_000  # decompression-bomb cap (Pillow's own warning starts at ~89 M)

# Files that carry an image extension but are never images (OS metadata).
_IGNORED_NAMES = {"thumbs.db", "desktop.ini"}

# Pillow's bomb check emits a *warning* from Image.open; we capture it with
# warnings.catch_warnings, which swaps process-global state, so Image.open (header only, cheap)
# is serialised behind this lock. Decoding (im.load) runs outside the lock, in parallel.
_OPEN_LOCK = threading.Lock()

# The letterbox colour of resize="pad": the ImageNet mean (0.485, 0.456, 0.406) x 255, rounded, so the bars
# normalise to ~0 for the pretrained backbones (the default recipe) — the value their convolutions' zero padding
# already shows them beyond an image's edge — and are a neutral mid grey for models trained from scratch.
# Greyscale images are padded with its luma as Pillow's "L" conversion computes it.
PAD_RGB = (124, 116, 104)
PAD_GREY = 117

_JPEG_FORMATS = {"JPEG", "MPO"}
# EXIF orientations 5..8 swap width and height.
_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}
_EXIF_ORIENTATION = 0x0112


class ImageReadError(DataError):
    """An image file that cannot be used; `path` and `reason` are kept for reports."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = _one_line(reason)
        super().__init__(f"cannot load image {_one_line(self.path)!s}: {self.reason}")


def _one_line(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _check_channels(channels: int) -> None:
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")


def _check_size(size) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be (height, width), got {size!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return h, w


# --------------------------------------------------------------------------- opening / decoding


def _open_checked(path, max_pixels: int | None) -> Image.Image:
    """Image.open + every pre-decode check; returns a lazy (header-only) image."""
    p = os.fspath(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except PermissionError:
        raise ImageReadError(path, "permission denied") from None
    except (OSError, ValueError) as e:  # ENAMETOOLONG, ELOOP, embedded NUL ...
        raise ImageReadError(path, f"cannot access file ({_os_reason(e)})") from None
    if os.path.isdir(p):
        raise ImageReadError(path, "is a directory, not an image file")
    if st.st_size == 0:
        raise ImageReadError(path, "file is empty (0 bytes)")

    try:
        with _OPEN_LOCK, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            im = pillow_open(p)
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except IsADirectoryError:
        raise ImageReadError(path, "is a directory, not an image file") from None
    except PermissionError:
        raise ImageReadError(path, "permission denied") from None
    except UnidentifiedImageError:
        raise ImageReadError(path, "not an image file (cannot identify image file format)" + _heif_hint(p)) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageReadError(
            path, f"too many pixels ({_bomb_pixels(e)}); refusing a possible decompression bomb"
        ) from None
    except Exception as e:  # a broken header can raise nearly anything inside a plugin
        raise ImageReadError(path, f"corrupt image header ({_exc_reason(e)})") from None
    for w in caught:
        # A bomb warning is superseded by our own `max_pixels` check below; pass others on.
        if not issubclass(w.category, Image.DecompressionBombWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

    width, height = im.size
    pixels = max(1, width) * max(1, height)
    if max_pixels is not None and pixels > max_pixels:
        im.close()
        raise ImageReadError(
            path,
            f"too many pixels ({width}x{height} = {pixels:,} > limit {max_pixels:,}); "
            "refusing a possible decompression bomb",
        )
    return im


_heif_available: bool | None = None  # None: pi-heif not tried yet in this process


def register_heif() -> bool:
    """Teach Pillow HEIC/HEIF (iPhone photos) through pi-heif, once per process; False when it is not installed.

    Not done at import: pi-heif's import takes 0.2-0.7 s, which every command would pay for a format
    most folders never hold."""
    global _heif_available
    if _heif_available is None:
        try:
            import pi_heif  # noqa: PLC0415
        except ImportError:
            _heif_available = False
        else:
            pi_heif.register_heif_opener()
            _heif_available = True
    return _heif_available


def pillow_open(fp) -> Image.Image:
    """Image.open (header only), registering HEIF first when the file looks like one (ISO media 'ftyp' box)."""
    try:
        return Image.open(fp)
    except UnidentifiedImageError:
        if _heif_available is not None or not _looks_like_heif(fp) or not register_heif():
            raise  # a real HEIF opener (or none to be had) already failed on it
    if hasattr(fp, "seek"):
        fp.seek(0)
    return Image.open(fp)


def _looks_like_heif(fp) -> bool:
    try:
        if hasattr(fp, "read"):
            fp.seek(0)
            head = fp.read(12)
        else:
            with open(fp, "rb") as f:
                head = f.read(12)
    except (OSError, ValueError):
        return False
    return head[4:8] == b"ftyp"


def _heif_hint(path: str) -> str:
    if Path(path).suffix.lower() in HEIF_EXTENSIONS and not register_heif():
        return " — HEIC/HEIF photos need the pi-heif package: pip install pi-heif"
    return ""


def _bomb_pixels(e: Exception) -> str:
    text = str(e)
    # "Image size (N pixels) exceeds limit of M pixels, ..."
    if "(" in text and "pixels" in text:
        return text[text.index("(") + 1 : text.index(")")] if ")" in text else text
    return "over Pillow's limit"


def _os_reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return _exc_reason(e)


def _exc_reason(e: BaseException) -> str:
    msg = str(e).strip()
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _exif_orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except Exception:
        return 1


def _decode(path, im: Image.Image, channels: int, draft_hw: tuple[int, int] | None) -> Image.Image:
    """Load pixel data (optionally JPEG-drafted), orient, and convert to "RGB"/"L"."""
    try:
        if draft_hw is not None and im.format in _JPEG_FORMATS:
            # JPEG keeps its EXIF block in im.info, so reading it does not decode pixels. (For
            # other formats, e.g. PNG, getexif() may call load() itself, and a failed load that
            # were swallowed there would leave a half-decoded image that later loads "fine".)
            h, w = draft_hw
            if _exif_orientation(im) in _TRANSPOSING_ORIENTATIONS:
                h, w = w, h
            # DCT-domain downscaling by 1/2, 1/4 or 1/8 while staying >= the target size.
            im.draft("L" if channels == 1 else None, (w, h))
        # Image.open leaves animated GIF/WebP/PNG on their first frame: load just that one.
        im.load()
    except Image.DecompressionBombError as e:
        raise ImageReadError(
            path, f"too many pixels ({_bomb_pixels(e)}); refusing a possible decompression bomb"
        ) from None
    except MemoryError:
        raise ImageReadError(path, "not enough memory to decode this image") from None
    except ImageReadError:
        raise
    except OSError as e:
        msg = str(e)
        if "truncated" in msg.lower():
            reason = f"truncated image file ({msg}); re-download or re-export it"
        else:
            reason = f"corrupt or unsupported image data ({_exc_reason(e)})"
        raise ImageReadError(path, reason) from None
    except Exception as e:
        raise ImageReadError(
            path, f"corrupt or unsupported image data ({_exc_reason(e)})"
        ) from None

    orientation = _exif_orientation(im)  # after load(): never triggers decoding
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        try:
            oriented = ImageOps.exif_transpose(im)
        except Exception:  # a broken EXIF block must not make a good image unreadable
            oriented = None
        if oriented is not None:
            im = oriented
    try:
        return _to_mode(im, channels)
    except ImageReadError:
        raise
    except Exception as e:
        raise ImageReadError(
            path, f"cannot convert image mode {im.mode!r} ({_exc_reason(e)})"
        ) from None


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        im.mode in ("P", "L", "RGB", "1") and "transparency" in im.info
    )


def _to_mode(im: Image.Image, channels: int) -> Image.Image:
    target = "RGB" if channels == 3 else "L"
    mode = im.mode

    if mode.startswith("I;16") or mode in ("I", "F"):
        im = Image.fromarray(_high_depth_to_uint8(im), "L")
        return im if target == "L" else im.convert("RGB")

    if _has_alpha(im):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        out = Image.alpha_composite(white, rgba).convert("RGB")
        return out if target == "RGB" else out.convert("L")

    if mode == target:
        return im
    if mode in ("1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr"):
        if target == "L" and mode in ("CMYK", "YCbCr", "P", "RGBX"):
            return im.convert("RGB").convert("L")
        return im.convert(target)
    if mode in ("LAB", "HSV"):
        rgb = im.convert("RGB")  # raises for unsupported conversions -> DataError by caller
        return rgb if target == "RGB" else rgb.convert("L")
    return im.convert("RGB").convert(target) if target == "L" else im.convert("RGB")


def _high_depth_to_uint8(im: Image.Image) -> np.ndarray:
    """16-bit / 32-bit integer / float greyscale -> uint8 (scaled, never clipped).

    * "I;16*": full 16-bit range, v -> round(v / 257) (65535 -> 255, 32768 -> 128).
    * "I": treated as 16-bit when all values lie in 0..65535 (this is how older Pillow opens 16-bit
      PNGs) unless they all fit in 0..255 (an 8-bit image stored as int); otherwise min-max scaled.
    * "F": 0..1 -> x255, 0..255 kept, anything else min-max scaled.
    """
    mode = im.mode
    a = np.asarray(im)
    if mode.startswith("I;16"):
        a = a.astype(np.float32) / 257.0
    elif mode == "I":
        a = a.astype(np.float64)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if lo >= 0 and hi <= 255:
            pass
        elif lo >= 0 and hi <= 65535:
            a = a / 257.0
        else:
            a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    else:  # "F"
        a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if lo >= 0 and hi <= 1.0:
            a = a * 255.0
        elif lo >= 0 and hi <= 255:
            pass
        else:
            a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- fitting to the model's size


def check_resize(resize: str | None) -> str:
    """`resize` when it is one of RESIZES, DEFAULT_RESIZE for None; a one-line ConfigError otherwise."""
    if resize is None:
        return DEFAULT_RESIZE
    if resize not in RESIZES:
        raise ConfigError(f"resize = {resize!r} is invalid — expected one of {', '.join(RESIZES)} (--resize squash|crop|pad)")
    return resize


def fit_image(im: Image.Image, size: tuple[int, int], resize: str | None = None) -> Image.Image:
    """`im` ("RGB" or "L") fitted to exactly `size` = (H, W) as `resize` says (module docstring); bilinear.

    crop: the box is PIL.ImageOps.fit's (centred, fractional edges kept: the resampling weighs them);
    pad: the inner size and offsets are PIL.ImageOps.pad's (round half to even), the rest is `PAD_RGB`.
    """
    h, w = _check_size(size)
    resize = check_resize(resize)
    src_w, src_h = im.size
    if resize == "squash" or src_w * h == src_h * w:  # same aspect ratio: all three modes are one resize
        return im if im.size == (w, h) else im.resize((w, h), Image.BILINEAR, reducing_gap=2.0)
    if resize == "crop":
        if src_w * h > src_h * w:  # wider than the target: cut the sides
            box_w, box_h = src_h * w / h, float(src_h)
        else:  # taller: cut top and bottom
            box_w, box_h = float(src_w), src_w * h / w
        left, top = (src_w - box_w) / 2, (src_h - box_h) / 2
        return im.resize((w, h), Image.BILINEAR, box=(left, top, left + box_w, top + box_h), reducing_gap=2.0)
    # pad: the whole image inside (w, h), its long side (relative to the target) filling it
    if src_w * h > src_h * w:
        inner = (w, max(1, round(src_h / src_w * w)))
    else:
        inner = (max(1, round(src_w / src_h * h)), h)
    placed = im.resize(inner, Image.BILINEAR, reducing_gap=2.0)
    canvas = Image.new(im.mode, (w, h), PAD_GREY if im.mode == "L" else PAD_RGB)
    canvas.paste(placed, (round((w - inner[0]) / 2), round((h - inner[1]) / 2)))
    return canvas


# --------------------------------------------------------------------------- public API


def open_image(path, *, channels: int = 3, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open and fully decode `path` as an "RGB" (channels=3) or "L" (channels=1) Pillow image.

    Raises `DataError` (an `ImageReadError`) with one line naming the file and the reason.
    """
    _check_channels(channels)
    im = _open_checked(path, max_pixels)
    try:
        out = _decode(path, im, channels, None)
        if out is im:
            out = im.copy()  # detach from the file
        return out
    finally:
        im.close()


def check_image_header(path, *, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
    """Raise `ImageReadError` unless `path` opens as an image within `max_pixels`, reading the header only.

    Catches what `open_image` rejects before decoding (missing, empty, not an image, corrupt header,
    decompression bomb) at a fraction of its cost; truncated or corrupt pixel data shows only on decoding.
    """
    _open_checked(path, max_pixels).close()


def load_image(
    path,
    size: tuple[int, int] | None,
    *,
    channels: int = 3,
    max_pixels: int = MAX_IMAGE_PIXELS,
    resize: str | None = None,
) -> np.ndarray:
    """Decode `path` into a uint8 (H, W, C) array, fitted to exactly `size` = (H, W) if given.

    `resize` says how an image of another aspect ratio fits (`fit_image`): squash (aspect ratio not
    kept, like Keras' image_dataset_from_directory), crop (centre) or pad (letterbox). JPEGs are first
    downscaled in the DCT domain (Image.draft) to at least the target size — the crop box and the padded
    image are no larger — then resized with bilinear filtering and a reducing gap (box pre-reduction), so
    large downscales stay smooth (no aliasing) and cheap.
    """
    _check_channels(channels)
    hw = _check_size(size) if size is not None else None
    resize = check_resize(resize)
    im = _open_checked(path, max_pixels)
    try:
        out = _decode(path, im, channels, hw)
        if hw is not None and out.size != (hw[1], hw[0]):
            try:
                out = fit_image(out, hw, resize)
            except Exception as e:  # pragma: no cover - defensive
                raise ImageReadError(path, f"cannot resize image ({_exc_reason(e)})") from None
        arr = np.asarray(out, dtype=np.uint8)
    finally:
        im.close()
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr)


def load_images(
    paths: Sequence,
    size: tuple[int, int],
    *,
    channels: int = 3,
    workers: int | None = None,
    on_error: str = "collect",
    max_pixels: int = MAX_IMAGE_PIXELS,
    resize: str | None = None,
) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
    """Decode many files into one uint8 (N_ok, H, W, C) array, in the order of `paths`, each fitted as `resize` says.

    Returns ``(array, ok_indices, bad)`` where ``ok_indices[i]`` is the position in `paths` of
    ``array[i]`` and ``bad`` lists ``(path, reason)`` for each file that could not be used.
    ``on_error="raise"`` raises the first (in path order) `DataError` instead. Decoding runs in a
    thread pool (Pillow releases the GIL while decoding); `workers` defaults to ``os.cpu_count()``.
    """
    if on_error not in ("collect", "raise"):
        raise ValueError(f"on_error must be 'collect' or 'raise', got {on_error!r}")
    _check_channels(channels)
    h, w = _check_size(size)
    resize = check_resize(resize)
    paths = list(paths)
    n = len(paths)
    out = np.empty((n, h, w, channels), dtype=np.uint8)
    ok: list[int] = []
    bad: list[tuple[str, str]] = []
    if n == 0:
        return out, ok, bad

    if workers is None:
        workers = os.cpu_count() or 1
    workers = max(1, min(int(workers), n))

    def one(p):
        try:
            return load_image(p, (h, w), channels=channels, max_pixels=max_pixels, resize=resize), None
        except ImageReadError as e:
            return None, e
        except DataError as e:  # pragma: no cover - defensive
            return None, ImageReadError(p, str(e))

    def take(i, result):
        arr, err = result
        if err is not None:
            if on_error == "raise":
                raise err
            bad.append((str(paths[i]), err.reason))
        else:
            out[len(ok)] = arr
            ok.append(i)

    if workers == 1:
        for i, p in enumerate(paths):
            take(i, one(p))
    else:
        window = workers * 4  # bounded number of decoded images waiting to be copied
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cnnlab-img") as pool:
            pending: deque = deque()
            it = iter(enumerate(paths))
            try:
                for i, p in it:
                    pending.append((i, pool.submit(one, p)))
                    if len(pending) >= window:
                        j, fut = pending.popleft()
                        take(j, fut.result())
                while pending:
                    j, fut = pending.popleft()
                    take(j, fut.result())
            except BaseException:
                for _, fut in pending:
                    fut.cancel()
                raise

    k = len(ok)
    if k < n:
        out = out[:k].copy()
    return out, ok, bad


def is_image_file(path) -> bool:
    """True for a non-hidden file name with an image extension (case-insensitive).

    Hidden files (".DS_Store", macOS "._x.jpg" resource forks) and "Thumbs.db"/"desktop.ini"
    are never images. Only the name is looked at; the file is not opened.
    """
    name = Path(os.fspath(path)).name
    if not name or is_os_file(name):
        return False
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def is_os_file(name: str) -> bool:
    """Hidden files and the operating system's metadata (.DS_Store, ._x.jpg, Thumbs.db, desktop.ini)."""
    return name.startswith(".") or name.lower() in _IGNORED_NAMES


def filter_image_files(paths: Iterable) -> list:
    """The entries of `paths` for which `is_image_file` is true, in order."""
    return [p for p in paths if is_image_file(p)]


def walk_files(folder: Path) -> list[Path]:
    """Every non-directory entry below `folder`, sorted, without entering hidden folders (.thumbnails,
    .ipynb_checkpoints) or following folder symlinks (no loops); a linked folder is listed itself."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False, onerror=None):
        d = Path(dirpath)
        dirnames[:] = [n for n in dirnames if not n.startswith(".")]
        out.extend(d / n for n in filenames)
        out.extend(d / n for n in dirnames if (d / n).is_symlink())  # a linked folder: reported, not entered
    return sorted(out)


def expand_image_paths(inputs: list[str | Path]) -> list[Path]:
    """Files as given; folders expanded to their image files (recursive, sorted, hidden folders skipped)."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = [f for f in walk_files(p) if f.is_file() and is_image_file(f)]
            if not found:
                raise DataError(f"{p}: folder holds no images (jpg, png, webp, heic, avif, …: other files are left out)")
            out.extend(found)
        elif p.exists():
            out.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    return out
