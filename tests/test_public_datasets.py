"""Public datasets by name (cifar10, cifar100, mnist, fashion-mnist) against a local HTTP server serving
generated files in the real formats: CIFAR's binary release (fixed-size records in a .tar.gz) and MNIST's
gzipped IDX files. The catalogue entries are data; each test points them at the server."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.server
import io
import re
import struct
import tarfile
import threading
import time

import numpy as np
import pytest

from cnnlab import api
from cnnlab.data import public
from cnnlab.errors import DataError, DownloadError
from conftest import start_http_server

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FASHION_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


# ---------------------------------------------------------------- a local server


class _Server:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut_once: set[str] = set()  # send half the body (announcing all of it), then close; once per path
        self.delay_s = 0.0
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.url = ""
        self.stop = lambda: None

    def paths(self) -> list[str]:
        return [p for p, _ in self.requests]


def _handler(state: _Server):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            state.requests.append((self.path, dict(self.headers)))
            self.close_connection = True
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            start = 0
            m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
            if m:
                start = int(m.group(1))
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            chunk = body[start:]
            self.send_header("Content-Length", str(len(chunk)))
            self.end_headers()
            time.sleep(state.delay_s)
            if self.path in state.cut_once:
                state.cut_once.discard(self.path)
                chunk = chunk[: len(chunk) // 2]
            self.wfile.write(chunk)

    return Handler


@pytest.fixture
def server():
    state = _Server()
    state.url, state.stop = start_http_server(_handler(state))
    try:
        yield state
    finally:
        state.stop()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "datasets"


def serve(server: _Server, monkeypatch, name: str, files: dict[str, bytes], sha256: dict[str, str] | None = None) -> None:
    """Point catalogue entry `name` at the server, which serves `files` (by their real names); `sha256` overrides."""
    entry = public.CATALOGUE[name]
    remote = []
    for f in entry.files:
        body = files[f.name]
        server.files[f"/{name}/{f.name}"] = body
        digest = (sha256 or {}).get(f.name, hashlib.sha256(body).hexdigest())
        remote.append(public.RemoteFile(f.name, digest, len(body), (f"{server.url}/{name}/{f.name}",)))
    monkeypatch.setitem(public.CATALOGUE, name, dataclasses.replace(entry, files=tuple(remote)))


# ---------------------------------------------------------------- generated files in the real formats


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for folder in sorted({n.split("/")[0] for n in members}):  # the real archives list their folder first
            info = tarfile.TarInfo(folder)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _cifar_records(x_hwc: np.ndarray, labels: list[np.ndarray]) -> bytes:
    """The binary release's records: label byte(s), then the red, green and blue 32x32 planes."""
    planes = x_hwc.transpose(0, 3, 1, 2).reshape(len(x_hwc), -1)
    return np.concatenate([*(lab.astype(np.uint8)[:, None] for lab in labels), planes], axis=1).tobytes()


def make_cifar10(rng, per_batch: int = 3, n_test: int = 4, names: list[str] = CIFAR10_NAMES):
    """(tar.gz bytes, {split: (x, y)}) shaped like cifar-10-binary.tar.gz, with a few records per batch."""
    n = 5 * per_batch + n_test
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    x[0] = 0
    x[0, :, :, 0] = 255  # the first image is pure red: catches a plane/channel mix-up by eye too
    y = rng.integers(0, 10, n).astype(np.int64)
    members = {"cifar-10-batches-bin/readme.html": b"<html></html>"}
    for i in range(5):
        s = slice(i * per_batch, (i + 1) * per_batch)
        members[f"cifar-10-batches-bin/data_batch_{i + 1}.bin"] = _cifar_records(x[s], [y[s]])
    members["cifar-10-batches-bin/test_batch.bin"] = _cifar_records(x[5 * per_batch:], [y[5 * per_batch:]])
    members["cifar-10-batches-bin/batches.meta.txt"] = ("\n".join(names) + "\n\n").encode()
    split = 5 * per_batch
    return _tar_gz(members), {"train": (x[:split], y[:split]), "test": (x[split:], y[split:])}


