"""The probe's cases (issue #21): bad and awkward inputs across data, the command line, model files, signals and the
server, one row each. tests/test_probe.py runs them; RELIABILITY.md's probe table is generated from them
(`python tests/probe_cases.py` prints it, and a test keeps the two in sync).

A case's command runs in its own empty folder (the test's tmp_path), after its setup wrote the files it names, so
paths in commands and messages are short and relative. `message` is a regex searched in the command's one-line error
(exit 1 or 2), in its whole output (exit 0, 130, 143), or in a request's JSON `detail`; `changes` are glob patterns of
the files the command may change or create — every other file that existed before must be byte-identical after it, and
a failing command creates nothing. A case with `open` set states what should happen for a defect not fixed yet; it runs
as a strict xfail, so the fix makes it fail until the row loses its `open`.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

AREAS = ("data", "cli", "model-file", "signal", "server")
SHAPES = "builtin:shapes?n=64&size=16&classes=2"  # the shared model's data: 16 px circles and squares
TINY = "--model seed_cnn --epochs 1 --batch-size 16 --no-tensorboard --quiet"  # shown as … in the table
RUN2 = f"train --data {SHAPES} --model seed_cnn --epochs 2 --batch-size 16 --deterministic --no-tensorboard --quiet"  # the interrupted runs
LONG = "models-exported-for-the-probe-under-a-folder-name-long-enough-to-push-the-message-past-its-limit"


@dataclass
class Shared:
    """What the module fixture prepared once, copied into a case's folder when the case needs it (never used in place)."""

    run: Path
    onnx_run: Path
    interrupted: Path  # RUN2 stopped by SIGINT at its second batch (last.ckpt at epoch 1, batch 2)


Setup = Callable[[Path, Shared], None]


@dataclass(frozen=True)
class Case:
    id: str
    area: str
    what: str  # the input, in words
    command: str  # cnnlab's arguments (shell words), or for the server "METHOD /path [body]"
    code: int  # exit code (HTTP status for requests)
    message: str  # regex: the message names the file/flag/field and the fix
    setup: tuple[Setup, ...] = ()
    changes: tuple[str, ...] = ()  # files (glob, relative) the command may change or create
    # signal cases: send `signals` (names) when `hook` ("module:function") is called for the `at`-th time
    hook: str | None = None
    at: int = 1
    signals: tuple[str, ...] = ()
    then: str | None = None  # a follow-up command that must exit 0 (e.g. the resume the message names)
    identical: bool = False  # after `then`, run/model.safetensors must be bit-identical to an uninterrupted run's
    process: bool = False  # a real `python -m cnnlab` process (only where a signal cannot be sent in-process)
    request: Callable[[], tuple[str, str, dict]] | None = None  # server: (method, path, httpx keywords)
    open: str | None = None  # a known defect not fixed yet (where, what): the case states what should happen, xfail until then

    @property
    def gist(self) -> str:
        """The message regex in words, for the table."""
        text = re.sub(r"\[\\d\.\]\+|\[0-9;\]\+|\[0-9\.\]\+|\\d\+?", "N", self.message)
        text = text.replace(".*", " … ").replace("\\b", "").replace("^", "").replace("$", "")
        text = re.sub(r"\\(.)", r"\1", text)
        return re.sub(r"\s+", " ", text).strip()


# ------------------------------------------------------------------ setup steps (each writes into the case's folder)


def _png_bytes(size=(16, 16), mode="RGB", value=128, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, value if mode in ("L", "1", "P", "I;16") else (value, 255 - value, 40)).save(buf, fmt, **kw)
    return buf.getvalue()


def _noise_bytes(fmt="JPEG", size=32) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, fmt, quality=95)
    return buf.getvalue()


def _declared_png(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height pixels, with a tiny (wrong) body: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def raw(rel: str, data: bytes | str) -> Setup:
    def step(root: Path, shared: Shared) -> None:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
    return step


def image(rel: str, **kw) -> Setup:
    return raw(rel, _png_bytes(**kw) if not rel.endswith((".jpg", ".jpeg")) else _png_bytes(fmt="JPEG", **kw))


def folder(rel: str, classes: dict[str, int], size: int = 16) -> Setup:
    """Class subfolders of `size` px PNGs (class i's images are of grey level 40 + 60 i, with a little noise)."""
    def step(root: Path, shared: Shared) -> None:
        rng = np.random.default_rng(0)
        for i, (name, n) in enumerate(classes.items()):
            d = root / rel / name
            d.mkdir(parents=True, exist_ok=True)
            for j in range(n):
                px = np.clip(40 + 60 * i + rng.integers(-20, 20, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(px).save(d / f"{j}.png")
    return step


def seed_csv(rel: str, n: int = 20, size: int = 16, labels: list | None = None) -> Setup:
    """The seed's layout: input.csv (one image of size x size x 3 per line) + labels.csv."""
    def step(root: Path, shared: Shared) -> None:
        d = root / rel
        d.mkdir(parents=True, exist_ok=True)
        x = np.random.default_rng(1).integers(0, 256, (n, size * size * 3))
        np.savetxt(d / "input.csv", x, fmt="%d", delimiter=",")
        (d / "labels.csv").write_text("\n".join(str(v) for v in (labels if labels is not None else [i % 2 for i in range(n)])) + "\n")
    return step


def edit(rel: str, fn: Callable[[str], str]) -> Setup:
    def step(root: Path, shared: Shared) -> None:
        p = root / rel
        p.write_text(fn(p.read_text()))
    return step


def npz(rel: str, **arrays) -> Setup:
    def step(root: Path, shared: Shared) -> None:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        np.savez(root / rel, **arrays)
    return step


def symlink(rel: str, target: str) -> Setup:
    def step(root: Path, shared: Shared) -> None:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, root / rel)
    return step


def run_copy(rel: str = "run", onnx: bool = False) -> Setup:
    """A copy of the shared trained run (with its ONNX export when `onnx`)."""
    def step(root: Path, shared: Shared) -> None:
        shutil.copytree(shared.onnx_run if onnx else shared.run, root / rel, symlinks=True)
    return step


def unfinished(rel: str = "run") -> Setup:
    """Make a run folder look interrupted after its first checkpoint: no model file, run.json status `interrupted`."""
    def step(root: Path, shared: Shared) -> None:
        (root / rel / "model.safetensors").unlink()
        info = json.loads((root / rel / "run.json").read_text())
        (root / rel / "run.json").write_text(json.dumps({**info, "status": "interrupted"}))
    return step


def ckpt_tensor(rel: str, name: str, shape: tuple[int, ...]) -> Setup:
    """Replace one model tensor of a checkpoint with zeros of another shape (the checkpoint of another architecture)."""
    def step(root: Path, shared: Shared) -> None:
        import torch

        state = torch.load(root / rel, weights_only=True)
        state["model"][name] = torch.zeros(shape)
        torch.save(state, root / rel)
    return step


def interrupted_run(rel: str = "run") -> Setup:
    """A copy of the shared interrupted run (RUN2 stopped by SIGINT in epoch 1)."""
    def step(root: Path, shared: Shared) -> None:
        shutil.copytree(shared.interrupted, root / rel, symlinks=True)
    return step


def model_copy(rel: str = "m.safetensors") -> Setup:
    def step(root: Path, shared: Shared) -> None:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared.run / "model.safetensors", root / rel)
    return step


def cut(rel: str, keep: int) -> Setup:
    """Keep the first `keep` bytes of a file (negative: all but the last -keep)."""
    def step(root: Path, shared: Shared) -> None:
        data = (root / rel).read_bytes()
        (root / rel).write_bytes(data[:keep])
    return step


def safetensors_header(rel: str, change: Callable[[dict], dict]) -> Setup:
    """Rewrite the JSON header of a .safetensors file (its metadata) and keep the tensors."""
    def step(root: Path, shared: Shared) -> None:
        data = (root / rel).read_bytes()
        n = struct.unpack("<Q", data[:8])[0]
        header = change(json.loads(data[8:8 + n]))
        text = json.dumps(header).encode()
        text += b" " * (-len(text) % 8)
        (root / rel).write_bytes(struct.pack("<Q", len(text)) + text + data[8 + n:])
    return step


def meta(change: Callable[[dict], None]) -> Callable[[dict], dict]:
    """A header change applied to the model metadata (cnnlab's JSON under __metadata__['cnnlab'])."""
    def apply(header: dict) -> dict:
        key = next(k for k in header["__metadata__"])
        value = json.loads(header["__metadata__"][key])
        change(value)
        header["__metadata__"][key] = json.dumps(value)
        return header
    return apply


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))  # relative: the case's folder; the probe asserts it never appears


