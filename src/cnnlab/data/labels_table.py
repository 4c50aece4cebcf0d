"""Labels tables: a CSV/TSV that names image files and their labels (fastai's `from_csv`, Kaggle's train.csv).

    table = read_labels_table("labels.csv")            # header detected, rows validated
    found = match_files(table, Path("images/"))         # each row's image under the data folder

`read_labels_table` reads and validates the table alone: the header names the file and label columns
(detected by their usual names, or the only column of image file names; `file_col` / `label_col` choose),
the delimiter is `,` `;` or tab (counted on the header line), and a split column (`is_valid` true/false,
or `split` train/valid/test) is read when present. Each row keeps its line number, so every error names it.
With `label_delim` a label cell holds several labels ("cat dog", "cat|dog"): rows carry a label *list*.
A table without a label column whose other columns all hold only 0 and 1 (`file,cat,dog,bird`: Kaggle's planet
and ChestX-ray layout) has one column per class: a row's labels are the columns holding 1, classes in header order.
Rows with several labels or none make the table multi-label (`LabelsTable.multi_label`).

`match_files` finds each row's file under the data folder: the path as written (relative to the folder or to
the table's own folder, never escaping the folder), the same path with an image extension when the table
leaves it out (`0001` -> `0001.jpg`), or a bare file name found once in a subfolder. Rows whose file is
missing and images that no row names are returned, not dropped, so the caller can list them.

`find_naming_table` is the hint for a folder without class subfolders: a CSV beside or inside it naming
its files, to be passed as `--labels`.
"""

from __future__ import annotations

import csv
import io
import os
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path

from cnnlab.data import images
from cnnlab.errors import ConfigError, DataError

# Column names as fastai, Kaggle and spreadsheet users write them (after lower-casing and turning spaces and
# hyphens into "_"), most specific first: a table with both `filename` and `id` takes `filename`.
FILE_COLUMNS = ("fname", "filename", "file_name", "file", "filepath", "file_path", "image_path", "image_file", "image_name",
                "image", "img", "image_id", "imageid", "img_id", "path", "id")
LABEL_COLUMNS = ("label", "labels", "class", "class_name", "classname", "class_label", "classes", "category", "categories",
                 "target", "tags", "tag", "y")
VALID_FLAG_COLUMNS = ("is_valid", "is_val", "is_validation", "valid")  # true: the row is in the validation split
SPLIT_NAME_COLUMNS = ("split", "subset", "set", "partition")  # train / valid / test per row
SPLIT_VALUES = {"train": "train", "training": "train", "trn": "train",
                "val": "val", "valid": "val", "validation": "val", "dev": "val", "eval": "val",
                "test": "test", "testing": "test"}
TRUE_VALUES, FALSE_VALUES = {"true", "1", "yes", "y", "t"}, {"false", "0", "no", "n", "f"}
ONE_HOT_VALUES = {"0": False, "1": True, "0.0": False, "1.0": True}  # a one-hot class column's cells (pandas writes 1.0)
TABLE_DELIMITERS = (",", "\t", ";")  # "|" is left to labels ("cat|dog"), never a column separator
TABLE_SUFFIXES = (".csv", ".tsv")  # what `--data FILE` reads as a labels table
SHOW = 5  # names/lines listed in a message before "and N more"


@dataclass(frozen=True)
class TableRow:
    line: int  # line of the file (the header is line 1 when it is the first line)
    file: str  # the file column, stripped, "\" as "/", "./" and "a//b" collapsed
    labels: tuple[str, ...]  # one label; with label_delim any number (several: multi-label, none: no class)
    split: str | None = None  # "train" | "val" | "test" from a split column, else None


