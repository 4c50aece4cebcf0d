"""The seed tutorial's CSV format: read it fast, check it, cache it, write it.

A dataset folder holds ``input.csv`` (one image per line: H*W*C pixel values 0-255 in HWC order,
separated by commas) and ``labels.csv`` (one label per line), optionally ``input_test.csv`` and
``labels_test.csv``. Files written by ``np.savetxt`` in any format (``%d``, ``%.1f``, the default
``%.18e``) are accepted, with CRLF line endings, a UTF-8 BOM and trailing blank lines.

Reading ``input.csv`` is the slow part of the tutorial (``np.loadtxt`` needs seconds for 300 MB), so
:func:`read_pixel_csv` parses the common layouts with vectorised numpy code:

* plain integers (``37``) and fixed-point decimals with one fraction width (``37.0``): the file is
  walked in cache-sized chunks; separator positions are found with ``flatnonzero`` and each value is
  assembled from the bytes just before its separator (digits, the dot, the fraction);
* ``%e`` scientific notation (all values have the same width): the bytes are viewed as a
  (values, width) matrix and mantissa/exponent columns are combined with integer arithmetic.

Anything else (spaces, signs, mixed formats, ``nan``) goes to ``np.loadtxt``. Whenever a fast or slow
parse finds something wrong, the file is re-scanned line by line from the first line that might be
affected to produce one exact message: file, line, column and the fix. Values are rounded half to even
(``np.rint``) after checking that they lie in [0, 255].

:func:`load_pixel_csv_cached` stores the parsed array as ``.npy`` keyed by (path, size, mtime) so a
second run memory-maps it instead of parsing again.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np
from numpy.lib.stride_tricks import as_strided

from cnnlab.io import atomic_path
from cnnlab.errors import DataError

__all__ = [
    "infer_image_shape",
    "load_pixel_csv_cached",
    "read_label_csv",
    "read_pixel_csv",
    "write_label_csv",
    "write_pixel_csv",
]

_BOM = b"\xef\xbb\xbf"
_PIXEL_RULE = "pixel values must be numbers 0-255"
_CHUNK = 1 << 21  # bytes per fast-path chunk: temporaries stay in cache and their pages get reused
_SCI_TOKENS = 1 << 17  # values per chunk in the %e path
_CACHE_VERSION = b"seed-csv-cache-v1"

_COMMA, _NL, _DOT, _ZERO = 44, 10, 46, 48


class _Fallback(Exception):
    """The fast path cannot handle this text.

    Lines before ``line`` (1-based) are known to be valid; the problem starts before byte ``upto`` (when
    known), so checking the lines from ``line`` that start before ``upto`` finds it if it is an error.
    """

    def __init__(self, line: int = 1, upto: int | None = None):
        super().__init__(line, upto)
        self.line = line
        self.upto = upto


# ------------------------------------------------------------------------------------ reading pixels


def read_pixel_csv(path: str | os.PathLike) -> np.ndarray:
    """Read a seed-format pixel CSV into a uint8 array of shape (images, values per image).

    Raises :class:`DataError` with one line naming the file, line, column and the fix when the file is
    missing or empty, rows differ in length, a field is empty or not a number, or a value is NaN,
    infinite or outside 0-255.
    """
    name = Path(path).name
    data = _read_bytes(path)
    data, start, end = _normalize(data)
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(f"{name}: file is UTF-16 text — save it as a plain (ASCII/UTF-8) CSV file")
    if start >= end:
        raise DataError(f"{name}: file is empty — it must hold one image per line, {_PIXEL_RULE} separated by commas")
    first_nl = data.find(b"\n", start, end)
    first_line = data[start : end if first_nl < 0 else first_nl]
    n_cols = first_line.count(b",") + 1
    token = first_line.split(b",", 1)[0]

    hint, upto = 1, None
    try:
        if re.fullmatch(rb"[0-9]{1,3}", token):
            return _parse_fixed_point(data, start, end, n_cols, 0)
        m = re.fullmatch(rb"[0-9]{1,3}\.([0-9]{1,15})", token)
        if m:
            return _parse_fixed_point(data, start, end, n_cols, len(m.group(1)))
        m = re.fullmatch(rb"[0-9](?:\.([0-9]{1,18}))?[eE][+-][0-9]{2}", token)
        if m:
            return _parse_sci(data, start, end, n_cols, len(m.group(1) or b""))
    except _Fallback as fb:
        hint, upto = fb.line, fb.upto
    return _parse_general(name, data, start, end, n_cols, hint, upto)


def _read_bytes(path: str | os.PathLike) -> bytes:
    name = Path(path).name
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise DataError(f"{name}: no such file ({os.fspath(path)}) — check the path; the dataset folder must contain {name}") from None
    except IsADirectoryError:
        raise DataError(f"{name}: is a folder, not a file ({os.fspath(path)}) — point to the CSV file or its dataset folder") from None
    except OSError as e:
        raise DataError(f"{name}: cannot be read ({e.strerror or e}) — check the path and its permissions") from None


def _normalize(data: bytes) -> tuple[bytes, int, int]:
    """Drop a UTF-8 BOM, turn CRLF/CR into LF, and ignore trailing blank lines: (data, start, end)."""
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    start = len(_BOM) if data.startswith(_BOM) else 0
    end = len(data)
    ws = b" \t\n\x00"
    while end > start and data[end - 1] in ws:
        end -= 1
        if len(data) - end > 4096:  # a huge blank tail: let C do it
            end = start + len(data[start:end].rstrip(ws))
            break
    return data, start, end


def _parse_fixed_point(data: bytes, start: int, end: int, n_cols: int, frac: int) -> np.ndarray:
    """Integers (``frac == 0``) or decimals with exactly ``frac`` fraction digits, 1-3 integer digits.

    The text is copied chunk by chunk (chunks end right after a separator) into a reused buffer whose
    first ``pad`` bytes repeat the bytes before the chunk, so "the byte k places before separator i"
    is ``view_k[i]`` for every separator in the chunk. Raises ``_Fallback`` on anything unexpected.
    """
    off = frac + 1 if frac else 0  # bytes between the last integer digit and the separator
    back = off + 4  # furthest byte looked at: the one before a 3-digit integer part
    pad = back
    src = np.frombuffer(data, np.uint8)
    work = np.empty(pad + _CHUNK + 1, np.uint8)
    views = [work[pad - k : pad - k + _CHUNK + 1] for k in range(back + 1)]
    parts: list[np.ndarray] = []
    a = start
    tokens = rows = 0
    next_nl = n_cols - 1  # global index of the token that must end the next row
    while a < end:
        b = min(a + _CHUNK, end)
        last = b == end
        if not last:
            cut = max(data.rfind(b",", a, b), data.rfind(b"\n", a, b))
            if cut < a:
                raise _Fallback(rows + 1, b)
            b = cut + 1
        try:
            m, want = _fixed_point_chunk(src, work, views, parts, a, b, last, start, pad, n_cols, next_nl - tokens, frac, off)
        except _Fallback:
            raise _Fallback(rows + 1, b) from None
        tokens += m
        next_nl += want * n_cols
        rows += want
        a = b
    if tokens != rows * n_cols:
        raise _Fallback(rows + 1, end)
    return np.concatenate(parts).reshape(rows, n_cols)


def _fixed_point_chunk(
    src: np.ndarray,
    work: np.ndarray,
    views: list[np.ndarray],
    parts: list[np.ndarray],
    a: int,
    b: int,
    last: bool,
    start: int,
    pad: int,
    n_cols: int,
    first: int,
    frac: int,
    off: int,
) -> tuple[int, int]:
    """Parse text[a:b] into ``parts``; ``first``: chunk-local index of the value that must end a row."""
    n = b - a
    ctx = min(pad, a - start)
    work[: pad - ctx] = _NL
    work[pad - ctx : pad] = src[a - ctx : a]
    work[pad : pad + n] = src[a:b]
    if last:
        work[pad + n] = _NL
        n += 1
    chunk = views[0][:n]
    e = np.flatnonzero(chunk < _DOT)  # ',' and '\n' (and any other low byte, rejected below)
    m = len(e)
    kind = chunk[e]
    nl = np.flatnonzero(kind == _NL)
    want = 0 if first >= m else (m - first - 1) // n_cols + 1
    if len(nl) != want or np.count_nonzero(kind == _COMMA) + want != m:
        raise _Fallback
    if want and not np.array_equal(nl, np.arange(first, first + want * n_cols, n_cols)):
        raise _Fallback
    parts.append(_fixed_point_values(views, e, frac, off))
    return m, want


def _fixed_point_values(views: list[np.ndarray], e: np.ndarray, frac: int, off: int) -> np.ndarray:
    def at(k: int) -> np.ndarray:  # the byte k places before each separator
        return views[k][e]

    bu, bt, bh, b4 = at(off + 1), at(off + 2), at(off + 3), at(off + 4)
    u, t, h = bu - _ZERO, bt - _ZERO, bh - _ZERO  # uint8: non-digits wrap to >= 10
    du, dt, dh = u < 10, t < 10, h < 10
    # each integer part: 1-3 digits preceded by a separator ('.' or junk means another format)
    ok = du & ((bt < _DOT) | (dt & ((bh < _DOT) | (dh & (b4 < _DOT)))))
    if not ok.all():
        raise _Fallback
    dth = dt & dh
    val = np.multiply(h, dth, dtype=np.uint16)
    val *= 10
    val += np.multiply(t, dt, dtype=np.uint16)
    val *= 10
    val += u
    if frac:
        if not (at(off) == _DOT).all():
            raise _Fallback
        first = at(frac) - _ZERO  # first fraction digit
        if not (first < 10).all():
            raise _Fallback
        rest = np.zeros(len(e), bool)  # any non-zero digit after the first fraction digit
        for k in range(1, frac):
            d = at(k) - _ZERO
            if not (d < 10).all():
                raise _Fallback
            rest |= d != 0
        above = (first != 0) | rest  # value > integer part
        if ((val > 255) | ((val == 255) & above)).any():
            raise _Fallback
        val += (first > 5) | ((first == 5) & (rest | (val & 1).astype(bool)))
    elif (val > 255).any():
        raise _Fallback
    return val.astype(np.uint8)


def _parse_sci(data: bytes, start: int, end: int, n_cols: int, frac: int) -> np.ndarray:
    """``%e`` text (``d.ddde+XX``) where every value has the same width.

    Values sit at a fixed stride, so every line has the same length and the text is a (values,
    width + 1) byte matrix. That matrix is checked in chunks of whole "periods" (values filling a whole
    number of 64-bit words) with one masked compare per word: the dot, the ``e`` and, for integral
    data, the mantissa digits after the 4th (all '0'). A few columns then give mantissa, exponent
    and separator. Raises ``_Fallback`` for anything else.
    """
    width = 1 + (frac + 1 if frac else 0) + 4
    step = width + 1
    line_len = n_cols * step
    total = end - start
    src = np.frombuffer(data, np.uint8, count=total, offset=start)
    ends = src[line_len - 1 :: line_len]  # where the newline of each full-length line must be
    bad = np.flatnonzero(ends != _NL)
    good_rows = int(bad[0]) if len(bad) else len(ends)
    complete = not len(bad) and total + 1 == (good_rows + 1) * line_len
    if complete:
        good_rows += 1  # the last line (its newline stripped) has the right length too
    out = np.empty((good_rows, n_cols), np.uint8)
    if good_rows:
        _sci_rows(src[: good_rows * line_len - 1], out.reshape(-1), n_cols, frac, start)
    if not complete:  # line good_rows + 1 has another length: ragged, or values of another width
        raise _Fallback(good_rows + 1, min(end, start + (good_rows + 1) * line_len))
    return out


def _sci_rows(src: np.ndarray, out: np.ndarray, n_cols: int, frac: int, base: int) -> None:
    """Fill ``out`` from whole lines of same-width ``%e`` values (``src`` without its final newline)."""
    width = 1 + (frac + 1 if frac else 0) + 4
    step = width + 1
    n_tok = len(out)
    e_chr = src[width - 4]
    keep = min(frac, 3)  # mantissa digits after the first that may be non-zero on the fast path
    per_tok = 8 // math.gcd(step, 8)  # values per period
    chunk_tok = per_tok * max(1, min(_SCI_TOKENS, n_tok + per_tok - 1) // per_tok)
    pattern = np.zeros(chunk_tok * step, np.uint8)
    mask = np.zeros_like(pattern)
    slots = np.arange(chunk_tok) * step
    for pos, ch in [(1, _DOT)] * bool(frac) + [(width - 4, e_chr)] + [(p, _ZERO) for p in range(2 + keep, frac + 2)]:
        pattern[slots + pos] = ch
        mask[slots + pos] = 0xFF
    pattern64, mask64 = pattern.view(np.uint64), mask.view(np.uint64)
    work64 = np.empty(len(pattern64), np.uint64)
    work = work64.view(np.uint8)
    n_fast = (n_tok - 1) // per_tok * per_tok  # the last value has no separator byte: slow tier
    t0 = 0
    while t0 < n_tok:
        t1 = min(t0 + chunk_tok, n_fast) if t0 < n_fast else n_tok
        m = t1 - t0
        if t0 < n_fast:
            nb = m * step
            work[:nb] = src[t0 * step : t1 * step]
            mat = work[:nb].reshape(m, step)
            seps = mat[:, width]
            nw = nb // 8
            checked = np.array_equal(work64[:nw] & mask64[:nw], pattern64[:nw])
        else:  # tail: strided view of the source, last separator implied
            mat = as_strided(src[t0 * step :], shape=(m, width), strides=(step, 1), writeable=False)
            seps = np.empty(m, np.uint8)
            seps[:-1] = src[t0 * step + width :: step][: m - 1]
            seps[-1] = _NL
            checked = False
        try:
            nl = np.flatnonzero(seps != _COMMA)
            first = (n_cols - 1 - t0) % n_cols
            if not (np.array_equal(nl, np.arange(first, m, n_cols)) and (seps[nl] == _NL).all()):
                raise _Fallback
            out[t0:t1] = _sci_chunk(mat, frac, keep if checked else frac, checked)
        except _Fallback:
            raise _Fallback(t0 // n_cols + 1, base + t1 * step) from None
        t0 = t1


def _sci_chunk(mat: np.ndarray, frac: int, ndig_frac: int, checked: bool) -> np.ndarray:
    """Values of one chunk of ``%e`` text; ``checked``: dot, 'e' and digits after ``ndig_frac`` verified."""
    width = frac + 6 if frac else 5
    cols = [0, *range(2, 2 + ndig_frac)]
    digits = mat[:, cols] - _ZERO  # mantissa digits, uint8 (non-digits wrap to >= 10)
    sign, x1, x2 = mat[:, width - 3], mat[:, width - 2] - _ZERO, mat[:, width - 1] - _ZERO
    ok = (digits < 10).all() and (x1 < 10).all() and (x2 < 10).all() and ((sign == 43) | (sign == 45)).all()
    if ok and not checked:
        e_chr = mat[:, width - 4]
        ok = ((e_chr == 101) | (e_chr == 69)).all() and (not frac or (mat[:, 1] == _DOT).all())
    if not ok:
        raise _Fallback
    # value = X * 10**(exp - (ndig - 1)) with X the mantissa digits read as one integer
    ndig = len(cols)
    dtype = np.uint64 if ndig > 9 else np.int64
    x = np.zeros(len(mat), dtype)
    for j in range(ndig):
        x *= 10
        x += digits[:, j]
    exp = x1.astype(np.int64) * 10 + x2
    exp[sign == 45] *= -1
    shift = (ndig - 1) - exp  # decimal places to drop (negative: zeros to append)
    p10 = np.array([10**k for k in range(max(ndig + 1, 4))], dtype)
    div = p10[np.clip(shift, 0, ndig)]
    q = x // div
    rem = x - q * div
    half = div // 2
    up = (rem > half) | ((rem == half) & (shift > 0) & ((q & 1) == 1))
    tiny = shift > ndig  # below 0.1: rounds to 0
    q[tiny] = 0
    up[tiny] = False
    grow = shift < 0
    if grow.any():
        mult = p10[np.clip(-shift[grow], 0, 3)]
        big = (x[grow] > 255 // mult) | (-shift[grow] > 3) & (x[grow] > 0)
        if big.any():
            raise _Fallback
        q[grow] = x[grow] * mult
    if ((q > 255) | ((q == 255) & (rem > 0) & ~tiny)).any():
        raise _Fallback
    return (q + up).astype(np.uint8)


def _parse_general(name: str, data: bytes, start: int, end: int, n_cols: int, hint: int = 1, upto: int | None = None) -> np.ndarray:
    """Any text ``float()`` reads, via ``np.loadtxt``; problems are located line by line.

    ``hint``/``upto`` come from a fast path that gave up: lines before ``hint`` are valid and, if the
    text is wrong rather than just unusual, the problem is in a line starting before byte ``upto``.
    """
    if upto is not None:  # check the suspicious lines first: a mistake is reported without a full parse
        hint = _check_lines(name, data, start, end, n_cols, hint, upto)
    n_lines = data.count(b"\n", start, end) + 1
    try:
        text = io.StringIO(data[start:end].decode("latin-1"))
        arr = np.loadtxt(text, delimiter=",", dtype=np.float64, comments=None, ndmin=2, encoding=None)
    except ValueError:
        arr = None
    if arr is None or arr.shape != (n_lines, n_cols):
        _check_lines(name, data, start, end, n_cols, hint, end + 1)  # raises the first problem
        return _parse_all_lines(name, data, start, end, n_cols)  # a format only float() reads
    good = (arr >= 0) & (arr <= 255)  # False for NaN
    if not good.all():
        bad_line = int(np.argmin(good.all(axis=1))) + 1
        _check_lines(name, data, start, end, n_cols, bad_line, end + 1)  # raises
        return _parse_all_lines(name, data, start, end, n_cols)
    return np.rint(arr).astype(np.uint8)


def _check_lines(name: str, data: bytes, start: int, end: int, n_cols: int, from_line: int, upto: int) -> int:
    """Check each line from ``from_line`` that starts before byte ``upto``; raise the first problem.

    Returns the number of the first line not checked.
    """
    pos, line_no = start, 1
    while line_no < from_line:  # skip lines already known to be good
        nl = data.find(b"\n", pos, end)
        if nl < 0:
            break
        pos, line_no = nl + 1, line_no + 1
    while pos <= end and pos < upto:
        nl = data.find(b"\n", pos, end)
        stop = end if nl < 0 else nl
        _parse_line(name, line_no, data[pos:stop], n_cols)
        pos, line_no = stop + 1, line_no + 1
    return line_no


def _parse_all_lines(name: str, data: bytes, start: int, end: int, n_cols: int) -> np.ndarray:
    lines = data[start:end].split(b"\n")
    return np.stack([_parse_line(name, i + 1, ln, n_cols) for i, ln in enumerate(lines)])


def _show(field: bytes) -> str:
    s = field.strip().decode("utf-8", "replace")
    return s if len(s) <= 24 else s[:21] + "..."


def _parse_line(name: str, line_no: int, line: bytes, n_cols: int) -> np.ndarray:
    where = f"{name} line {line_no}"
    if not line.strip():
        raise DataError(f"{where}: blank line — every line must hold one image; remove blank lines between rows")
    fields = line.split(b",")
    try:
        vals = np.array(fields).astype(np.float64)
    except ValueError:
        vals = None
    if vals is None or len(fields) != n_cols:
        for j, f in enumerate(fields):  # empty fields first: they are the usual cause of a wrong count
            if not f.strip():
                what = "trailing comma" if j == len(fields) - 1 and j > 0 else "empty value"
                raise DataError(f"{where}, column {j + 1}: {what} — {_PIXEL_RULE}; remove the extra comma or fill in the value")
    if len(fields) != n_cols:
        raise DataError(f"{where}: {len(fields)} values, expected {n_cols} like line 1 — every row must hold one whole image")
    if vals is None:
        vals = np.empty(len(fields))
        for j, f in enumerate(fields):
            try:
                vals[j] = float(f)
            except ValueError:
                tok = _show(f)
                hint = _PIXEL_RULE
                if any(c in tok for c in ";\t "):
                    hint += " separated by commas"
                if line_no == 1:
                    hint += " (remove the header line if the file has one)"
                raise DataError(f"{where}, column {j + 1}: {tok!r} is not a number — {hint}") from None
    good = (vals >= 0) & (vals <= 255)
    if not good.all():
        j = int(np.argmin(good))
        v, here = vals[j], f"{where}, column {j + 1}"
        if np.isnan(v):
            raise DataError(f"{here}: {_show(fields[j])!r} is NaN (not a number) — {_PIXEL_RULE}; fill in or drop missing pixels")
        if np.isinf(v):
            raise DataError(f"{here}: {_show(fields[j])!r} is infinite — {_PIXEL_RULE} (rescale your data)")
        raise DataError(f"{here}: {v:g} is outside 0-255 — pixel values must be 0-255 (rescale your data)")
    return np.rint(vals).astype(np.uint8)


# ------------------------------------------------------------------------------------ labels


def read_label_csv(path: str | os.PathLike, expected_rows: int | None = None, *, data_file: str | None = None) -> np.ndarray:
    """Read one label per line: int64 when every label is an integral number, else class-name strings.

    ``expected_rows`` (the number of images) is checked; ``data_file`` names the image file in that
    message.
    """
    name = Path(path).name
    raw = _read_bytes(path)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{name} line {line}: not UTF-8 text — save the labels as UTF-8, one label per line") from None
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DataError(f"{name}: file is empty — it must hold one label per line (a class number or name)")
    labels: list[str] = []
    for i, ln in enumerate(lines, 1):
        s = ln.strip()
        if len(s) >= 2 and s[0] == s[-1] == '"':
            s = s[1:-1].strip()
        if not s:
            raise DataError(f"{name} line {i}: empty label — every line must hold exactly one label (remove blank lines)")
        if "," in s:
            n = len(s.split(","))
            raise DataError(f"{name} line {i}: {n} values, expected one label — put exactly one label on each line")
        labels.append(s)
    if expected_rows is not None and len(labels) != expected_rows:
        other = data_file or "the image file"
        raise DataError(
            f"{name} has {len(labels)} labels but {other} has {expected_rows} images — each image needs exactly one label (one per line)"
        )
    values: list[int | float] = []
    for s in labels:
        try:
            values.append(int(s))
        except ValueError:
            try:
                values.append(float(s))
            except ValueError:
                return np.array(labels, dtype=str)  # class names
    for i, (s, v) in enumerate(zip(labels, values), 1):
        if isinstance(v, float):
            if not (np.isfinite(v) and v.is_integer()):
                raise DataError(f"{name} line {i}: {s!r} is not a whole number — numeric labels must be class numbers like 0, 1, 2")
            values[i - 1] = int(v)
    try:
        return np.array(values, dtype=np.int64)
    except OverflowError:
        raise DataError(f"{name}: a label is too large for a class number — use class numbers like 0, 1, 2 or class names") from None


# ------------------------------------------------------------------------------------ shapes


def infer_image_shape(n_values: int, image_shape: tuple[int, int, int] | None = None, *, path: str = "input.csv") -> tuple[int, int, int]:
    """(H, W, C) for rows of ``n_values`` pixels: the given shape (checked) or a square RGB/greyscale guess."""
    name = Path(path).name
    if image_shape is not None:
        shape = tuple(int(v) for v in image_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise DataError(f"--image-shape {','.join(map(str, shape))}: give three positive numbers H,W,C (e.g. 100,100,3)")
        need = shape[0] * shape[1] * shape[2]
        if need != n_values:
            raise DataError(
                f"{name}: rows hold {n_values} values but --image-shape {shape[0]},{shape[1]},{shape[2]} needs {need} (H*W*C) "
                "— pass the shape the images really have"
            )
        return shape  # type: ignore[return-value]
    if n_values > 0:
        if n_values % 3 == 0:
            s = _isqrt_exact(n_values // 3)
            if s:
                return (s, s, 3)
        s = _isqrt_exact(n_values)
        if s:
            return (s, s, 1)
    raise DataError(f"{name}: {n_values} values per row fit no square RGB or greyscale image — pass --image-shape H,W,C")


def _isqrt_exact(n: int) -> int:
    s = math.isqrt(n)
    return s if s * s == n else 0


# ------------------------------------------------------------------------------------ cache


def load_pixel_csv_cached(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> np.ndarray:
    """:func:`read_pixel_csv`, cached as ``.npy`` keyed by (absolute path, size, mtime).

    A cache hit returns a read-only memory map. The cache lives in ``cache_dir``, else ``$CNNLAB_CACHE``,
    else ``~/.cache/cnnlab``; a cache that cannot be written is skipped and a damaged entry is rebuilt.
    """
    name = Path(path).name
    try:
        st = os.stat(path)
    except OSError:
        return read_pixel_csv(path)  # raises the proper DataError
    abspath = os.path.abspath(os.fspath(path))
    folder = Path(cache_dir if cache_dir is not None else os.environ.get("CNNLAB_CACHE") or Path.home() / ".cache" / "cnnlab")
    path_key = hashlib.sha256(_CACHE_VERSION + abspath.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    state_key = hashlib.sha256(f"{abspath}\0{st.st_size}\0{st.st_mtime_ns}".encode("utf-8", "surrogateescape")).hexdigest()[:16]
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(name).stem)[:40]
    entry = folder / f"{stem}-{path_key}-{state_key}.npy"
    if entry.is_file():
        try:
            arr = np.load(entry, mmap_mode="r", allow_pickle=False)
            if arr.dtype == np.uint8 and arr.ndim == 2:
                return arr
        except Exception:  # noqa: BLE001  (damaged entry: rebuild it)
            pass
    arr = read_pixel_csv(path)
    try:
        st2 = os.stat(path)
        if (st2.st_size, st2.st_mtime_ns) == (st.st_size, st.st_mtime_ns):  # not changed while we read it
            folder.mkdir(parents=True, exist_ok=True)
            _atomic_write(entry, lambda f: np.save(f, arr, allow_pickle=False), sync=False)
            for old in folder.glob(f"*-{path_key}-*.npy"):  # earlier versions of the same file
                if old != entry:
                    old.unlink(missing_ok=True)
    except OSError:
        pass  # no cache then
    return arr


# ------------------------------------------------------------------------------------ writing


def write_pixel_csv(path: str | os.PathLike, pixels: np.ndarray) -> None:
    """Write uint8 images (N, D) — or (N, H, W, C), flattened in HWC order — as an integer CSV, atomically."""
    arr = np.asarray(pixels)
    name = Path(path).name
    if arr.ndim < 2 or arr.shape[0] == 0 or arr[0].size == 0:
        raise DataError(f"{name}: need a non-empty (images, values) array to write, got shape {arr.shape}")
    arr = arr.reshape(arr.shape[0], -1)
    if arr.dtype != np.uint8:
        if arr.dtype.kind not in "iuf" or not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 255 or (arr != np.rint(arr)).any():
            raise DataError(f"{name}: pixels must be whole numbers 0-255 (got dtype {arr.dtype}) — convert to uint8 first")
        arr = arr.astype(np.uint8)
    _atomic_write(path, lambda f: _write_table(f, arr, "%d"))


def _write_table(f: BinaryIO, pixels: np.ndarray, fmt: str) -> None:
    """Write rows of uint8 values in ``fmt`` (a printf format for one value) without a per-value loop."""
    strs = [(fmt % v).encode("ascii") for v in range(256)]
    width = max(map(len, strs)) + 1
    table = np.zeros((256, width), np.uint8)
    keep = np.zeros((256, width), bool)
    for v, s in enumerate(strs):
        table[v, : len(s)] = np.frombuffer(s, np.uint8)
        table[v, len(s)] = _COMMA
        keep[v, : len(s) + 1] = True
    table_nl = table.copy()
    table_nl[np.arange(256), [len(s) for s in strs]] = _NL
    rows_per = max(1, (1 << 22) // (pixels.shape[1] * width))
    for i in range(0, len(pixels), rows_per):
        p = pixels[i : i + rows_per]
        text = table[p]
        text[:, -1] = table_nl[p[:, -1]]
        f.write(text[keep[p]].tobytes())


def write_label_csv(path: str | os.PathLike, labels: Iterable) -> None:
    """Write one label per line (class numbers or names), atomically."""
    name = Path(path).name
    out = []
    for i, v in enumerate(np.asarray(labels).reshape(-1).tolist(), 1):
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        s = str(v.decode() if isinstance(v, bytes) else v)
        if not s.strip() or any(c in s for c in ",\r\n"):
            raise DataError(f"{name}: label {i} ({s!r}) is empty or holds a comma or line break — class names must be one plain word or phrase")
        out.append(s)
    data = ("\n".join(out) + "\n").encode("utf-8") if out else b""
    _atomic_write(path, lambda f: f.write(data))


def _atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object], sync: bool = True) -> None:
    """Write through a temporary file next to ``path`` and rename it into place (cnnlab.io.atomic_path)."""
    with atomic_path(path, sync=sync) as tmp, open(tmp, "wb") as f:
        write(f)