def pickle_file(rel: str) -> Setup:
    return raw(rel, pickle.dumps({"model": _Payload()}, protocol=4))


def yaml(rel: str, text: str) -> Setup:
    return raw(rel, text)


def locked(rel: str) -> Setup:
    """Another process holds the run folder's lock (the test holds an flock on RUN/.lock for the command's duration)."""
    def step(root: Path, shared: Shared) -> None:
        (root / rel / ".lock").write_text(json.dumps({"pid": 4242, "host": "elsewhere", "started": "2026-12-01T00:00:00"}))
    step.holds_lock = rel  # type: ignore[attr-defined]
    return step


def S(*steps: Setup) -> tuple[Setup, ...]:
    return steps


def _meta_set(key, value):
    return lambda m: m.__setitem__(key, value)


# ------------------------------------------------------------------ the cases

IMG2 = folder("d", {"cat": 4, "dog": 4})  # a small valid image folder

CASES: list[Case] = [
    # ---- data: what --data points at
    Case("data-missing-path", "data", "--data names nothing", f"train --data nowhere {TINY}", 2,
         r"nowhere: no such file or folder — pass a dataset folder, an \.npz file, builtin:shapes or a public dataset name"),
    Case("data-public-near-miss", "data", "a misspelt public dataset name", f"train --data cifar11 {TINY}", 2,
         r"cifar11: no such file or folder \(did you mean cifar10\?\) — pass a dataset folder"),
    Case("data-url", "data", "an https URL as --data", f"train --data https://example.com/cats.zip {TINY}", 2,
         r"https://example\.com/cats\.zip: --data takes local files and folders, never URLs — download the dataset and pass its folder"),
    Case("data-empty-folder", "data", "an empty folder", f"train --data d {TINY}", 2,
         r"d: no class subfolders — put images in one folder per class", S(lambda r, s: (r / "d").mkdir())),
    Case("data-one-class", "data", "one class folder of 4 images", f"train --data d {TINY}", 2,
         r"d: found 1 class \('cat'\) — a classifier needs at least 2 classes", S(folder("d", {"cat": 4}))),
    Case("data-empty-class", "data", "class folder `dog` is empty", f"train --data d {TINY}", 2,
         r"d/dog: class folder has no images \(jpg, png, .*\) — add images or remove the folder",
         S(folder("d", {"cat": 4}), lambda r, s: (r / "d" / "dog").mkdir())),
    Case("data-only-text-files", "data", "class folders holding only .txt files", f"train --data d {TINY}", 2,
         r"d/cat: class folder has no images .*`cnnlab data check` lists what it ignored", S(raw("d/cat/a.txt", "x"), raw("d/dog/b.txt", "y"))),
    Case("data-all-corrupt", "data", "every image is text named .png", f"train --data d {TINY}", 2,
         r"8 of 8 images are unreadable .*first: d/cat/0\.png: not an image file .* — remove or fix them, or raise --max-bad-fraction",
         S(*[raw(f"d/{c}/{i}.png", "not an image") for c in ("cat", "dog") for i in range(4)])),
    Case("data-symlink-loop-root", "data", "--data is a symlink pointing at itself", f"train --data loop {TINY}", 2,
         r"loop: a symbolic link to 'loop', which leads nowhere \(a loop, or its target is gone\) — fix the link", S(symlink("loop", "loop"))),
    Case("data-symlink-dir-cycle", "data", "a class folder holding a link to its parent (a directory cycle; awkward, valid)", "data check d", 0,
         r"d \(image-folder\): 2 classes, 8 images checked, 0 bad", S(IMG2, symlink("d/cat/deeper", ".."))),
    Case("data-bomb-header", "data", "a PNG declaring 100000x100000 pixels in a class folder", f"train --data d {TINY}", 2,
         r"1 of 9 images are unreadable .*first: d/cat/huge\.png: too many pixels .*decompression bomb — remove or fix them, or raise"
         r" --max-bad-fraction", S(IMG2, raw("d/cat/huge.png", _declared_png(100000, 100000)))),
    Case("data-truncated-jpeg", "data", "a JPEG cut short", f"train --data d {TINY}", 2,
         r"first: d/dog/cut\.jpg: truncated image file .*re-download or re-export it — remove or fix them",
         S(IMG2, raw("d/dog/cut.jpg", _noise_bytes()[:700]))),
    Case("data-zero-byte", "data", "a 0-byte .png", f"train --data d {TINY}", 2,
         r"first: d/dog/zero\.png: file is empty \(0 bytes\) — remove or fix them, or raise --max-bad-fraction", S(IMG2, raw("d/dog/zero.png", b""))),
    Case("data-check-lists-bad", "data", "data check of a folder with a 0-byte .png", "data check d", 2,
         r"1 of 9 images are unreadable — training skips them up to --max-bad-fraction .*; fix or remove them", S(IMG2, raw("d/dog/zero.png", b""))),
    Case("data-unicode-space-path", "data", "folder and class names with spaces, accents and CJK (valid)", "data check 'my data/é 猫'", 0,
         r"my data/é 猫 \(image-folder\): 2 classes, 8 images checked, 0 bad", S(folder("my data/é 猫", {"chat noir": 4, "犬": 4}))),
    Case("data-mixed-modes", "data", "greyscale, RGBA, palette and 16-bit PNGs mixed in (valid)", "data check d", 0,
         r"d \(image-folder\): 2 classes, 12 images checked, 0 bad",
         S(IMG2, image("d/cat/g.png", mode="L"), image("d/cat/a.png", mode="RGBA"), image("d/dog/p.png", mode="P"),
           image("d/dog/i16.png", mode="I;16"))),
    Case("data-npz-not-zip", "data", "a .npz that is random bytes", f"train --data x.npz {TINY}", 2,
         r"x\.npz: not a readable \.npz file \(not a zip archive\) — save with np\.savez", S(raw("x.npz", os.urandom(64)))),
    Case("data-npz-pickle", "data", "a .npz holding an object array (would need pickle)", f"train --data x.npz {TINY}", 2,
         r"x\.npz: cannot read without pickle \(Object arrays cannot be loaded when allow_pickle=False\) — save plain arrays with np\.savez",
         S(npz("x.npz", x=np.array([{"a": 1}, None], dtype=object), y=np.array([0, 1])))),
    Case("data-npz-no-y", "data", "a .npz with x only", f"train --data x.npz {TINY}", 2,
         r"x\.npz: no array 'y' \(found x\) — save with np\.savez\(path, x=images, y=labels\)", S(npz("x.npz", x=np.zeros((4, 8, 8, 3), np.uint8)))),
    Case("data-npz-bad-shape", "data", "a .npz whose x is 2-D", f"train --data x.npz {TINY}", 2,
         r"x\.npz: 'x' has shape \(4, 64\) — expected \(N, H, W\) or \(N, H, W, C\) with C 1 or 3",
         S(npz("x.npz", x=np.zeros((4, 64), np.uint8), y=np.array([0, 1, 0, 1])))),
    Case("data-npz-label-count", "data", "a .npz with 4 images and 3 labels", f"train --data x.npz {TINY}", 2,
         r"x\.npz: 'y' has shape \(3,\) but 'x' holds 4 images — one label per image",
         S(npz("x.npz", x=np.zeros((4, 8, 8, 3), np.uint8), y=np.array([0, 1, 0])))),
    Case("data-npz-nan-labels", "data", "a .npz with a NaN label", f"train --data x.npz {TINY}", 2,
         r"x\.npz: labels must be whole numbers or class names", S(npz("x.npz", x=np.zeros((4, 8, 8, 3), np.uint8), y=np.array([0, 1, np.nan, 1])))),
    Case("data-npz-string-pixels", "data", "a .npz whose x holds strings", f"train --data x.npz {TINY}", 2,
         r"x\.npz: 'x' has dtype <U1 — images must be numbers", S(npz("x.npz", x=np.full((4, 8, 8, 3), "a"), y=np.array([0, 1, 0, 1])))),
    Case("data-csv-text-label", "data", "seed labels.csv with `cat` among 0/1 (awkward: labels may be names, `cat` becomes a class)",
         "data check s", 0, r"s \(seed-csv\): 3 classes, 20 images checked",
         S(seed_csv("s"), edit("s/labels.csv", lambda t: t.replace("0\n1\n0\n", "0\n1\ncat\n", 1)))),
    Case("data-csv-semicolons", "data", "seed input.csv separated by semicolons", f"train --data s {TINY}", 2,
         r"input\.csv line 1, column 1: '[0-9;]+\.\.\.' is not a number — pixel values must be numbers 0-255 separated by commas",
         S(seed_csv("s"), edit("s/input.csv", lambda t: t.replace(",", ";")))),
    Case("data-csv-header-row", "data", "seed input.csv with a header line `p0,p1,…`", f"train --data s {TINY}", 2,
         r"input\.csv line 1, column 1: 'p0' is not a number — .*\(remove the header line if the file has one\)",
         S(seed_csv("s"), edit("s/input.csv", lambda t: ",".join(f"p{i}" for i in range(768)) + "\n" + t))),
    Case("data-csv-latin1", "data", "seed labels.csv in Latin-1 with an accented label", f"train --data s {TINY}", 2,
         r"labels\.csv line 1: not UTF-8 text — save the labels as UTF-8",
         S(seed_csv("s"), raw("s/labels.csv", "caf\xe9\n".encode("latin-1") + b"1\n" * 19))),
    Case("data-csv-shape-mismatch", "data", "--image-shape 10,10,3 for 768-value rows", f"train --data s --image-shape 10,10,3 {TINY}", 2,
         r"input\.csv: rows hold 768 values but --image-shape 10,10,3 needs 300 \(H\*W\*C\) — pass the shape", S(seed_csv("s"))),
    Case("data-table-missing-files", "data", "labels table naming files that do not exist", f"train --data t.csv {TINY}", 2,
         r"t\.csv: none of the 2 files it names are in \. \(line 2: 'a\.png'.*\) — pass the folder the table's paths are relative to",
         S(raw("t.csv", "file,label\na.png,cat\nb.png,dog\n"))),
    Case("data-table-escape", "data", "labels table naming ../../../../etc/passwd", f"train --data t.csv {TINY}", 2,
         r"t\.csv line 2: '\.\./\.\./\.\./\.\./etc/passwd' is outside the data folder \. — paths in the table must stay inside it",
         S(IMG2, raw("t.csv", "file,label\n../../../../etc/passwd,cat\nd/cat/0.png,cat\nd/dog/0.png,dog\n"))),
    Case("data-table-header-only", "data", "labels table with a header and no rows", f"train --data t.csv {TINY}", 2,
         r"t\.csv: has a header but no rows — add one row per image", S(raw("t.csv", "file,label\n"))),
    Case("data-table-unknown-column", "data", "--label-col names a column the table lacks", f"train --data t.csv --label-col species {TINY}", 2,
         r"t\.csv: no column 'species' for label_col — the header has 'file', 'label'",
         S(IMG2, raw("t.csv", "file,label\nd/cat/0.png,cat\nd/dog/0.png,dog\n"))),
    Case("data-table-bom-crlf", "data", "labels table with a UTF-8 BOM, CRLF lines and a blank last line (valid)", "data check t.csv", 0,
         r"t\.csv \(.*\): 2 classes, 8 images checked, 0 bad",
         S(IMG2, raw("t.csv", "\ufefffile,label\r\n" + "".join(f"d/{c}/{i}.png,{c}\r\n" for c in ("cat", "dog") for i in range(4)) + "\r\n"))),
    Case("data-builtin-unknown", "data", "builtin:nonesuch", f"train --data builtin:nonesuch {TINY}", 2,
         r"unknown built-in dataset 'builtin:nonesuch' — choose builtin:shapes or builtin:digits"),
    Case("data-builtin-bad-option", "data", "builtin:shapes?n=abc", f"train --data builtin:shapes?n=abc {TINY}", 2,
         r"builtin:shapes\?n=abc: option n='abc' must be a whole number"),
    Case("data-builtin-negative", "data", "builtin:shapes?n=-5", f"train --data builtin:shapes?n=-5 {TINY}", 2,
         r"builtin:shapes\?n=-5: needs n >= 10"),
    Case("data-builtin-unknown-option", "data", "builtin:shapes?colour=red", f"train --data builtin:shapes?colour=red {TINY}", 2,
         r"unknown option 'colour' — builtin:shapes takes n, size, classes, seed, noise"),
    Case("data-convert-into-nonempty", "data", "data convert into a folder that holds a file", "data convert builtin:digits --to folder out", 2,
         r"out: already exists and is not empty — choose another OUT or pass --overwrite", S(raw("out/keep.txt", "mine"))),
    Case("data-convert-out-is-file", "data", "data convert --to csv onto an existing file", "data convert builtin:digits --to csv out", 2,
         r"out: is a file — choose another OUT or pass --overwrite", S(raw("out", "mine"))),
    Case("data-show-out-new-folder", "data", "show --out into a folder that does not exist yet (valid)", f"show --data {SHAPES} --out nodir/x.png", 0,
         r"^saved nodir/x\.png$"),
    Case("data-max-bad-fraction", "data", "--max-bad-fraction 1.5", f"train --data d --max-bad-fraction 1.5 {TINY}", 2,
         r"max_bad_fraction = 1\.5 is invalid — expected a fraction in \[0, 1\]", S(IMG2)),
    Case("data-val-split-too-big", "data", "--val-split 0.99 on 8 images (awkward: trains without validation, and says so)",
         "train --data d --val-split 0.99 --model seed_cnn --epochs 1 --no-tensorboard --out run", 0,
         r"no validation split: --val-split 0\.99 of 8 training images would leave none to train on", S(IMG2)),

    # ---- cli: flags and config files
    Case("cli-unknown-flag", "cli", "a misspelt flag", "train --data d --epocs 3", 2,
         r"unrecognized arguments: --epocs 3 — see `cnnlab train --help`"),
    Case("cli-unknown-command", "cli", "a command that does not exist", "trian --data d", 2,
         r"argument COMMAND: invalid choice: 'trian' \(choose from 'train', .*\) — see `cnnlab --help`"),
    Case("cli-epochs-negative", "cli", "--epochs -1", f"train --data {SHAPES} --epochs -1", 2,
         r"epochs = -1 is invalid — expected a whole number >= 1"),
    Case("cli-epochs-float", "cli", "--epochs 2.5", f"train --data {SHAPES} --epochs 2.5", 2,
         r"argument --epochs: invalid int value: '2\.5' — see `cnnlab train --help`"),
    Case("cli-lr-nan", "cli", "--lr nan", f"train --data {SHAPES} --lr nan", 2, r"lr = nan is invalid — expected a positive number such as 0\.001"),
    Case("cli-lr-inf", "cli", "--lr inf", f"train --data {SHAPES} --lr inf", 2, r"lr = inf is invalid — expected a positive number"),
    Case("cli-batch-zero", "cli", "--batch-size 0", f"train --data {SHAPES} --batch-size 0", 2,
         r"batch_size = 0 is invalid — expected a whole number >= 1"),
    Case("cli-image-size-zero", "cli", "--image-size 0", f"train --data {SHAPES} --image-size 0", 2,
         r"image_size = 0 is invalid — expected a size in pixels >= 8"),
    Case("cli-image-size-huge", "cli", "--image-size 20000 (beyond memory)", f"train --data {SHAPES} --image-size 20000 {TINY}", 2,
         r"images of 20000x20000x3 need [\d.]+ GiB in memory but [\d.]+ GiB is available — choose a smaller --image-size"),
    Case("cli-val-split-one", "cli", "--val-split 1", f"train --data {SHAPES} --val-split 1", 2,
         r"val_split = 1\.0 is invalid — expected a fraction in \[0, 1\)"),
    Case("cli-time-budget-negative", "cli", "--time-budget -5", f"train --data {SHAPES} --time-budget -5", 2,
         r"time_budget = -5\.0 is invalid — expected seconds > 0"),
    Case("cli-nproc-zero", "cli", "--nproc 0", f"train --data {SHAPES} --nproc 0", 2,
         r"argument --nproc: '0' is invalid: expected a whole number of processes >= 1"),
    Case("cli-folds-one", "cli", "--folds 1", f"train --data {SHAPES} --folds 1 {TINY}", 2,
         r"folds = 1 is invalid — cross-validation needs K >= 2 folds"),
    Case("cli-model-arg-unknown", "cli", "--model-arg depth=3 for seed_cnn", f"train --data {SHAPES} --model seed_cnn --model-arg depth=3", 2,
         r"model 'seed_cnn' has no argument 'depth' — valid model arguments: filters, hidden"),
    Case("cli-model-arg-type", "cli", "--model-arg filters=abc", f"train --data {SHAPES} --model seed_cnn --model-arg filters=abc {TINY}", 2,
         r"filters.*'abc'.*(whole number|integer)"),
    Case("cli-aug-arg-unknown", "cli", "--aug-arg wobble=3", f"train --data {SHAPES} --aug-arg wobble=3 {TINY}", 2,
         r"unknown augmentation op 'wobble' — valid ops: hflip, vflip"),
    Case("cli-config-missing", "cli", "--config names no file", "train --config nope.yaml", 2,
         r"config file 'nope\.yaml' does not exist — pass a YAML file"),
    Case("cli-config-list", "cli", "a config file that is a YAML list", "train --config c.yaml", 2,
         r"c\.yaml: expected a mapping of keys to values at the top level",
         S(yaml("c.yaml", "- epochs: 3\n"))),
    Case("cli-config-wrong-type", "cli", "config `epochs: three`", "train --config c.yaml", 2,
         r"c\.yaml: epochs = 'three' has the wrong type — expected int",
         S(yaml("c.yaml", f"data: {SHAPES}\nepochs: three\n"))),
    Case("cli-config-bool-as-int", "cli", "config `batch_size: true`", "train --config c.yaml", 2,
         r"c\.yaml: batch_size = True has the wrong type — expected int",
         S(yaml("c.yaml", f"data: {SHAPES}\nbatch_size: true\n"))),
    Case("cli-config-unknown-key", "cli", "config `learning_rate: 0.1`", "train --config c.yaml", 2,
         r"c\.yaml: unknown key 'learning_rate' — valid keys: .*\blr\b",
         S(yaml("c.yaml", f"data: {SHAPES}\nlearning_rate: 0.1\n"))),
    Case("cli-config-python-tag", "cli", "config with a !!python/object/apply tag (never run)", "train --config c.yaml", 2,
         r"c\.yaml line 1: not valid YAML \(could not determine a constructor for the tag .*python/object/apply:os\.system'\) — fix the syntax",
         S(yaml("c.yaml", "epochs: !!python/object/apply:os.system ['touch PWNED']\n"))),
    Case("cli-config-binary", "cli", "a config file of random bytes", "train --config c.yaml", 2, r"c\.yaml: not a text file — pass a YAML config",
         S(raw("c.yaml", bytes(range(256)) * 4))),
    Case("cli-config-is-folder", "cli", "--config names a folder that holds no config.yaml", "train --config cfg", 2,
         r"cfg: .*(no|without) config\.yaml", S(lambda r, s: (r / "cfg").mkdir())),

    Case("cli-resume-with-options", "cli", "--resume with --epochs", "train --resume run --epochs 3", 2,
         r"--resume continues a run exactly as configured — drop the other options", S(run_copy())),
    Case("cli-resume-missing", "cli", "--resume of a folder that does not exist", "train --resume gone", 2,
         r"gone: no checkpoint to resume from — there is no such run folder; pass the --out folder of an interrupted run"),
    Case("cli-resume-completed", "cli", "--resume of a completed run", "train --resume run", 2,
         r"run: this run already completed — start a new run instead of --resume", S(run_copy())),
    Case("cli-out-holds-run", "cli", "--out of a finished run without --overwrite", f"train --data {SHAPES} {TINY} --out run", 2,
         r"run: already holds a run — pass --overwrite to replace it, or choose another --out", S(run_copy())),
    Case("cli-out-below-file", "cli", "--out below a regular file", f"train --data {SHAPES} {TINY} --out f/run", 2,
         r"f/run: cannot write the run folder \(Not a directory\) — choose a writable --out", S(raw("f", "a file"))),
    Case("cli-out-locked", "cli", "--overwrite a run folder another process holds", f"train --data {SHAPES} {TINY} --out run --overwrite", 2,
         r"run: in use by another cnnlab process \(process 4242 on elsewhere, .*\) — wait for it to end, or choose another --out",
         S(run_copy(), locked("run"))),
    Case("cli-resume-locked", "cli", "--resume a run another process holds", "train --resume run", 2,
         r"run: in use by another cnnlab process \(process 4242 on elsewhere", S(run_copy(), unfinished("run"), locked("run"))),
    Case("cli-top-k-zero", "cli", "predict --top-k 0", "predict run x.png --top-k 0", 2,
         r"--top-k must be a whole number of at least 1 \(the classes listed per image\), got 0", S(run_copy(), image("x.png"))),
    Case("cli-summary-both", "cli", "summary with a run and --model", "summary run --model vgg", 2,
         r"summary needs either MODEL\|RUN_DIR or --model NAME \[--image-size N\] — not both, not neither", S(run_copy())),
    Case("cli-summary-too-small", "cli", "summary of resnet9 at 2 px", "summary --model resnet9 --image-size 2", 2,
         r"model 'resnet9' cannot be built with default arguments: input 2x2 is too small for resnet9 .*\(needs at least 8px\)"),
    Case("cli-summary-torch-text-cut", "cli", "summary of convnext at 8 px: torch's long error, cut between words", "summary --model convnext --image-size 8", 2,
         # torch's wording (and so its length) differs between its convolution paths: whole, or cut after a whole word
         r"convnext does not run on 8x8x3 input \(Calculated padded input size per channel: .*(\w …|\w)\) — try another --image-size"),
    Case("cli-models-bad-size", "cli", "models --image-size -3", "models --image-size -3", 2,
         r"--image-size must be a whole number of pixels of at least 1, got -3"),
    Case("cli-compare-not-run", "cli", "compare a folder that is not a run", "compare notarun", 2,
         r"notarun: missing config\.yaml — not a complete run folder", S(raw("notarun/x.txt", "x"))),
    Case("cli-report-not-run", "cli", "report on a file", "report x.txt", 2, r"x\.txt: not a run folder — pass the folder `cnnlab train` wrote",
         S(raw("x.txt", "x"))),
    Case("cli-tune-zero-trials", "cli", "tune --trials 0", f"tune --data {SHAPES} --trials 0", 2, r"--trials must be >= 1"),
    Case("cli-lr-find-reversed", "cli", "lr-find --start-lr 1 --end-lr 0.001", f"lr-find --data {SHAPES} --start-lr 1 --end-lr 0.001", 2,
         r"lr-find needs 0 < --start-lr < --end-lr"),
    Case("cli-export-format", "cli", "export --format pdf", "export run --format pdf", 2,
         r"--format 'pdf': unknown export format — choose one of: onnx, onnx-fp16, onnx-int8, torchscript, openvino", S(run_copy())),
    Case("cli-export-opset", "cli", "export --opset 3", "export run --format onnx --opset 3", 2,
         r"--opset 3 is not supported — use an opset between 7 and 21", S(run_copy())),
    Case("cli-explain-layer", "cli", "explain --layer nosuch", "explain run x.png --layer nosuch", 2,
         r"no conv layer 'nosuch' in this model — valid layers: conv1, conv2", S(run_copy(), image("x.png"))),
    Case("cli-explain-class", "cli", "explain --class zebra", "explain run x.png --class zebra", 2,
         r"unknown class 'zebra' — this model's classes: circle, square", S(run_copy(), image("x.png"))),
    Case("cli-model-file-not-yaml", "cli", "--model-file with broken YAML", f"train --data {SHAPES} --model-file net.yaml {TINY}", 2,
         r"net\.yaml: not valid YAML/JSON \(while parsing a flow mapping\)", S(yaml("net.yaml", "layers: [ {Conv2D: {filters: 8\n"))),
    Case("cli-model-file-shape", "cli", "--model-file whose 9x9 convolution does not fit after pooling: torch's text cut between words",
         f"train --data {SHAPES} --model-file net.yaml {TINY}", 2,
         r"layer 1 \(Conv2D\): cannot take input of shape \(3, 2, 2\) \(Calculated padded input size per channel: .* [a-z']+ …\)",
         S(yaml("net.yaml", "layers:\n  - MaxPool: {size: 8}\n  - Conv2D: {filters: 4, kernel: 9, padding: 0}\n  - GlobalAvgPool: {}\n"))),

    # ---- model files and run folders
    Case("model-pickle-as-safetensors", "model-file", "a pickle payload named .safetensors (never unpickled)", "predict m.safetensors x.png", 2,
         r"m\.safetensors: not a readable safetensors model file \(.*\) — re-export or retrain it", S(pickle_file("m.safetensors"), image("x.png"))),
    Case("model-zero-bytes", "model-file", "a 0-byte model file", "predict m.safetensors x.png", 2,
         r"m\.safetensors: not a readable safetensors model file \(.*header too small\)", S(raw("m.safetensors", b""), image("x.png"))),
    Case("model-truncated", "model-file", "the model file cut to half", "predict m.safetensors x.png", 2,
         r"m\.safetensors: not a readable safetensors model file \(.*file not fully covered\) — re-export or retrain it",
         S(model_copy(), lambda r, s: cut("m.safetensors", (r / "m.safetensors").stat().st_size // 2)(r, s), image("x.png"))),
    Case("model-huge-header", "model-file", "header length field 2^40", "predict m.safetensors x.png", 2,
         r"m\.safetensors: not a readable safetensors model file \(.*header too large\)",
         S(model_copy(), lambda r, s: (r / "m.safetensors").write_bytes(struct.pack("<Q", 1 << 40) + (r / "m.safetensors").read_bytes()[8:]),
           image("x.png"))),
    Case("model-is-folder", "model-file", "m.safetensors is an empty folder", "predict m.safetensors x.png", 2,
         r"m\.safetensors: no model\.safetensors in this run folder", S(lambda r, s: (r / "m.safetensors").mkdir(), image("x.png"))),
    Case("model-onnx-renamed", "model-file", "an ONNX file renamed .safetensors", "predict m.safetensors x.png", 2,
         r"m\.safetensors: not a readable safetensors model file",
         S(lambda r, s: shutil.copyfile(s.onnx_run / "model.onnx", r / "m.safetensors"), image("x.png"))),
    Case("model-no-metadata", "model-file", "safetensors without cnnlab metadata", "predict m.safetensors x.png", 2,
         r"m\.safetensors: safetensors file without cnnlab metadata — it was not written by cnnlab",
         S(model_copy(), safetensors_header("m.safetensors", lambda h: {k: v for k, v in h.items() if k != "__metadata__"}), image("x.png"))),
    Case("model-class-names-string", "model-file", "class_names is a string", "predict m.safetensors x.png", 2,
         r"m\.safetensors: metadata class_names is not a list of at least 2 class names — the file is damaged",
         S(model_copy(), safetensors_header("m.safetensors", meta(_meta_set("class_names", "ab"))), image("x.png"))),
    Case("model-three-names", "model-file", "3 class names for a 2-class model (1 sigmoid output)", "predict m.safetensors x.png", 2,
         r"m\.safetensors: weights do not match architecture 'seed_cnn': its output layer \(fc2\) has 1 outputs?, but class_names in the"
         r" metadata lists 3 classes .*; restore the original file or retrain the model",
         S(model_copy(), safetensors_header("m.safetensors", meta(_meta_set("class_names", ["a", "b", "c"]))), image("x.png"))),
    Case("model-unknown-arch", "model-file", "metadata names model `alexnet9`", "predict m.safetensors x.png", 2,
         r"m\.safetensors: unknown model 'alexnet9' — choose one of: .*seed_cnn",
         S(model_copy(), safetensors_header("m.safetensors", meta(_meta_set("model", "alexnet9"))), image("x.png"))),
    Case("model-input-shape-text", "model-file", "input_shape is text", "predict m.safetensors x.png", 2,
         r"m\.safetensors: metadata input_shape '3x16x16' is not \[C, H, W\] with positive whole numbers",
         S(model_copy(), safetensors_header("m.safetensors", meta(_meta_set("input_shape", "3x16x16"))), image("x.png"))),
    Case("model-unicode-path", "model-file", "a model file under a path with spaces and CJK (valid)", "predict 'my models/模型 1.safetensors' x.png", 0,
         r"x\.png: (circle|square) \([0-9.]+%\)", S(model_copy("my models/模型 1.safetensors"), image("x.png"))),
    Case("model-evaluate-wrong-data", "model-file", "evaluate a circle/square model on digits", "evaluate run --data builtin:digits", 2,
         r"builtin:digits: classes \['0', .*\] differ from the model's \['circle', 'square'\] — evaluate on data with the same classes",
         S(run_copy())),
    Case("model-evaluate-grey-data", "model-file", "evaluate an RGB model on a folder with greyscale images among RGB (valid)", "evaluate run --data d", 0,
         r"^val: loss [0-9.]+  accuracy [0-9.]+  \(1 images\)",
         S(run_copy(), folder("d", {"circle": 2, "square": 2}), *[image(f"d/{c}/g.png", mode="L") for c in ("circle", "square")])),
    Case("model-ckpt-pickle", "model-file", "last.ckpt is a pickle payload (never unpickled)", "train --resume run", 2,
         r"run/last\.ckpt: unreadable checkpoint — it holds Python objects besides tensors .*; start the run again with: cnnlab train --config"
         r" run/config\.yaml --out run --overwrite", S(run_copy(), unfinished("run"), pickle_file("run/last.ckpt"))),
    Case("model-ckpt-truncated", "model-file", "last.ckpt cut to 300 bytes", "train --resume run", 2,
         r"run/last\.ckpt: unreadable checkpoint — it is damaged \(cut short or overwritten\).*; start the run again with: cnnlab train --config"
         r" run/config\.yaml --out run --overwrite", S(run_copy(), unfinished("run"), cut("run/last.ckpt", 300))),
    Case("model-ckpt-other-shapes", "model-file", "last.ckpt whose conv1 weights have another shape (another architecture's)", "train --resume run", 2,
         r"run/last\.ckpt: .*conv1\.weight", S(run_copy(), unfinished("run"), ckpt_tensor("run/last.ckpt", "conv1.weight", (4, 3, 3, 3)))),
    Case("model-config-edited", "model-file", "RUN/config.yaml edited to `epochs: many`, then --resume (the checkpoint holds the config)",
         "train --resume run", 0, r"warning: report\.html not written \(ConfigError: run/config\.yaml: epochs = 'many' has the wrong type — expected"
         r" int\) — rebuild it with `cnnlab report run`",
         S(run_copy(), unfinished("run"), edit("run/config.yaml", lambda t: t.replace("epochs: 1", "epochs: many"))), changes=("run/*",)),
    Case("model-run-json-garbage", "model-file", "RUN/run.json is not JSON; predict still works (valid)", "predict run x.png", 0,
         r"x\.png: (circle|square) \([0-9.]+%\)", S(run_copy(), raw("run/run.json", "{not json"), image("x.png"))),
    Case("model-metrics-garbage", "model-file", "RUN/metrics.csv holds text where numbers go; compare", "compare run --out cmp", 2,
         r"run/metrics\.csv line 2, column epoch: 'abc' is not a number — was the file edited by hand\?",
         S(run_copy(), raw("run/metrics.csv", "epoch,train_loss\nabc,def\n"))),
    Case("model-onnx-corrupt", "model-file", "RUN/model.onnx is damaged; predict --backend onnxruntime", "predict run x.png --backend onnxruntime", 2,
         r"run/model\.onnx: onnxruntime cannot load it \(\[ONNXRuntimeError\] .*Protobuf parsing failed\.\) — export it again",
         S(run_copy(onnx=True), lambda r, s: (r / "run" / "model.onnx").write_bytes(b"\x08\x07" + b"garbage" * 100), image("x.png"))),
    Case("model-onnx-corrupt-long-path", "model-file", "the same under a long folder name: onnxruntime's text cut between words",
         f"predict {LONG}/run x.png --backend onnxruntime", 2,
         r"model\.onnx: onnxruntime cannot load it \(\[ONNXRuntimeError\] : 7 : INVALID_PROTOBUF : Load model from …\) — export it again",
         S(run_copy(f"{LONG}/run", onnx=True), lambda r, s: (r / LONG / "run" / "model.onnx").write_bytes(b"\x08\x07" + b"garbage" * 100),
           image("x.png"))),
    Case("model-onnx-sidecar-missing", "model-file", "RUN/model.onnx without its JSON sidecar", "predict run x.png --backend onnxruntime", 2,
         r"run: no up-to-date ONNX export beside it — run `cnnlab export run --format onnx` first, or use --backend torch",
         S(run_copy(onnx=True), lambda r, s: [p.unlink() for p in (r / "run").glob("model.onnx.json")], image("x.png"))),
    Case("model-onnx-stale", "model-file", "RUN/model.onnx older than the model file: PyTorch answers (valid)", "predict run x.png", 0,
         r"x\.png: (circle|square) \([0-9.]+%\)", S(run_copy(onnx=True), lambda r, s: os.utime(r / "run" / "model.onnx", (1, 1)), image("x.png"))),
    Case("model-zip-as-model", "model-file", "a zip archive (TorchScript's container) passed as the model", "predict m.torchscript x.png", 2,
         r"m\.torchscript: not a readable safetensors model file", S(raw("m.torchscript", b"PK\x03\x04" + os.urandom(200)), image("x.png"))),
    Case("model-export-unfinished", "model-file", "export of a run without model.safetensors", "export run --format onnx", 2,
         r"run: no model\.safetensors in this run folder \(training did not finish; resume it with `cnnlab train --resume run`\)",
         S(run_copy(), unfinished("run"))),
    Case("model-serve-pickle", "model-file", "serve a pickle payload (refused before anything is bound)", "serve m.safetensors --port 0", 2,
         r"m\.safetensors: not a readable safetensors model file", S(pickle_file("m.safetensors"))),

    # ---- signals at chosen points (in-process: a hook sends the signal to this process; RUN2 = 2 epochs, --deterministic)
    Case("signal-int-epoch1", "signal", "SIGINT at batch 2 of epoch 1, then --resume", f"{RUN2} --out run", 130,
         r"training interrupted \(SIGINT\); state saved in run/last\.ckpt — resume with: cnnlab train --resume run$",
         hook="cnnlab.engine.trainer:train_step", at=2, signals=("SIGINT",), then="train --resume run --quiet", identical=True, changes=("run*",)),
    Case("signal-term-epoch2", "signal", "SIGTERM at batch 4 (epoch 2), then --resume", f"{RUN2} --out run", 143,
         r"training interrupted \(SIGTERM\); state saved in run/last\.ckpt — resume with: cnnlab train --resume run$",
         hook="cnnlab.engine.trainer:train_step", at=4, signals=("SIGTERM",), then="train --resume run --quiet", identical=True, changes=("run*",)),
    Case("signal-int-checkpoint-write", "signal", "SIGINT while epoch 1's checkpoint is written, then --resume", f"{RUN2} --out run", 130,
         r"training interrupted \(SIGINT\); state saved in run/last\.ckpt — resume with: cnnlab train --resume run$",
         hook="cnnlab.engine.trainer:save_checkpoint", at=1, signals=("SIGINT",), then="train --resume run --quiet", identical=True,
         changes=("run*",)),
    Case("signal-int-twice-first-epoch", "signal", "two SIGINTs at batch 1, before the first checkpoint; then the command it names",
         f"{RUN2} --out run",
         130, r"interrupted \(SIGINT\) before the first checkpoint — nothing to resume; start the run again with: cnnlab train --config"
         r" run/config\.yaml --out run --overwrite$",
         hook="cnnlab.engine.trainer:train_step", at=1, signals=("SIGINT", "SIGINT"),
         then="train --config run/config.yaml --out run --overwrite --quiet",
         identical=True, changes=("run*",)),
    Case("signal-int-loading", "signal", "SIGINT while the data loads", f"{RUN2} --out run", 130, r"^interrupted \(SIGINT\)$",
         hook="cnnlab.engine.session:_load_dataset", signals=("SIGINT",)),
    Case("signal-term-loading", "signal", "SIGTERM while the data loads", f"{RUN2} --out run", 143, r"^interrupted \(SIGTERM\)$",
         hook="cnnlab.engine.session:_load_dataset", signals=("SIGTERM",)),
    Case("signal-term-final-files-quiet", "signal", "SIGTERM while the finished run's files are written, with --quiet", f"{RUN2} --out run", 0,
         r"^SIGTERM arrived while the finished run was being written; the run completed first$",
         hook="cnnlab.engine.run_outputs:finish", signals=("SIGTERM",), changes=("run*",)),
    Case("signal-term-last-batch", "signal", "SIGTERM at the very last batch, with --quiet", f"{RUN2} --out run", 0,
         r"^SIGTERM arrived while the finished run was being written; the run completed first$",
         hook="cnnlab.engine.trainer:train_step", at=6, signals=("SIGTERM",), changes=("run*",)),
    Case("signal-term-report", "signal", "SIGTERM while report.html is written", f"{RUN2} --out run", 143,
         r"interrupted while writing run/report\.html — the run is complete; rebuild the report with: cnnlab report run",
         hook="cnnlab.api:write_run_report", signals=("SIGTERM",), changes=("run*",)),
    Case("signal-int-resumed-run", "signal", "SIGINT again in the resumed run (batch 1 after resuming), then --resume",
         "train --resume run", 130, r"training interrupted \(SIGINT\); state saved in run/last\.ckpt — resume with: cnnlab train --resume run$",
         S(interrupted_run("run")), hook="cnnlab.engine.trainer:train_step", at=1, signals=("SIGINT",), then="train --resume run --quiet",
         identical=True, changes=("run/*",)),
    Case("signal-int-evaluate", "signal", "SIGINT during evaluate", f"evaluate run --data {SHAPES}", 130, r"^interrupted$",
         S(run_copy()), hook="cnnlab.api:evaluate", signals=("SIGINT",)),
    Case("signal-int-export", "signal", "SIGINT during export: no model.onnx appears", "export run --format onnx", 130, r"^interrupted$",
         S(run_copy()), hook="torch.onnx:export", signals=("SIGINT",)),
    Case("signal-int-convert", "signal", "SIGINT during data convert --to folder: no OUT folder appears", "data convert d --to folder out", 130,
         r"^interrupted$", S(IMG2), hook="PIL.Image:Image.save", at=3, signals=("SIGINT",)),
    Case("signal-kill-process-resume", "signal", "SIGKILL a real training process after its first checkpoint, then --resume", f"{RUN2} --out run",
         -9, r"", then="train --resume run --quiet", identical=True, process=True),
    Case("signal-int-process-serve", "signal", "SIGINT to a real `cnnlab serve` process", "serve run --port 0 --backend torch", 0,
         r"^serving run \(torch, .*\) on http://127\.0\.0\.1:\d+/",
         S(run_copy()), process=True),
]

# ---- the server: requests to a real `cnnlab serve` app (uvicorn on 127.0.0.1; limits: 200 kB bodies, 1 M pixels, 3 images
# per request), the status and the JSON `detail`; and `cnnlab serve` flags refused before anything is bound
def req(method: str, path: str, ctype: str | None = None, body: bytes | None = None, files: list | None = None,
        data: dict | None = None) -> Callable[[], tuple[str, str, dict]]:
    def build() -> tuple[str, str, dict]:
        kw: dict = {}
        if files is not None or data is not None:
            kw.update(files=files, data=data)
        else:
            kw.update(content=body, headers={"content-type": ctype} if ctype is not None else {})
        return method, path, kw
    return build


PNG16, PDF = _png_bytes(), b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n"
CMYK = _png_bytes(mode="CMYK", fmt="JPEG")


def _request(id, what, shown, code, message, build) -> Case:
    return Case(id, "server", what, shown, code, message, request=build)


SERVER_CASES: list[Case] = [
    _request("server-text-plain", "a PNG sent as text/plain", "POST /v1/predict (text/plain)", 415,
             r"unsupported content type 'text/plain' — send multipart/form-data or an image/\* body",
             req("POST", "/v1/predict", "text/plain", PNG16)),
    _request("server-no-content-type", "a body without a content type", "POST /v1/predict (no content type)", 415,
             r"unsupported content type '\(none\)'", req("POST", "/v1/predict", None, PNG16)),
    _request("server-json-body", "a JSON body", "POST /v1/predict (application/json)", 415,
             r"unsupported content type 'application/json' — send multipart/form-data or an image/\* body",
             req("POST", "/v1/predict", "application/json", b'{"image": "cat.png"}')),
    _request("server-empty-png", "an empty image/png body", "POST /v1/predict (image/png, 0 bytes)", 400,
             r"cannot load image body: empty upload \(0 bytes\)",
             req("POST", "/v1/predict", "image/png", b"")),
    _request("server-pdf-as-png", "a PDF sent as image/png", "POST /v1/predict (image/png, a PDF)", 400,
             r"cannot load image body: not an image \(cannot identify image format\)",
             req("POST", "/v1/predict", "image/png", PDF)),
    _request("server-truncated-png", "a PNG cut to 40 bytes", "POST /v1/predict (image/png, 40 bytes)", 400,
             r"cannot load image body: not an image \(cannot identify image format\)",
             req("POST", "/v1/predict", "image/png", PNG16[:40])),
    _request("server-bomb-header", "a PNG declaring 100000x100000 pixels", "POST /v1/predict (image/png)", 400,
             r"cannot load image body: too many pixels; refusing a possible decompression bomb",
             req("POST", "/v1/predict", "image/png", _declared_png(100000, 100000))),
    _request("server-oversize", "a 300 kB body (limit 200 kB)", "POST /v1/predict (image/png, 300 kB)", 413,
             r"request body of 300,[0-9.]+ bytes is over the limit of 200,000 bytes",
             req("POST", "/v1/predict", "image/png", PNG16 + b"\0" * 300_000)),
    _request("server-multipart-no-files", "multipart with a text field only", "POST /v1/predict (multipart, no file part)", 400,
             r"no image files in the multipart body — send them as file parts",
             req("POST", "/v1/predict", "multipart/form-data; boundary=zz", b'--zz\r\nContent-Disposition: form-data; name="note"\r\n\r\nhi\r\n--zz--\r\n')),
    _request("server-multipart-too-many", "multipart with 5 files (limit 3)", "POST /v1/predict (multipart, 5 files)", 400,
             r"5 images in one request; the limit is 3",
             req("POST", "/v1/predict", files=[("file", (f"{i}.png", PNG16, "image/png")) for i in range(5)])),
    _request("server-multipart-no-boundary", "multipart/form-data without a boundary", "POST /v1/predict (multipart/form-data)", 400,
             r"malformed multipart body \(Missing boundary", req("POST", "/v1/predict", "multipart/form-data", b"--x\r\n\r\n")),
    _request("server-multipart-text-file", "a text file part named cat.png", "POST /v1/predict (multipart, cat.png = text)", 400,
             r"cannot load image cat\.png: not an image", req("POST", "/v1/predict", files=[("file", ("cat.png", b"meow", "image/png"))])),
    _request("server-top-k-zero", "?top_k=0", "POST /v1/predict?top_k=0 (image/png)", 422,
             r"'loc': \['query', 'top_k'\], 'msg': 'Input should be greater than or equal to 1'",
             req("POST", "/v1/predict?top_k=0", "image/png", PNG16)),
    _request("server-top-k-text", "?top_k=abc", "POST /v1/predict?top_k=abc (image/png)", 422,
             r"'loc': \['query', 'top_k'\], 'msg': 'Input should be a valid integer",
             req("POST", "/v1/predict?top_k=abc", "image/png", PNG16)),
    _request("server-get-predict", "GET on the upload endpoint", "GET /v1/predict", 405, r"Method Not Allowed", req("GET", "/v1/predict")),
    _request("server-unknown-path", "a path that does not exist", "GET /v2/predict", 404, r"Not Found", req("GET", "/v2/predict")),
    _request("server-static-escape", "a static path climbing out of the folder", "GET /static/..%2f..%2fpyproject.toml", 404, r"^Not Found$",
             req("GET", "/static/..%2f..%2fpyproject.toml")),
    _request("server-explain-class", "explain for a class the model lacks", "POST /v1/explain?class_name=zebra (image/png)", 400,
             r"unknown class 'zebra' — choose one of: circle, square", req("POST", "/v1/explain?class_name=zebra", "image/png", PNG16)),
    _request("server-explain-format", "explain as a GIF", "POST /v1/explain?format=gif (image/png)", 422,
             r"'loc': \['query', 'format'\], 'msg': \"String should match pattern '\^\(png\|json\)\$'",
             req("POST", "/v1/explain?format=gif", "image/png", PNG16)),
    _request("server-explain-two-files", "explain two images at once", "POST /v1/explain (multipart, 2 files)", 400,
             r"2 images in one request; the limit is 1",
             req("POST", "/v1/explain", files=[("file", (f"{i}.png", PNG16, "image/png")) for i in range(2)])),
    _request("server-tiny-image", "a 1x1 PNG (awkward, valid)", "POST /v1/predict (image/png, 1x1)", 200,
             r'"predictions":\[\{"filename":"body","class":"(circle|square)"',
             req("POST", "/v1/predict", "image/png", _png_bytes(size=(1, 1)))),
    _request("server-cmyk-jpeg", "a CMYK JPEG (awkward, valid)", "POST /v1/predict (image/jpeg, CMYK)", 200,
             r'"predictions":\[\{"filename":"body","class":"(circle|square)"',
             req("POST", "/v1/predict", "image/jpeg", CMYK)),
    _request("server-unicode-filename", "a file part named 猫 photo.png (awkward, valid)", "POST /v1/predict (multipart)", 200,
             r'"filename":"猫 photo\.png","class":"(circle|square)"',
             req("POST", "/v1/predict", files=[("file", ("猫 photo.png", PNG16, "image/png"))])),
    Case("server-url-model", "server", "a URL as the model", "serve https://host/model.safetensors", 2,
         r"https://host/model\.safetensors: serve loads local model files only, never URLs"),
    Case("server-port-range", "server", "a port beyond 65535", "serve run --port 70000", 2, r"--port must be from 0 to 65535.*70000",
         S(run_copy())),
    Case("server-port-text", "server", "a port that is not a number", "serve run --port http", 2,
         r"argument --port: invalid int value: 'http' — see `cnnlab serve --help`", S(run_copy())),
    Case("server-max-batch-zero", "server", "--max-batch 0", "serve run --max-batch 0", 2, r"--max-batch must be a whole number of at least 1, got 0",
         S(run_copy())),
    Case("server-upload-nan", "server", "--max-upload-mb nan", "serve run --max-upload-mb nan", 2, r"--max-upload-mb must be a number of MiB above 0",
         S(run_copy())),
    Case("server-workers-zero", "server", "--workers 0", "serve run --workers 0", 2, r"--workers must be a whole number of at least 1",
         S(run_copy())),
    Case("server-missing-model", "server", "a model folder that does not exist", "serve nothere", 2, r"nothere: no such model file or run folder"),
]

ALL = CASES + SERVER_CASES


def markdown_table() -> str:
    """The probe table of RELIABILITY.md, generated from the cases (… in a command stands for TINY's options)."""
    lines = ["| id | area | input | command or request | expected |", "|---|---|---|---|---|"]
    for c in ALL:
        expected = f"HTTP {c.code}" if c.request is not None else ("killed (SIGKILL)" if c.code < 0 else f"exit {c.code}")
        if c.gist:
            expected += f": {c.gist}"
        if c.then:
            expected += f"; then `cnnlab {c.then}` exits 0" + (", weights bit-identical to an uninterrupted run" if c.identical else "")
        if c.open:
            expected = f"**open** ({c.open}); should be {expected}"
        command = c.command if c.request is not None else "cnnlab " + c.command.replace(TINY, "…").replace(RUN2, "train RUN2").replace(SHAPES, "SHAPES")
        cells = [c.id, c.area, c.what, f"`{command}`", expected]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