@dataclass
class LabelsTable:
    path: Path
    file_col: str
    label_col: str
    split_col: str | None
    delimiter: str
    label_delim: str | None
    rows: list[TableRow]
    repeated: list[tuple[int, int]] = field(default_factory=list)  # (line, earlier line) of rows that repeat a row exactly
    class_cols: list[str] | None = None  # one 0/1 column per class (label_col is then ""), in header order

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def label_source(self) -> str:
        """Where the labels come from, in words: "label column 'tags'" or "one 0/1 column per class (cat, dog)"."""
        if self.class_cols is not None:
            return f"one 0/1 column per class ({names_text(self.class_cols)})"
        return f"label column {self.label_col!r}"

    @property
    def multi_label(self) -> bool:
        return any(len(r.labels) != 1 for r in self.rows)


@dataclass
class TableMatch:
    found: list[tuple[TableRow, Path]]  # rows whose image exists, in table order, with its path
    missing: list[tuple[TableRow, Path]]  # rows whose file does not exist, with where it was looked for
    unlabelled: list[Path]  # images under the folder that no row names
    repeated: list[tuple[int, int]] = field(default_factory=list)  # (line, earlier line): two spellings of one file, same labels


def lines_text(lines: list[int]) -> str:
    """'line 4' / 'lines 4, 9, 12' / 'lines 4, 9, 12, 13, 20 and 7 more'."""
    shown = ", ".join(str(n) for n in lines[:SHOW])
    more = f" and {len(lines) - SHOW} more" if len(lines) > SHOW else ""
    return f"line{'s' if len(lines) > 1 else ''} {shown}{more}"


def names_text(names: list[str]) -> str:
    return ", ".join(names[:SHOW]) + (f" and {len(names) - SHOW} more" if len(names) > SHOW else "")


# ---------------------------------------------------------------- reading


def read_labels_table(path: str | os.PathLike, *, file_col: str | None = None, label_col: str | None = None,
                      label_delim: str | None = None) -> LabelsTable:
    """Read and validate a labels table; every problem is a one-line DataError/ConfigError naming the file and line."""
    path = Path(path)
    if label_delim is not None and label_delim == "":
        raise ConfigError("label_delim is empty — give the character between labels, e.g. ' ' or '|'")
    text = _read_text(path)
    delimiter = _detect_delimiter(path, text)
    records = _records(path, text, delimiter)
    if not records:
        raise DataError(f"{path}: is empty — a labels table needs a header row (e.g. file,label) and one row per image")
    header_line, header = records[0]
    header = [h.strip() for h in header]
    body = records[1:]
    fcol, lcol, scol, class_cols = _choose_columns(path, header_line, header, body, file_col, label_col)
    if not body:
        raise DataError(f"{path}: has a header but no rows — add one row per image ({header[fcol]}{delimiter}{header[lcol]})")
    if class_cols is not None:
        return _read_one_hot(path, header_line, header, body, fcol, scol, class_cols, delimiter, label_delim)
    needed = max(c for c in (fcol, lcol, scol) if c is not None)
    rows: list[TableRow] = []
    empty_files, empty_labels = [], []
    for line, rec in body:
        if len(rec) <= needed or (len(rec) > len(header) and any(v.strip() for v in rec[len(header):])):
            raise DataError(f"{path} line {line}: has {len(rec)} fields but the header (line {header_line}) has {len(header)}"
                            f" — quote values that contain {_delim_name(delimiter)}, or fix the row")
        file = normalise_file(rec[fcol])
        raw_label = rec[lcol].strip()
        if not file:
            empty_files.append(line)
        if label_delim is None:
            labels = (raw_label,) if raw_label else ()
        else:
            labels = split_labels(raw_label, label_delim)
        if not raw_label:
            empty_labels.append(line)
        split = _parse_split(path, line, header[scol], rec[scol]) if scol is not None else None
        rows.append(TableRow(line, file, labels, split))
    if empty_files:
        raise DataError(f"{path}: the file column {header[fcol]!r} is empty on {lines_text(empty_files)} — name each row's image file")
    if empty_labels and label_delim is None:
        seps = [d for d in ("|", " ", ";") if any(d in r.labels[0] for r in rows if r.labels)]  # "cat|dog": a multi-label table
        hint = f", or read it as multi-label (several labels or none per image) with --label-delim {seps[0]!r}" if seps else ""
        raise DataError(f"{path}: the label column {header[lcol]!r} is empty on {lines_text(empty_labels)}"
                        f" — give those rows a label or remove them{hint}")
    if label_delim is not None and not any(len(r.labels) > 1 for r in rows):
        if empty_labels:
            raise DataError(f"{path}: the label column {header[lcol]!r} is empty on {lines_text(empty_labels)}"
                            " — give those rows a label or remove them")
        raise ConfigError(f"{path}: label_delim {label_delim!r} splits no label of column {header[lcol]!r} (every row has one label)"
                          " — drop --label-delim for single-label data")
    rows, repeated = _drop_repeats(path, rows)
    return LabelsTable(path, header[fcol], header[lcol], header[scol] if scol is not None else None, delimiter, label_delim,
                       rows, repeated)


