"""Bad image zoo: `cnnlab data check` names each bad file with its reason; training skips and records
them, and refuses only above --max-bad-fraction. Everything is generated here (tiny files)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_image_folder

BAD = {  # file name -> words its reason must contain
    "truncated.jpg": "truncated",
    "empty.jpg": "empty",
    "notes.jpg": "not an image",
    "bomb.png": "too many pixels",
    "loop.jpg": "symbolic links",
    "locked.png": "permission denied",
}
GOOD = ("cmyk.jpg", "deep16.png", "palette_alpha.png", "grey.png", "rotated.jpg", "animated.gif")
IGNORED = (".DS_Store", "Thumbs.db", "readme.txt")


def _jpeg_bytes(size=(40, 40), mode="RGB", **kw) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 128).save(buf, "JPEG", **kw)
    return buf.getvalue()


def make_zoo(folder: Path) -> None:
    """Write every kind of file the issue lists into one class folder."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    buf = io.BytesIO()
    noisy.save(buf, "JPEG", quality=95)
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("these are my notes, not a photo\n")
    Image.new("1", (9000, 8000)).save(folder / "bomb.png")  # 72 M pixels > the 64 M cap, a few kB on disk
    os.symlink("loop.jpg", folder / "loop.jpg")  # points at itself
    Image.new("RGB", (40, 40), (10, 200, 30)).save(folder / "locked.png")
    # readable oddities: all must load
    (folder / "cmyk.jpg").write_bytes(_jpeg_bytes(mode="CMYK"))
    Image.fromarray((np.arange(40 * 40, dtype=np.uint16).reshape(40, 40) * 40)).save(folder / "deep16.png")
    pal = Image.new("P", (40, 40), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.info["transparency"] = 0
    pal.save(folder / "palette_alpha.png", transparency=0)
    Image.new("L", (40, 40), 90).save(folder / "grey.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    Image.new("RGB", (48, 32), (200, 10, 10)).save(folder / "rotated.jpg", exif=exif)
    frames = [Image.new("RGB", (40, 40), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    for name in IGNORED:
        (folder / name).write_bytes(b"\x00\x01 not an image")


@pytest.fixture
def zoo(tmp_path, monkeypatch) -> Path:
    root = write_image_folder(tmp_path / "zoo", n_per_class=20, size=32)
    make_zoo(root / "circle")
    locked = root / "circle" / "locked.png"
    if os.geteuid() != 0:
        locked.chmod(0)
    else:
        # root reads any file regardless of mode bits, so chmod 000 blocks nothing: simulate what an
        # ordinary user gets for a mode-000 file — stat works, opening it raises PermissionError.
        import builtins

        real_open = builtins.open

        def guarded_open(file, *a, **kw):
            if isinstance(file, (str, os.PathLike)) and os.fspath(file).endswith("locked.png"):
                raise PermissionError(13, "Permission denied", os.fspath(file))
            return real_open(file, *a, **kw)

        monkeypatch.setattr(builtins, "open", guarded_open)
    return root


def test_data_check_lists_every_bad_file_with_its_reason(cli, zoo):
    r = cli("data", "check", zoo, "--show-ignored")
    assert r.code == 2, r
    assert "Traceback" not in r.err and r.err.count("\n") == 1 and "6 of" in r.err
    bad_lines = [ln for ln in r.out.splitlines() if ln.startswith("bad ")]
    assert len(bad_lines) == len(BAD), r.out
    for name, words in BAD.items():
        line = next((ln for ln in bad_lines if f"{name}:" in ln), None)
        assert line is not None and words in line.lower(), (name, r.out)
    for name in GOOD:
        assert not any(f"{name}:" in ln for ln in bad_lines), (name, r.out)
    for name in IGNORED:
        assert any(ln.startswith("ignored") and f"{name}:" in ln for ln in r.out.splitlines()), (name, r.out)


def test_data_check_json_and_clean_folder(cli, zoo, tmp_path):
    r = cli("data", "check", zoo, "--json")
    assert r.code == 2
    rep = json.loads(r.out)
    assert {Path(b["path"]).name for b in rep["bad"]} == set(BAD)
    assert rep["images"] == 40 + len(BAD) + len(GOOD) and rep["splits"]["train"] == 40 + len(GOOD)
    assert {Path(i["path"]).name for i in rep["ignored"]} == set(IGNORED)
    clean = write_image_folder(tmp_path / "clean", n_per_class=3, size=24)
    r = cli("data", "check", clean)
    assert r.code == 0 and r.err == "" and "0 bad" in r.out, r


def test_data_check_other_formats_use_the_loader_errors(cli, seed_dir, tmp_path):
    r = cli("data", "check", seed_dir)
    assert r.code == 0 and "seed-csv" in r.out and "0 bad" in r.out, r
    lines = (seed_dir / "input.csv").read_text().splitlines()
    lines[4] = "x" + lines[4]
    (seed_dir / "input.csv").write_text("\n".join(lines) + "\n")
    r = cli("data", "check", seed_dir)
    assert r.code == 2 and "input.csv" in r.err and "line 5" in r.err and "Traceback" not in r.err, r
    r = cli("data", "check", tmp_path / "nothing")
    assert r.code == 2 and "no such file" in r.err


def test_readable_oddities_decode_as_expected(zoo):
    from cnnlab.data.images import load_image

    rot = load_image(zoo / "circle" / "rotated.jpg", (48, 48))
    assert rot.shape == (48, 48, 3)
    from cnnlab.data.images import open_image

    assert open_image(zoo / "circle" / "rotated.jpg").size == (32, 48)  # EXIF orientation applied
    gif = load_image(zoo / "circle" / "animated.gif", (40, 40))
    assert tuple(gif[20, 20]) == (255, 0, 0)  # first frame
    assert load_image(zoo / "circle" / "deep16.png", (40, 40)).dtype == np.uint8


def test_training_skips_records_and_stops_above_the_bad_fraction(cli, zoo, tmp_path):
    # 6 bad of 52 image files = 11.5 %: refused at the default 1 %, before any run folder exists
    r = cli("train", "--model", "seed_cnn", "--data", zoo, "--image-size", "24", "--epochs", "1", "--out", tmp_path / "r1", "--quiet")
    assert r.code == 2 and "6 of 52" in r.err and "--max-bad-fraction" in r.err and "Traceback" not in r.err, r
    assert not (tmp_path / "r1").exists()
    r = cli("train", "--model", "seed_cnn", "--data", zoo, "--image-size", "24", "--epochs", "1", "--max-bad-fraction", "0.11", "--out", tmp_path / "r1", "--quiet")
    assert r.code == 2 and not (tmp_path / "r1").exists(), r
    # allowed: trains on the 46 good images and lists the 6 bad ones with reasons in the run folder
    r = cli("train", "--model", "seed_cnn", "--data", zoo, "--image-size", "24", "--epochs", "1", "--batch-size", "16",
            "--max-bad-fraction", "0.2", "--out", tmp_path / "r2", "--quiet")
    assert r.code == 0, r
    recorded = dict(ln.split("\t") for ln in (tmp_path / "r2" / "bad_files.txt").read_text().splitlines())
    assert {Path(p).name for p in recorded} == set(BAD)
    assert (tmp_path / "r2" / "model.safetensors").is_file()


def test_training_says_which_files_it_left_out_as_not_images(cli, tmp_path):
    root = write_image_folder(tmp_path / "pets", n_per_class=6, size=24)
    (root / "circle" / "labels.csv").write_text("a,b\n")
    (root / "square" / "notes.txt").write_text("notes\n")
    (root / "square" / "scan.psd").write_bytes(b"8BPS")
    (root / "square" / "Thumbs.db").write_bytes(b"\x00")  # an operating-system file: not worth a word
    (root / "circle" / ".DS_Store").write_bytes(b"\x00")
    r = cli("train", "--model", "seed_cnn", "--data", root, "--epochs", "1", "--out", tmp_path / "run")
    assert r.code == 0, r
    note = next(ln for ln in r.out.splitlines() if ln.startswith("left out"))
    assert note.startswith("left out 3 file(s) that are not images (") and f"cnnlab data check {root} --show-ignored" in note
    assert all(e in note for e in ("1 .csv", "1 .txt", "1 .psd")), note
    assert "left out" not in cli("train", "--model", "seed_cnn", "--data", root, "--epochs", "1", "--out", tmp_path / "q", "--quiet").out


def test_hidden_folders_inside_class_folders_are_not_read(cli, tmp_path):
    """Thumbnail caches and notebook checkpoints (.thumbnails/, .ipynb_checkpoints/) are not training images."""
    root = write_image_folder(tmp_path / "pets", n_per_class=6, size=24)
    for hidden in (root / "circle" / ".thumbnails", root / "square" / "sub" / ".ipynb_checkpoints"):
        hidden.mkdir(parents=True)
        Image.new("RGB", (24, 24), "red").save(hidden / "thumb.png")
        (hidden / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")  # would be a bad file if read
    Image.new("RGB", (24, 24), "blue").save(root / "square" / "sub" / "kept.png")  # a plain subfolder is read
    r = cli("train", "--model", "seed_cnn", "--data", root, "--epochs", "1", "--out", tmp_path / "run")
    assert r.code == 0, r
    info = json.loads((tmp_path / "run" / "run.json").read_text())["dataset"]
    assert info["splits"]["train"] + info["splits"]["val"] == 13 and info["bad_files"] == 0
    rep = json.loads(cli("data", "check", root, "--json").out)
    assert rep["images"] == 13 and rep["bad"] == []
    r = cli("predict", tmp_path / "run", root / "square", "--json")
    assert r.code == 0, r
    assert sorted(Path(item["path"]).name for item in json.loads(r.out))[-1] == "kept.png" and len(json.loads(r.out)) == 7