def idx_gz(a: np.ndarray, magic: int | None = None, dims: tuple[int, ...] | None = None) -> bytes:
    """A gzipped IDX file: big-endian magic (2051 images, 2049 labels), the dimensions, then the bytes."""
    magic = magic if magic is not None else (public.IDX_IMAGES if a.ndim == 3 else public.IDX_LABELS)
    dims = dims if dims is not None else a.shape
    return gzip.compress(struct.pack(f">I{len(dims)}I", magic, *dims) + a.astype(np.uint8).tobytes())


def make_mnist(rng, n_train: int = 12, n_test: int = 5):
    x = rng.integers(0, 256, (n_train + n_test, 28, 28), dtype=np.uint8)
    y = (np.arange(n_train + n_test) % 10).astype(np.int64)
    files = {
        "train-images-idx3-ubyte.gz": idx_gz(x[:n_train]), "train-labels-idx1-ubyte.gz": idx_gz(y[:n_train]),
        "t10k-images-idx3-ubyte.gz": idx_gz(x[n_train:]), "t10k-labels-idx1-ubyte.gz": idx_gz(y[n_train:]),
    }
    return files, {"train": (x[:n_train, ..., None], y[:n_train]), "test": (x[n_train:, ..., None], y[n_train:])}


# ---------------------------------------------------------------- loading


def test_cifar10_downloads_once_decodes_the_records_and_keeps_the_official_test_split(server, cache, monkeypatch):
    archive, want = make_cifar10(np.random.default_rng(0))
    serve(server, monkeypatch, "cifar10", {"cifar-10-binary.tar.gz": archive})

    ds = api.load_dataset("cifar10", val_split=0)
    assert ds.spec == "cifar10" and ds.class_names == CIFAR10_NAMES
    assert set(ds.splits) == {"train", "test"}
    for split, (x, y) in want.items():
        assert ds.splits[split].x.dtype == np.uint8 and ds.splits[split].x.shape == x.shape
        np.testing.assert_array_equal(ds.splits[split].x, x)
        np.testing.assert_array_equal(ds.splits[split].y, y)
    assert (ds.train.x[0, :, :, 0] == 255).all() and (ds.train.x[0, :, :, 1:] == 0).all()  # red stays red
    folder = cache / "cifar10"
    assert sorted(p.name for p in folder.iterdir()) == ["cifar-10-binary.tar.gz"]  # no .part, no .lock
    assert server.paths() == ["/cifar10/cifar-10-binary.tar.gz"]

    again = api.load_dataset("cifar10")  # from the cache: no request; validation split off train as usual
    assert len(server.requests) == 1
    assert set(again.splits) == {"train", "val", "test"}
    assert len(again.train) + len(again.splits["val"]) == len(want["train"][1])
    np.testing.assert_array_equal(again.splits["test"].x, want["test"][0])


def test_cifar100_reads_the_fine_label_of_each_two_label_record(server, cache, monkeypatch):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (9, 32, 32, 3), dtype=np.uint8)
    fine = np.array([99, 0, 42, 7, 13, 56, 88, 3, 61])
    coarse = fine // 5  # 20 superclasses, unlike the fine labels
    fine_names = [f"fine_{i}" for i in range(100)]
    archive = _tar_gz({
        "cifar-100-binary/train.bin": _cifar_records(x[:6], [coarse[:6], fine[:6]]),
        "cifar-100-binary/test.bin": _cifar_records(x[6:], [coarse[6:], fine[6:]]),
        "cifar-100-binary/fine_label_names.txt": "\n".join(fine_names).encode() + b"\n",
        "cifar-100-binary/coarse_label_names.txt": "\n".join(f"coarse_{i}" for i in range(20)).encode(),
    })
    serve(server, monkeypatch, "cifar100", {"cifar-100-binary.tar.gz": archive})
    ds = api.load_dataset("CIFAR-100", val_split=0)
    assert ds.class_names == fine_names
    np.testing.assert_array_equal(ds.train.y, fine[:6])
    np.testing.assert_array_equal(ds.splits["test"].y, fine[6:])
    np.testing.assert_array_equal(ds.train.x, x[:6])