def _read_one_hot(path: Path, header_line: int, header: list[str], body, fcol: int, scol: int | None, class_cols: list[int],
                  delimiter: str, label_delim: str | None) -> LabelsTable:
    """Rows of a table with one 0/1 column per class: each row's labels are the columns that hold 1."""
    needed = max([fcol, *class_cols] + ([scol] if scol is not None else []))
    rows, empty_files = [], []
    for line, rec in body:
        if len(rec) <= needed or (len(rec) > len(header) and any(v.strip() for v in rec[len(header):])):
            raise DataError(f"{path} line {line}: has {len(rec)} fields but the header (line {header_line}) has {len(header)}"
                            f" — quote values that contain {_delim_name(delimiter)}, or fix the row")
        file = normalise_file(rec[fcol])
        if not file:
            empty_files.append(line)
        labels = tuple(header[c] for c in class_cols if ONE_HOT_VALUES[rec[c].strip()])
        split = _parse_split(path, line, header[scol], rec[scol]) if scol is not None else None
        rows.append(TableRow(line, file, labels, split))
    if empty_files:
        raise DataError(f"{path}: the file column {header[fcol]!r} is empty on {lines_text(empty_files)} — name each row's image file")
    rows, repeated = _drop_repeats(path, rows)
    return LabelsTable(path, header[fcol], "", header[scol] if scol is not None else None, delimiter, label_delim, rows, repeated,
                       class_cols=[header[c] for c in class_cols])


def _one_hot_columns(body: list[tuple[int, list[str]]], cols: list[int]) -> bool:
    """Every cell of these columns (two or more) holds 0 or 1: one column per class."""
    return len(cols) >= 2 and bool(body) and all(rec[c].strip() in ONE_HOT_VALUES for _, rec in body for c in cols if c < len(rec))


def normalise_file(value: str) -> str:
    value = value.strip().replace("\\", "/")
    if not value:
        return ""
    out = posixpath.normpath(value)
    return "" if out == "." else out


def split_labels(value: str, delim: str) -> tuple[str, ...]:
    """'cat dog' -> ('cat', 'dog'); whitespace delimiters split on runs of whitespace; empty parts and repeats dropped."""
    parts = value.split() if not delim.strip() else value.split(delim)
    out: list[str] = []
    for p in (p.strip() for p in parts):
        if p and p not in out:
            out.append(p)
    return tuple(out)


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such labels file — pass the CSV that names each image and its label") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not a labels file — pass the CSV that names each image and its label") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read the labels file ({e.strerror or e.__class__.__name__})") from None
    if b"\x00" in data:
        raise DataError(f"{path}: holds NUL bytes, so it is not a text table — export the labels as a UTF-8 CSV")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(f"{path} line {line}: byte 0x{data[e.start]:02x} is not UTF-8 — save the table as UTF-8 CSV") from None


def _delim_name(d: str) -> str:
    return {"\t": "tabs", ",": "commas", ";": "semicolons"}.get(d, repr(d))


def _detect_delimiter(path: Path, text: str) -> str:
    """The separator that occurs most often (outside quotes) on the header line: the header names the columns, so it
    holds no stray commas or semicolons the way label or path values can."""
    line, header = next(((i, ln) for i, ln in enumerate(text.splitlines(), 1) if ln.strip()), (1, ""))
    counts = dict.fromkeys(TABLE_DELIMITERS, 0)
    quoted = False
    for ch in header:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch in counts:
            counts[ch] += 1
    best = max(TABLE_DELIMITERS, key=lambda d: counts[d])  # ties: the order of TABLE_DELIMITERS
    if counts[best] == 0:
        if not header:
            raise DataError(f"{path}: is empty — a labels table needs a header row (e.g. file,label) and one row per image")
        raise DataError(f"{path} line {line}: one column ({header.strip()[:60]!r}) — a labels table needs a file column and a label"
                        " column, separated by commas, semicolons or tabs (e.g. file,label)")
    return best


def _records(path: Path, text: str, delimiter: str) -> list[tuple[int, list[str]]]:
    """(first line, fields) of every non-blank record; a row of empty fields (Excel's ',,') counts as blank."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    out, last = [], 0
    try:
        for rec in reader:
            start, last = last + 1, reader.line_num
            if any(v.strip() for v in rec):
                out.append((start, rec))
    except csv.Error as e:
        raise DataError(f"{path} line {reader.line_num}: not readable as a table ({e}) — check the quotes on that line") from None
    return out


def _normal_name(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


def _column(path: Path, header: list[str], name: str, option: str) -> int:
    for i, h in enumerate(header):
        if h == name:
            return i
    matches = [i for i, h in enumerate(header) if _normal_name(h) == _normal_name(name)]
    if len(matches) == 1:
        return matches[0]
    raise ConfigError(f"{path}: no column {name!r} for {option} — the header has {', '.join(map(repr, header))}")


def _by_name(header: list[str], names: tuple[str, ...], taken: set[int]) -> int | None:
    normal = [_normal_name(h) for h in header]
    for n in names:
        if n in normal and normal.index(n) not in taken:
            return normal.index(n)
    return None


def _holds_image_names(body: list[tuple[int, list[str]]], col: int) -> bool:
    values = [rec[col].strip() for _, rec in body[:500] if col < len(rec) and rec[col].strip()]
    return bool(values) and all(images.is_image_file(v.replace("\\", "/")) for v in values)


def _choose_columns(path: Path, header_line: int, header: list[str], body, file_col,
                    label_col) -> tuple[int, int | None, int | None, list[int] | None]:
    """(file column, label column, split column, one-hot class columns): the label column is None when the labels are
    one 0/1 column per class."""
    cols = ", ".join(repr(h) for h in header)
    if any(images.is_image_file(h.replace("\\", "/")) for h in header):  # a table without a header row
        first = next(h for h in header if images.is_image_file(h.replace("\\", "/")))
        raise DataError(f"{path} line {header_line}: looks like data ({first[:60]!r}), not a header — add a first line naming the"
                        " columns, e.g. file,label")
    fcol = _column(path, header, file_col, "file_col") if file_col is not None else None
    lcol = _column(path, header, label_col, "label_col") if label_col is not None else None
    if fcol is not None and fcol == lcol:
        raise ConfigError(f"{path}: file_col and label_col both name column {header[fcol]!r} — choose two columns")
    if fcol is None:
        fcol = _by_name(header, FILE_COLUMNS, {lcol} - {None})
    if lcol is None:
        lcol = _by_name(header, LABEL_COLUMNS, {fcol} - {None})
    scol = _by_name(header, VALID_FLAG_COLUMNS + SPLIT_NAME_COLUMNS, {fcol, lcol} - {None})
    if fcol is None:
        candidates = [i for i in range(len(header)) if i not in (lcol, scol) and _holds_image_names(body, i)]
        if len(candidates) > 1:
            raise ConfigError(f"{path}: columns {', '.join(repr(header[i]) for i in candidates)} all hold image file names"
                              " — choose one with --file-col NAME")
        fcol = candidates[0] if candidates else None
    if fcol is None:
        raise DataError(f"{path}: no file column among {cols} — name it fname, file, filename, image, image_id, id or path,"
                        " or choose it with --file-col NAME")
    class_cols = None
    if lcol is None:
        rest = [i for i in range(len(header)) if i not in (fcol, scol)]
        if _one_hot_columns(body, rest):
            class_cols = rest
        elif len(rest) != 1:
            raise (DataError if not rest else ConfigError)(
                f"{path}: no label column among {cols} — name it label, labels, class, target or category,"
                " choose it with --label-col NAME, or give one column per class holding only 0 and 1")
        else:
            lcol = rest[0]
    for i in {fcol, lcol, scol, *(class_cols or [])} - {None}:
        if sum(_normal_name(h) == _normal_name(header[i]) for h in header) > 1:
            raise DataError(f"{path}: column {header[i]!r} appears twice in the header — rename one")
    return fcol, lcol, scol, class_cols


def _parse_split(path: Path, line: int, col: str, value: str) -> str:
    v = value.strip().lower()
    if _normal_name(col) in VALID_FLAG_COLUMNS:
        if v in TRUE_VALUES:
            return "val"
        if v in FALSE_VALUES:
            return "train"
        raise DataError(f"{path} line {line}: {col} is {value.strip()!r} — expected true/false (or 1/0)")
    if v in SPLIT_VALUES:
        return SPLIT_VALUES[v]
    raise DataError(f"{path} line {line}: {col} is {value.strip()!r} — expected train, valid (val, validation) or test")


def _drop_repeats(path: Path, rows: list[TableRow]) -> tuple[list[TableRow], list[tuple[int, int]]]:
    """Rows naming the same file: the same labels and split count once; different ones are an error naming both lines."""
    first: dict[str, TableRow] = {}
    kept, repeated = [], []
    for r in rows:
        prev = first.get(r.file)
        if prev is None:
            first[r.file] = r
            kept.append(r)
        elif (prev.labels, prev.split) == (r.labels, r.split):
            repeated.append((r.line, prev.line))
        else:
            raise conflict_error(path, r.file, prev, r)
    return kept, repeated


def conflict_error(path: Path, file: str, a: TableRow, b: TableRow) -> DataError:
    what = (f"labels {' '.join(a.labels)!r} and {' '.join(b.labels)!r}" if a.labels != b.labels
            else f"splits {a.split or 'none'!r} and {b.split or 'none'!r}")
    return DataError(f"{path}: lines {a.line} and {b.line} both name {file!r} with different {what} — keep one of them")


# ---------------------------------------------------------------- matching rows to files


def _inside(rel: str) -> bool:
    return rel != ".." and not rel.startswith("../") and not posixpath.isabs(rel)


def _relative_to(p: str, root_forms: list[str]) -> str | None:
    for r in root_forms:
        rel = os.path.relpath(p, r).replace(os.sep, "/")
        if _inside(rel):
            return rel
    return None


def match_files(table: LabelsTable, root: str | os.PathLike, base: str | os.PathLike | None = None) -> TableMatch:
    """Find each row's image under `root` (paths relative to `root`, or to `base`: the table's folder).

    Raises DataError for a path that leaves `root`, a name that matches two images, two rows that reach one file
    with different labels, and a table none of whose files exist."""
    from cnnlab.data.sources import walk_files  # noqa: PLC0415  (sources imports this module)

    root = Path(root)
    root_abs = os.path.normpath(os.path.abspath(root))
    root_forms = list(dict.fromkeys([root_abs, os.path.realpath(root_abs)]))
    base_abs = os.path.normpath(os.path.abspath(base)) if base is not None else root_abs
    index = [p.relative_to(root).as_posix() for p in walk_files(root) if images.is_image_file(p)]
    by_stem: dict[str, list[str]] = {}
    by_name: dict[str, list[str]] = {}
    by_name_stem: dict[str, list[str]] = {}
    for rel in index:
        stem = rel[: -len(posixpath.splitext(rel)[1])]
        by_stem.setdefault(stem, []).append(rel)
        by_name.setdefault(posixpath.basename(rel), []).append(rel)
        by_name_stem.setdefault(posixpath.basename(stem), []).append(rel)

    def one(r: TableRow, options: list[str], what: str) -> str | None:
        if len(options) > 1:
            raise DataError(f"{table.path} line {r.line}: {r.file!r} matches {options[0]!r} and {options[1]!r}{what} in {root}"
                            " — give the extension or the path in the table")
        return options[0] if options else None

    found, missing, repeated = [], [], []
    used: dict[str, TableRow] = {}
    for r in table.rows:
        if posixpath.isabs(r.file):
            rel = _relative_to(r.file, root_forms)
            candidates = [rel] if rel is not None else []
        else:
            candidates = [r.file] if _inside(r.file) else []
            if base_abs != root_abs:
                rel = _relative_to(os.path.normpath(os.path.join(base_abs, r.file)), root_forms)
                if rel is not None and rel not in candidates:
                    candidates.append(rel)
        if not candidates:
            raise DataError(f"{table.path} line {r.line}: {r.file!r} is outside the data folder {root} — paths in the table must"
                            " stay inside it (relative to it or to the table's folder)")
        hit = None
        for rel in candidates:
            if os.path.isfile(os.path.join(root_abs, rel)):
                hit = rel
            elif not images.is_image_file(rel):  # no image extension: 0001 -> 0001.jpg
                hit = one(r, by_stem.get(rel, []), "")
            if hit is None and "/" not in rel:  # a bare name, found once in a subfolder
                hit = one(r, by_name.get(rel, []) or ([] if images.is_image_file(rel) else by_name_stem.get(rel, [])),
                          " (file names in different subfolders)")
            if hit is not None:
                break
        if hit is None:
            missing.append((r, root / candidates[0]))
            continue
        prev = used.get(hit)
        if prev is not None:
            if (prev.labels, prev.split) != (r.labels, r.split):
                raise conflict_error(table.path, hit, prev, r)
            repeated.append((r.line, prev.line))
            continue
        used[hit] = r
        found.append((r, root / hit))
    if not found:
        r, where = missing[0]
        raise DataError(f"{table.path}: none of the {len(missing)} files it names are in {root} (line {r.line}: {r.file!r},"
                        f" looked for {str(where)!r}) — pass the folder the table's paths are relative to")
    unlabelled = [root / rel for rel in index if rel not in used]
    return TableMatch(found, missing, unlabelled, repeated)


# ---------------------------------------------------------------- a table beside a folder without class subfolders


def find_naming_table(folder: str | os.PathLike, max_bytes: int = 2 << 20) -> Path | None:
    """A .csv/.tsv inside `folder` or beside it (in its parent) that names one of the images directly in `folder`."""
    folder = Path(folder)
    try:
        names = {n for p in folder.iterdir() if images.is_image_file(p) for n in (p.name, p.stem)}
        candidates = [p for d in (folder, folder.parent) for p in sorted(d.iterdir())
                      if p.suffix.lower() in TABLE_SUFFIXES and p.is_file()]
    except OSError:
        return None
    if not names:
        return None
    for table in candidates[:20]:
        try:
            with open(table, "rb") as f:
                text = f.read(max_bytes).decode("utf-8", errors="replace")
        except OSError:
            continue
        for token in re.split(r"[,;\t\r\n\"']", text):
            token = token.strip().replace("\\", "/")
            if token in names or token.rsplit("/", 1)[-1] in names:
                return table
    return None