def test_mnist_decodes_the_idx_files_as_grey_images_and_converts_like_other_sources(server, cache, monkeypatch):
    files, want = make_mnist(np.random.default_rng(2))
    serve(server, monkeypatch, "mnist", files)
    ds = api.load_dataset("mnist", val_split=0)
    assert ds.class_names == [str(i) for i in range(10)] and ds.image_shape == (28, 28, 1)
    for split, (x, y) in want.items():
        np.testing.assert_array_equal(ds.splits[split].x, x)
        np.testing.assert_array_equal(ds.splits[split].y, y)
    assert ds.train.x.flags.writeable
    assert len(server.requests) == 4

    rgb = api.load_dataset("mnist", channels=3, image_size=32, val_split=0)  # the cached files, converted
    assert rgb.image_shape == (32, 32, 3) and len(server.requests) == 4
    assert (rgb.train.x[..., 0] == rgb.train.x[..., 2]).all()


@pytest.mark.parametrize("spec", ["fashion-mnist", "fashion_mnist", "builtin:fashion-mnist"])
def test_fashion_mnist_by_any_usual_spelling(server, cache, monkeypatch, spec):
    files, want = make_mnist(np.random.default_rng(3))
    serve(server, monkeypatch, "fashion-mnist", files)
    ds = api.load_dataset(spec, val_split=0)
    assert ds.class_names == FASHION_NAMES and ds.spec == spec
    np.testing.assert_array_equal(ds.train.y, want["train"][1])
    assert (cache / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").is_file()


def test_cli_checks_a_public_dataset_by_name(server, cache, monkeypatch, cli):
    files, _ = make_mnist(np.random.default_rng(4))
    serve(server, monkeypatch, "mnist", files)
    r = cli("data", "check", "mnist")
    assert r.code == 0, r
    assert "public-mnist" in r.out and "17 images" in r.out
    assert "downloading MNIST train-images-idx3-ubyte.gz" in r.err  # a download says what it fetches, and where


# ---------------------------------------------------------------- transfers


def test_an_interrupted_transfer_resumes_where_it_stopped(server, cache, monkeypatch):
    archive, want = make_cifar10(np.random.default_rng(5), per_batch=40)
    serve(server, monkeypatch, "cifar10", {"cifar-10-binary.tar.gz": archive})
    server.cut_once.add("/cifar10/cifar-10-binary.tar.gz")
    part = cache / "cifar10" / "cifar-10-binary.tar.gz.part"

    with pytest.raises(DownloadError, match="partial file kept") as e:
        api.load_dataset("cifar10")
    assert "\n" not in str(e.value) and e.value.exit_code == 2
    half = len(archive) // 2
    assert part.read_bytes() == archive[:half]
    assert not (cache / "cifar10" / "cifar-10-binary.tar.gz").exists()

    ds = api.load_dataset("cifar10", val_split=0)
    np.testing.assert_array_equal(ds.train.x, want["train"][0])
    first, second = (h for _, h in server.requests)
    assert "Range" not in first and second["Range"] == f"bytes={half}-"
    assert not part.exists()


def test_a_wrong_checksum_is_an_error_and_leaves_nothing_in_the_cache(server, cache, monkeypatch):
    files, _ = make_mnist(np.random.default_rng(6))
    wrong = hashlib.sha256(b"another file").hexdigest()
    serve(server, monkeypatch, "mnist", files, sha256={"train-images-idx3-ubyte.gz": wrong})
    with pytest.raises(DownloadError, match="checksum mismatch") as e:
        api.load_dataset("mnist")
    msg = str(e.value)
    assert "\n" not in msg and wrong[:12] in msg and f"{server.url}/mnist/train-images-idx3-ubyte.gz" in msg
    assert list((cache / "mnist").iterdir()) == []


def test_a_mirror_serving_another_page_is_skipped_for_the_next(server, cache, monkeypatch):
    files, want = make_mnist(np.random.default_rng(7))
    serve(server, monkeypatch, "mnist", files)
    # plain-http mirrors can be answered by a captive portal: 200 and an HTML page instead of the file
    entry = public.CATALOGUE["mnist"]
    for f in entry.files:
        server.files[f"/portal/{f.name}"] = b"<html>please log in</html>"
    monkeypatch.setitem(public.CATALOGUE, "mnist", dataclasses.replace(entry, files=tuple(
        dataclasses.replace(f, urls=(f"{server.url}/portal/{f.name}", *f.urls)) for f in entry.files)))
    ds = api.load_dataset("mnist", val_split=0)
    np.testing.assert_array_equal(ds.train.x, want["train"][0])
    assert sorted(p.name for p in (cache / "mnist").iterdir()) == sorted(files)


def test_processes_loading_at_once_download_the_file_once(server, cache, monkeypatch):
    archive, _ = make_cifar10(np.random.default_rng(8))
    serve(server, monkeypatch, "cifar10", {"cifar-10-binary.tar.gz": archive})
    server.delay_s = 0.3  # both loaders are waiting while the first transfer runs
    results, errors = [], []

    def load():
        try:
            results.append(public.fetch(public.CATALOGUE["cifar10"])["cifar-10-binary.tar.gz"].read_bytes())
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == [] and results == [archive, archive]
    assert len(server.requests) == 1
    assert sorted(p.name for p in (cache / "cifar10").iterdir()) == ["cifar-10-binary.tar.gz"]


def test_offline_the_error_names_the_url_and_the_file_to_place_by_hand(server, cache, monkeypatch, cli):
    files, want = make_mnist(np.random.default_rng(9))
    serve(server, monkeypatch, "mnist", files)
    server.stop()
    url = f"{server.url}/mnist/train-images-idx3-ubyte.gz"
    dest = cache / "mnist" / "train-images-idx3-ubyte.gz"
    with pytest.raises(DownloadError) as e:
        api.load_dataset("mnist")
    msg = str(e.value)
    assert "\n" not in msg and e.value.exit_code == 2
    assert f"{url} (no network: connection refused)" in msg
    assert f"place the file at {dest} by hand" in msg
    assert "also needs train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz" in msg

    r = cli("data", "check", "mnist")
    assert r.code == 2 and "Traceback" not in r.err
    lines = [ln for ln in r.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and url in lines[0] and str(dest) in lines[0]

    # the files placed by hand are checked and used without any network
    for name, body in files.items():
        (cache / "mnist" / name).write_bytes(body)
    ds = api.load_dataset("mnist", val_split=0)
    np.testing.assert_array_equal(ds.splits["test"].x, want["test"][0])


# ---------------------------------------------------------------- damaged files (that match their checksums)


@pytest.mark.parametrize("damage, needle", [
    (lambda f: f.update({"train-images-idx3-ubyte.gz": idx_gz(np.zeros((12, 28, 28)), magic=2049, dims=(12, 28, 28))}),
     "IDX magic number is 2049, expected 2051"),
    (lambda f: f.update({"train-labels-idx1-ubyte.gz": idx_gz(np.zeros((12, 28, 28)), magic=2051)}),
     "IDX magic number is 2051, expected 2049"),
    (lambda f: f.update({"train-images-idx3-ubyte.gz": idx_gz(np.zeros((11, 28, 28)), dims=(12, 28, 28))}),
     "declares 12 x 28 x 28 images"),
    (lambda f: f.update({"train-labels-idx1-ubyte.gz": idx_gz(np.zeros(11))}), "holds 12 images but train-labels-idx1-ubyte.gz holds 11"),
    (lambda f: f.update({"t10k-labels-idx1-ubyte.gz": idx_gz(np.array([1, 2, 10, 3, 4]))}), "label 10 (item 2)"),
    (lambda f: f.update({"t10k-images-idx3-ubyte.gz": b"not gzip at all"}), "not a readable .gz file"),
    (lambda f: f.update({"t10k-images-idx3-ubyte.gz": gzip.compress(b"\x00\x00")}), "too few for an IDX images header"),
])
def test_a_damaged_idx_file_is_a_data_error(server, cache, monkeypatch, damage, needle):
    files, _ = make_mnist(np.random.default_rng(10))
    damage(files)
    serve(server, monkeypatch, "mnist", files)  # the catalogue's checksums are those of the damaged files
    with pytest.raises(DataError) as e:
        api.load_dataset("mnist")
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert str(cache / "mnist") in str(e.value)


def _cifar_members(rng) -> dict[str, bytes]:
    x = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    members = {f"cifar-10-batches-bin/data_batch_{i}.bin": _cifar_records(x, [np.array([1, 2])]) for i in range(1, 6)}
    members["cifar-10-batches-bin/test_batch.bin"] = _cifar_records(x, [np.array([3, 4])])
    members["cifar-10-batches-bin/batches.meta.txt"] = "\n".join(CIFAR10_NAMES).encode()
    return members


@pytest.mark.parametrize("damage, needle", [
    (lambda m: m.pop("cifar-10-batches-bin/data_batch_3.bin"), "has no cifar-10-batches-bin/data_batch_3.bin"),
    (lambda m: m.update({"cifar-10-batches-bin/test_batch.bin": m["cifar-10-batches-bin/test_batch.bin"][:-1]}),
     "not whole 3073-byte records"),
    (lambda m: m.update({"cifar-10-batches-bin/batches.meta.txt": b"cat\ndog\n"}), "names 2 classes, expected 10"),
    (lambda m: m.update({"cifar-10-batches-bin/test_batch.bin": _cifar_records(np.zeros((1, 32, 32, 3), np.uint8), [np.array([10])])}),
     "test record 0 has label 10"),
    # a python-pickle release is not read (never unpickled): its members are not the binary release's
    (lambda m: [m.clear(), m.update({"cifar-10-batches-py/data_batch_1": b"\x80\x04."})], "has no cifar-10-batches-bin/data_batch_1.bin"),
])
def test_a_damaged_cifar_archive_is_a_data_error(server, cache, monkeypatch, damage, needle):
    members = _cifar_members(np.random.default_rng(11))
    damage(members)
    serve(server, monkeypatch, "cifar10", {"cifar-10-binary.tar.gz": _tar_gz(members)})
    with pytest.raises(DataError) as e:
        api.load_dataset("cifar10")
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_a_file_that_is_no_tar_gz_is_a_data_error(server, cache, monkeypatch):
    serve(server, monkeypatch, "cifar10", {"cifar-10-binary.tar.gz": gzip.compress(b"x" * 1000)})
    with pytest.raises(DataError, match=r"not a readable \.tar\.gz"):
        api.load_dataset("cifar10")


# ---------------------------------------------------------------- names and options


def test_a_local_path_of_the_same_name_wins_over_the_public_dataset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert public.match("mnist") == "mnist" and public.match("Fashion_MNIST") == "fashion-mnist"
    (tmp_path / "mnist").mkdir()
    assert public.match("mnist") is None  # the folder is loaded as a folder
    assert public.match("builtin:mnist") == "mnist"  # the prefix always means the public dataset
    assert public.match("builtin:shapes") is None and public.match("cifar") is None


@pytest.mark.parametrize("options, needle", [
    ({"classes": ["a", "b"]}, "--classes does not apply"),
    ({"stream": True}, "drop --stream"),
    ({"labels": "labels.csv"}, "--labels does not apply"),
])
def test_options_that_do_not_apply_are_errors(server, cache, monkeypatch, options, needle):
    files, _ = make_mnist(np.random.default_rng(12))
    serve(server, monkeypatch, "mnist", files)
    with pytest.raises(DataError, match=re.escape(needle)):
        api.load_dataset("mnist", **options)


def test_the_catalogue_is_complete_and_well_formed():
    assert set(public.CATALOGUE) == {"cifar10", "cifar100", "mnist", "fashion-mnist"}
    for entry in public.CATALOGUE.values():
        assert entry.layout in ("cifar", "idx")
        names = {f.name for f in entry.files}
        for f in entry.files:
            assert re.fullmatch(r"[0-9a-f]{64}", f.sha256) and f.size_bytes > 0 and "/" not in f.name
            assert f.urls and all(u.startswith(("https://", "http://")) and u.endswith("/" + f.name) for u in f.urls)
        if entry.layout == "idx":
            assert {n for _, pair in entry.splits for n in pair} == names and len(entry.class_names) == entry.num_classes
        assert [s for s, _ in entry.splits] == ["train", "test"]
